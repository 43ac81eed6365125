"""OpenSSF model signatures (sigstore/model-transparency, ``model_signing``), checked
against the per-file sha256 the lock already holds, so no file is read again.

Why without ``model_signing``: its verifier walks and re-hashes the whole model tree
(seconds per GiB) and pulls in sigstore, pydantic, protobuf and pyOpenSSL. The lock
already pins every file's sha256, which is exactly what a ``files``-serialization
signature lists, so verifying reduces to one ECDSA check and a dict comparison.

The format, as ``model_signing`` 1.1.1 writes and accepts it (key and certificate
modes; keyless Sigstore signatures need a transparency log and are not handled here):

- the signature file is a Sigstore bundle, JSON, ``mediaType``
  ``application/vnd.dev.sigstore.bundle.v0.3+json``;
- ``verificationMaterial`` is ``publicKey.hint`` (sha256 hex of the public key's PEM
  SubjectPublicKeyInfo; key mode) or ``x509CertificateChain.certificates`` (base64 DER,
  the signing certificate first; certificate mode);
- ``dsseEnvelope{payloadType: application/vnd.in-toto+json, payload, signatures[{sig}]}``;
  ``sig`` is a DER ECDSA signature over the DSSE PAE of the payload, hashed with the
  curve's own hash (SHA-256 for P-256, SHA-384 for P-384, SHA-512 for P-521);
- the payload is an in-toto Statement v1 with one subject (the model directory's
  name and ``ROOT``), ``predicateType https://model_signing/signature/v1.0``, and
  ``predicate{serialization{method: files, hash_type: sha256, allow_symlinks,
  ignore_paths?}, resources[{name, algorithm: sha256, digest}]}``; ``ROOT`` is the
  sha256 of the resources' raw 32-byte digests concatenated in the listed order.

Acceptance follows ``model_signing``'s verifier (``_signing/sign_ec_key.py``,
``sign_certificate.py``, ``signing.py``, ``verifying.py``), so that what this module
accepts, ``model_signing verify`` accepts too; where it is stricter, it says so:

- only ``signatures[0]`` counts; if it does not verify over the PAE, the pre-1.0
  ``pae_compat`` encoding is tried (with SHA-256 in certificate mode, as theirs);
- a bundle without a key hint is accepted in key mode (theirs warns); a hint that is
  not the given key's is refused;
- the v0.2 predicate ``https://model_signing/Digests/v0.1`` (files as subjects, no
  ``ROOT``) is accepted, as theirs does;
- links are theirs with ``--allow_symlinks``: listed under the link's name with the
  digest of the file it leads to. Stricter: a signature without ``allow_symlinks``
  covers no link (their verifier with the flag would hash it anyway), and a link to a
  directory (which theirs skips), out of the model or to nothing is refused;
- the signature's recorded ``ignore_paths`` (path prefixes relative to the model root)
  and the root git paths (``.git/``, ``.github/``, ``.gitattributes``, ``.gitignore``,
  which their CLI ignores by default) exempt unsigned regular files and directories
  only, never a link: a link is what a loader follows, wherever it sits;
- stricter: an empty directory is refused unless something ignores it (a directory of
  that name can change what a loader does, and no signature can list it);
- certificate mode: the chain in the bundle (untrusted, after the signing certificate)
  and the given certificates must lead to a *self-signed* certificate among the given
  ones (OpenSSL without partial chains: an intermediate alone is not a trust anchor);
  every issuer must be a CA (basicConstraints), may restrict ``keyCertSign`` and path
  length; unknown critical extensions are refused; the signing certificate must allow
  ``digitalSignature`` or have the ``codeSigning`` extended key usage;
- validity: theirs checks every certificate at the signing certificate's notBefore
  (no timestamps exist), so it accepts a certificate that has since expired. This
  module checks that too, and *also* at ``now``: an expired certificate is refused
  (deliberately: Sigstore may trust signing-time validity because its log timestamps
  the signature; a certificate signature has no such proof of when it was made);
- stricter: only P-256/P-384/P-521 keys, only ``files`` serialization with sha256
  (``shards`` cover byte ranges the lock does not hash), a resource listed twice, a
  signature that covers no file, digests that are not 64 hex digits.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from .errors import ConfigError, ReconcileError

__all__ = [
    "MAX_BUNDLE_BYTES",
    "SignatureError",
    "Signer",
    "glob_match",
    "ignored",
    "key_hint",
    "sign",
    "sign_entries",
    "verify",
]

#: A signature is a few KiB per thousand files; anything near this is not a signature.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
#: Bundle certificate chains longer than this are refused (bounds path building).
_MAX_CHAIN = 16
_MAX_DEPTH = 8
_MAX_VISITS = 64

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PREDICATE_TYPE_V01 = "https://model_signing/Digests/v0.1"
#: What model_signing ignores at the model root unless told ``--no-ignore-git-paths``.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

_CURVE_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Extensions OpenSSL understands (so may be critical); any other critical one fails
# its chain check with "unhandled critical extension", and so here.
_KNOWN_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.INHIBIT_ANY_POLICY,
}
_LIST_AT_MOST = 10
#: Links followed one after another before a chain counts as a loop (as Linux's ELOOP).
_MAX_HOPS = 40


class SignatureError(ReconcileError):
    """The signature is malformed, not by the expected signer, or not over these files.

    The message names what differs (files, key hint, certificate and date), since a
    user has to decide whether the model or the signature is wrong.
    """


@dataclass(frozen=True)
class Signer:
    """Who signed: what the lock records so a later change of signer is noticed.

    ``identity`` is the key hint (sha256 hex of the public key's PEM, the same string
    model_signing writes into the bundle) for ``kind="key"``, or the signing
    certificate's subject as an RFC 4514 string for ``kind="certificate"``.
    """

    kind: Literal["key", "certificate"]
    identity: str


# --- public API ----------------------------------------------------------------------------


def key_hint(public_key_pem: bytes) -> str:
    """The hint model_signing records for a public key: sha256 hex of its PEM
    SubjectPublicKeyInfo *as re-encoded* (so a key file with other line endings or
    an EC key in another PEM flavour still gives the hint the signer wrote)."""
    return _hint(_load_public_key(public_key_pem))


def verify(
    bundle: bytes,
    files: Mapping[str, str],
    *,
    links: Mapping[str, str] | None = None,
    dirs: Iterable[str] = (),
    public_key_pem: bytes | None = None,
    certificate_chain_pems: Sequence[bytes] | None = None,
    ignore: Sequence[str] = (),
    now: datetime | None = None,
) -> Signer:
    """Check a model_signing signature against the model's per-file sha256.

    ``files`` maps every regular file of the model (path relative to the model root,
    ``/`` separated; the signature file itself left out by the caller) to its sha256
    hex; ``links`` maps every symbolic link to its target as recorded, ``dirs`` lists
    the directory entries: every entry must be accounted for (see :func:`_compare`),
    since a loader reads through a link or into a directory as readily as a file.
    ``ignore`` holds globs dropped from both the model and the signature (see
    :func:`ignored`). Give exactly one of ``public_key_pem`` (key mode) or
    ``certificate_chain_pems`` (certificate mode: trusted certificates, PEM, one or
    more per item; the trust anchor must be a self-signed one among them). ``now``
    (default: the current time; naive means UTC) is when certificates must be valid.

    Returns the :class:`Signer`; raises :class:`SignatureError` naming what is wrong.
    """
    if (public_key_pem is None) == (certificate_chain_pems is None):
        raise ValueError("give exactly one of public_key_pem or certificate_chain_pems")
    tree = _tree(files, links, dirs)
    b = _parse_bundle(bundle)
    vm, env = b["verificationMaterial"], b["dsseEnvelope"]
    payload, sig = env["payload"], env["sig"]

    if public_key_pem is not None:
        key = _load_public_key(public_key_pem)
        hint = _hint(key)
        if "publicKey" not in vm:
            raise SignatureError(
                f"the signature was made with {_material_kind(vm)}, not a key: verify it "
                "with the certificate chain it was issued under")
        got = vm["publicKey"]
        if got and got != hint:
            raise SignatureError(f"signed by another key (hint {got}); the given public "
                                 f"key's hint is {hint}")
        if not _dsse_ok(key, payload, sig, compat_hash=_curve_hash(key)):
            raise SignatureError(
                f"the signature does not verify with the given key (hint {hint}): it was "
                "made by another key or the bundle was altered")
        signer = Signer("key", hint)
    else:
        anchors = _load_trusted(certificate_chain_pems or ())
        if "x509CertificateChain" not in vm:
            raise SignatureError(
                f"the signature was made with {_material_kind(vm)}, not a certificate "
                "chain: verify it with the public key")
        chain = vm["x509CertificateChain"]
        try:
            leaf = _check_certificates(chain[0], chain[1:], anchors, _utc(now))
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType) as e:  # lazily parsed parts of a certificate
            raise SignatureError(f"malformed certificate in the signature: {e}") from None
        key = leaf.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # _check_certificates made sure
        subject = leaf.subject.rfc4514_string()
        if not _dsse_ok(key, payload, sig, compat_hash=hashes.SHA256()):
            raise SignatureError(
                f"the signature does not verify with the key of certificate '{subject}': "
                "the bundle was altered")
        signer = Signer("certificate", subject)

    if env["payloadType"] != PAYLOAD_TYPE:
        raise SignatureError(f"DSSE payloadType is {env['payloadType']!r}, "
                             f"expected {PAYLOAD_TYPE!r}")
    signed, ignore_paths, allow_symlinks = _parse_statement(payload)
    _compare(signed, tree, ignore_paths, allow_symlinks, ignore)
    return signer


def sign(
    files: Mapping[str, str],
    *,
    links: Mapping[str, str] | None = None,
    dirs: Iterable[str] = (),
    private_key_pem: bytes,
    password: bytes | None = None,
    model_name: str,
    ignore_git_paths: bool = True,
) -> bytes:
    """A key-mode signature over ``files`` (relative path -> sha256 hex), ``links``
    (path -> target) and ``dirs`` that ``model_signing verify key`` accepts for the
    model directory holding them, and :func:`verify` accepts for the same entries.

    The layout is theirs (compact bundle JSON, a 2-space-indented statement, resources
    sorted by path components, ``keyid: ""``). ``model_name`` is the subject name
    (theirs is the model directory's name; informative only). With
    ``ignore_git_paths`` (their CLI's default) root-level ``.git/``, ``.github/``,
    ``.gitattributes`` and ``.gitignore`` are left out and recorded as ignored, since
    their verifier drops those from the model by default and would otherwise report
    them missing. Links make it their ``--allow_symlinks`` form: each link listed
    under its own name with the digest of the file it leads to (so verify with
    ``--allow_symlinks``); empty directories, which no signature lists, are recorded
    as ignored.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"private key: not a readable PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVE_HASH:
        raise ConfigError("private key: model_signing signs with EC keys on P-256, P-384 "
                          "or P-521 only")
    tree = _tree(files, links, dirs)
    if len(tree.files) != len(files):
        raise ValueError("files: a path is listed twice (after normalisation)")
    entries, serialization_args = _to_sign(tree, ignore_git_paths)
    root = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in entries)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": serialization_args,
            "resources": [{"algorithm": "sha256", "digest": d, "name": n} for n, d in entries],
        },
    }
    payload = json.dumps(statement, indent=2).encode()
    sig = key.sign(_pae(payload), ec.ECDSA(_CURVE_HASH[key.curve.name]()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": _hint(key.public_key())},
                                 "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


def sign_entries(entries: Iterable[Any], **kw: Any) -> bytes:
    """:func:`sign` over lock entries (``path``, ``type`` f/l/d, ``sha256``,
    ``target``): what ``reconcile sign`` signs for a locked model or a directory."""
    entries = list(entries)
    return sign({e.path: e.sha256 for e in entries if e.type == "f"},
                links={e.path: e.target for e in entries if e.type == "l"},
                dirs=[e.path for e in entries if e.type == "d"], **kw)


def _to_sign(tree: _Tree, ignore_git_paths: bool
             ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The resources, in model_signing's order, and the serialization that says how
    they were chosen (what its verifier needs to rebuild the same list)."""
    skip = GIT_PATHS if ignore_git_paths else ()
    parents = tree.parents()
    entries = [(n, d) for n, d in tree.files.items() if not _under(n, skip)]
    entries += [(n, _link_digest(n, tree, parents)) for n in tree.links if not _under(n, skip)]
    entries.sort(key=lambda e: PurePosixPath(e[0]).parts)  # their Manifest's order
    if not entries:
        raise ValueError("files: nothing to sign")
    ignore_paths = list(skip) + sorted(n for n in tree.dirs
                                       if n not in parents and not _under(n, skip))
    args: dict[str, Any] = {"method": "files", "hash_type": "sha256"}
    if ignore_paths:
        args["ignore_paths"] = ignore_paths
    args["allow_symlinks"] = bool(tree.links)
    return entries, args


# --- bundle parsing (untrusted JSON: every access checked) ------------------------------------


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise SignatureError(f"malformed signature: {where} is not an object")
    if key not in obj:
        raise SignatureError(f"malformed signature: {where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise SignatureError(f"malformed signature: {where}.{key} has the wrong type")
    return value


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"malformed signature: {where} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"malformed signature: {where} is not valid base64") from None


def _parse_bundle(bundle: bytes) -> dict[str, Any]:
    """The parts of the bundle that matter, typed; SignatureError for anything else."""
    if not isinstance(bundle, bytes | bytearray | memoryview):
        raise TypeError("bundle must be bytes")
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise SignatureError(f"the signature file is {len(bundle)} bytes, more than the "
                             f"{MAX_BUNDLE_BYTES // (1024 * 1024)} MiB a signature can be")
    doc = _json(bytes(bundle), "the signature file")
    if not isinstance(doc, dict):
        raise SignatureError("malformed signature: not a JSON object (a Sigstore bundle)")
    media = _field(doc, "mediaType", str, "bundle")
    if media != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"not a model_signing bundle: mediaType is {media[:100]!r}, "
                             f"expected {BUNDLE_MEDIA_TYPE!r}")
    if doc.get("messageSignature") is not None:
        raise SignatureError("malformed signature: a messageSignature bundle signs one "
                             "blob, not a model (expected dsseEnvelope)")
    env = _field(doc, "dsseEnvelope", dict, "bundle")
    payload_type = _field(env, "payloadType", str, "dsseEnvelope")
    payload = _b64(_field(env, "payload", str, "dsseEnvelope"), "dsseEnvelope.payload")
    sigs = _field(env, "signatures", list, "dsseEnvelope")
    if not sigs:
        raise SignatureError("malformed signature: dsseEnvelope.signatures is empty")
    sig = _b64(_field(sigs[0], "sig", str, "dsseEnvelope.signatures[0]"),
               "dsseEnvelope.signatures[0].sig")

    vm = _field(doc, "verificationMaterial", dict, "bundle")
    present = [k for k in ("publicKey", "x509CertificateChain", "certificate")
               if vm.get(k) is not None]
    if len(present) != 1:
        raise SignatureError("malformed signature: verificationMaterial must hold exactly "
                             "one of publicKey, x509CertificateChain or certificate")
    material: dict[str, Any] = {}
    if present[0] == "publicKey":
        pk = _field(vm, "publicKey", dict, "verificationMaterial")
        hint = pk.get("hint")
        if hint is not None and not isinstance(hint, str):
            raise SignatureError("malformed signature: publicKey.hint is not a string")
        material["publicKey"] = hint or ""
    elif present[0] == "x509CertificateChain":
        certs = _field(_field(vm, "x509CertificateChain", dict, "verificationMaterial"),
                       "certificates", list, "x509CertificateChain")
        if not certs:
            raise SignatureError("malformed signature: the certificate chain is empty")
        if len(certs) > _MAX_CHAIN:
            raise SignatureError(f"malformed signature: {len(certs)} certificates in the "
                                 f"chain (at most {_MAX_CHAIN})")
        chain = []
        for i, c in enumerate(certs):
            where = f"x509CertificateChain.certificates[{i}]"
            der = _b64(_field(c, "rawBytes", str, where), where + ".rawBytes")
            try:
                chain.append(x509.load_der_x509_certificate(der))
            except ValueError:
                raise SignatureError(f"malformed signature: {where} is not a DER "
                                     "certificate") from None
        material["x509CertificateChain"] = chain
    else:
        material["certificate"] = True
    return {"verificationMaterial": material,
            "dsseEnvelope": {"payloadType": payload_type, "payload": payload, "sig": sig}}


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SignatureError(f"malformed signature: {what} is not UTF-8") from None
    except RecursionError:
        raise SignatureError(f"malformed signature: {what} nests too deeply") from None
    except ValueError as e:
        raise SignatureError(f"malformed signature: {what} is not JSON ({e})") from None


def _material_kind(vm: dict[str, Any]) -> str:
    if "publicKey" in vm:
        return "a key"
    if "x509CertificateChain" in vm:
        return "a certificate chain"
    return "a single certificate (Sigstore keyless, not supported)"


def _parse_statement(payload: bytes) -> tuple[dict[str, str], list[tuple[str, ...]], bool]:
    """The signed ``{path: sha256 hex}``, the ignore_paths (as path parts) and whether
    the signer allowed links (``--allow_symlinks``: each link listed under its own name
    with the digest of the file it points at).

    Follows model_signing's ``dsse_payload_to_manifest``: one subject whose sha256 is
    ROOT over the resources as listed, or the v0.2 form with files as subjects.
    """
    st = _json(payload, "the DSSE payload")
    if not isinstance(st, dict):
        raise SignatureError("malformed signature: the payload is not a JSON object")
    if st.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"malformed signature: the payload is not an in-toto "
                             f"{STATEMENT_TYPE} statement")
    ptype = _field(st, "predicateType", str, "statement")
    subjects = _field(st, "subject", list, "statement")
    entries: list[tuple[str, str]] = []
    ignore_paths: list[tuple[str, ...]] = []
    allow_symlinks = False
    if ptype == PREDICATE_TYPE_V01:
        for i, s in enumerate(subjects):
            where = f"statement.subject[{i}]"
            name = _field(s, "name", str, where)
            entries.append((name, _field(_field(s, "digest", dict, where), "sha256", str,
                                         where + ".digest")))
    elif ptype == PREDICATE_TYPE:
        if len(subjects) != 1:
            raise SignatureError(f"malformed signature: {len(subjects)} subjects, expected "
                                 "one (the model)")
        _field(subjects[0], "name", str, "statement.subject[0]")
        root = _field(_field(subjects[0], "digest", dict, "statement.subject[0]"), "sha256",
                      str, "statement.subject[0].digest")
        predicate = _field(st, "predicate", dict, "statement")
        ser = _field(predicate, "serialization", dict, "predicate")
        method = _field(ser, "method", str, "serialization")
        if method == "shards":
            raise SignatureError(
                "the signature hashes files in shards (byte ranges), which the lock's "
                "per-file sha256 cannot check: re-sign with the default file serialization")
        if method != "files":
            raise SignatureError(f"unknown serialization method {method[:50]!r}")
        hash_type = _field(ser, "hash_type", str, "serialization")
        if hash_type != "sha256":
            raise SignatureError(f"the signature hashes files with {hash_type[:50]!r}; the "
                                 "lock has sha256 only: re-sign with sha256 (the default)")
        if "allow_symlinks" not in ser:  # theirs requires the key, whatever its value
            raise SignatureError("malformed signature: serialization has no allow_symlinks")
        allow_symlinks = ser["allow_symlinks"] is True
        raw_ignore = ser.get("ignore_paths") or []
        if not isinstance(raw_ignore, list):
            raise SignatureError("malformed signature: ignore_paths is not a list")
        for i, p in enumerate(raw_ignore):
            if not isinstance(p, str):
                raise SignatureError(f"malformed signature: ignore_paths[{i}] is not a string")
            ignore_paths.append(PurePosixPath(p).parts)
        resources = _field(predicate, "resources", list, "predicate")
        for i, r in enumerate(resources):
            where = f"predicate.resources[{i}]"
            name = _field(r, "name", str, where)
            algorithm = _field(r, "algorithm", str, where)
            if algorithm != "sha256":
                raise SignatureError(f"{name!r} is signed with {algorithm[:50]!r}, not sha256")
            entries.append((name, _field(r, "digest", str, where)))
        _check_hex(entries)
        got = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in entries)).hexdigest()
        if got != root:
            raise SignatureError(f"the signature is inconsistent: its resources hash to "
                                 f"{got}, but it signs the root digest {root[:64]}")
    else:
        raise SignatureError(f"unknown predicateType {ptype[:100]!r}, expected "
                             f"{PREDICATE_TYPE!r}")

    _check_hex(entries)
    signed: dict[str, str] = {}
    for name, digest in entries:
        norm = str(PurePosixPath(name))  # theirs keys files by PurePosixPath(name)
        if norm in signed:
            raise SignatureError(f"malformed signature: {norm!r} is listed twice")
        signed[norm] = digest.lower()
    return signed, ignore_paths, allow_symlinks


def _check_hex(entries: list[tuple[str, str]]) -> None:
    for name, digest in entries:
        if not _HEX64.fullmatch(digest):
            raise SignatureError(f"malformed signature: the digest of {name[:200]!r} is not "
                                 "64 hex digits")


# --- comparing the signed files with the model ------------------------------------------------


def _norm_path(name: str) -> str | None:
    """``name`` as model_signing keys it (PurePosixPath), or None if it cannot be a
    file inside the model."""
    if not isinstance(name, str) or not name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or ".." in p.parts:
        return None
    return str(p)


@dataclass(frozen=True)
class _Tree:
    """The model side: every entry of the lock by kind, so that none can go unchecked.

    ``files`` maps a regular file to its sha256, ``links`` a symbolic link to its
    target as recorded, ``dirs`` holds the directory entries."""

    files: dict[str, str]
    links: dict[str, str]
    dirs: frozenset[str]

    def parents(self) -> frozenset[str]:
        """Every directory that holds some entry (an entry's ancestors)."""
        out: set[str] = set()
        for name in (*self.files, *self.links, *self.dirs):
            parts = name.split("/")
            out.update("/".join(parts[:i]) for i in range(1, len(parts)))
        return frozenset(out)


def _tree(files: Mapping[str, str], links: Mapping[str, str] | None,
          dirs: Iterable[str]) -> _Tree:
    link_map: dict[str, str] = {}
    for name, target in (links or {}).items():
        norm = _norm_path(name)
        if norm is None or not isinstance(target, str) or not target:
            raise ValueError(f"links: {name!r} -> {target!r} is not a link inside the model")
        link_map[norm] = target
    dir_set = set()
    for name in dirs:
        norm = _norm_path(name)
        if norm is None:
            raise ValueError(f"dirs: {name!r} is not a relative path inside the model")
        dir_set.add(norm)
    return _Tree(_model_map(files), link_map, frozenset(dir_set))


def _model_map(files: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, digest in files.items():
        norm = _norm_path(name)
        if norm is None:
            raise ValueError(f"files: {name!r} is not a relative path inside the model")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError(f"files: {name!r}: {digest!r} is not a sha256 hex digest")
        out[norm] = digest.lower()
    return out


def _link_digest(name: str, tree: _Tree, parents: frozenset[str]) -> str:
    """The sha256 of the file the link ``name`` leads to (through other links too): what
    ``model_signing --allow_symlinks`` lists under the link's name. A link that leaves
    the model, leads nowhere or to a directory is refused: no signature covers it."""
    at = name
    for _ in range(_MAX_HOPS):
        target = tree.links[at]
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(at), target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            raise SignatureError(f"{name} points outside the model ({target[:200]!r}); a "
                                 "signature covers what is inside it only")
        if joined in tree.files:
            return tree.files[joined]
        if joined in tree.links:
            at = joined
            continue
        if joined == "." or joined in tree.dirs or joined in parents:
            raise SignatureError(f"{name} is a link to a directory ({target[:200]!r}), which "
                                 "no signature covers (model_signing skips it)")
        raise SignatureError(f"{name} points at nothing in the model ({target[:200]!r})")
    raise SignatureError(f"{name}: more than {_MAX_HOPS} links in a row (a loop)")


def _under(path: str, prefixes: Iterable[str | tuple[str, ...]]) -> bool:
    """model_signing's ``should_ignore``: ``path`` is, or is inside, one of them."""
    parts = PurePosixPath(path).parts
    for pre in prefixes:
        pp = PurePosixPath(pre).parts if isinstance(pre, str) else pre
        if parts[: len(pp)] == pp:
            return True
    return False


def glob_match(pattern: str, path: str) -> bool:
    """``path`` (``/``-separated, relative) matches ``pattern`` as a whole: ``*``, ``?``
    and ``[…]`` stay within one path segment, a ``**`` segment stands for any number of
    segments (none included). A leading or trailing ``/`` is not part of the match."""
    return _segments_match(tuple(pattern.strip("/").split("/")), tuple(path.split("/")))


def _segments_match(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(_segments_match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return (bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0])
            and _segments_match(pat[1:], parts[1:]))


def ignored(path: str, globs: Sequence[str], *, is_dir: bool = False) -> bool:
    """models.toml's ``signature.ignore``: a glob matches files (and links); one with a
    trailing ``/`` matches a directory, and so everything under it. Why not fnmatch on
    the whole path: there ``*`` crosses ``/`` and ``*.md`` would hide ``x.md/model.bin``."""
    parts = path.split("/")
    for g in globs:
        if g.endswith("/"):
            ancestors = ["/".join(parts[:i]) for i in range(1, len(parts) + (1 if is_dir else 0))]
            if any(glob_match(g, a) for a in ancestors):
                return True
        elif not is_dir and glob_match(g, path):
            return True
    return False


def _compare(signed: dict[str, str], tree: _Tree, ignore_paths: list[tuple[str, ...]],
             allow_symlinks: bool, ignore: Sequence[str]) -> None:
    """Every entry of the model is accounted for: signed with the same digest, named by
    ``ignore``, or an unsigned regular file or directory under the signer's recorded
    ignore_paths or the root git paths. A link counts only when the signature lists it
    (``--allow_symlinks``); an empty directory only when something ignores it."""
    signed = {n: d for n, d in signed.items() if not ignored(n, ignore)}
    exempt = [*ignore_paths, *((g,) for g in GIT_PATHS)]
    model = {n: d for n, d in tree.files.items()
             if not ignored(n, ignore) and not (n not in signed and _under(n, exempt))}
    links = sorted(n for n in tree.links if not ignored(n, ignore))
    if links and not allow_symlinks:
        raise SignatureError(
            f"{_names(links, str)} {'is a symbolic link' if len(links) == 1 else 'are links'}"
            ", and the signature was made without --allow_symlinks, so it vouches for no "
            "link (model_signing verify refuses such a model too)")
    parents = tree.parents()
    for n in links:
        model[n] = _link_digest(n, tree, parents)
    empty = sorted(n + "/ (an empty directory, which no signature lists)" for n in tree.dirs
                   if n not in parents and not ignored(n, ignore, is_dir=True)
                   and not _under(n, exempt))
    if not signed:
        raise SignatureError("the signature covers no file of the model")
    differ = sorted(n for n in signed.keys() & model.keys() if signed[n] != model[n])
    missing = sorted(signed.keys() - model.keys())
    extra = sorted(model.keys() - signed.keys()) + empty
    if not (differ or missing or extra):
        return
    parts = []
    if differ:
        parts.append("digest differs: " + _names(
            differ, lambda n: f"{n} (signed {signed[n][:12]}…, model {model[n][:12]}…)"))
    if missing:
        parts.append("missing (signed, not in the model): " + _names(missing, str))
    if extra:
        parts.append("extra (in the model, not signed): " + _names(extra, str))
    raise SignatureError("the signature does not match the model: " + "; ".join(parts))



def _names(names: list[str], fmt: Any) -> str:
    shown = ", ".join(fmt(n) for n in names[:_LIST_AT_MOST])
    more = len(names) - _LIST_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")


# --- keys and the DSSE signature --------------------------------------------------------------


def _load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"public key: not a readable PEM public key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_HASH:
        raise ConfigError("public key: model_signing signs with EC keys on P-256, P-384 or "
                          "P-521 only")
    return key


def _hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _curve_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    return _CURVE_HASH[key.curve.name]()


def _pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, as model_signing's ``pae``."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload),
                                    payload)


def _pae_compat(payload: bytes) -> bytes:
    """model_signing 0.2's buggy PAE (``DSSEV1``, the payload's Python bytes repr),
    which its verifier still accepts for old signatures."""
    return (f"DSSEV1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} {payload!r}"
            ).encode()


def _dsse_ok(key: ec.EllipticCurvePublicKey, payload: bytes, sig: bytes, *,
             compat_hash: hashes.HashAlgorithm) -> bool:
    for message, algo in ((_pae(payload), _curve_hash(key)), (_pae_compat(payload), compat_hash)):
        try:
            key.verify(sig, message, ec.ECDSA(algo))
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


# --- certificate chains -----------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _load_trusted(pems: Sequence[bytes]) -> list[x509.Certificate]:
    if isinstance(pems, bytes | str):
        raise TypeError("certificate_chain_pems is a list of PEM blobs")
    certs: list[x509.Certificate] = []
    for i, pem in enumerate(pems):
        try:
            certs += x509.load_pem_x509_certificates(pem)
        except ValueError as e:
            raise ConfigError(f"certificate chain item {i + 1}: no readable PEM certificate "
                              f"({e})") from None
    if not certs:
        raise ValueError("certificate_chain_pems is empty: give the trusted root(s)")
    return certs


def _subject(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string()


def _self_signed(c: x509.Certificate) -> bool:
    if c.subject != c.issuer:
        return False
    try:
        c.verify_directly_issued_by(c)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _ca_problem(c: x509.Certificate, below: int) -> str | None:
    """Why ``c`` cannot issue a certificate with ``below`` CA certificates under it."""
    try:
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"certificate '{_subject(c)}' is not a CA (no basicConstraints)"
    if not bc.ca:
        return f"certificate '{_subject(c)}' is not a CA"
    if bc.path_length is not None and below > bc.path_length:
        return f"certificate '{_subject(c)}' allows {bc.path_length} CA(s) below it"
    try:
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            return f"certificate '{_subject(c)}' may not sign certificates (keyUsage)"
    except x509.ExtensionNotFound:
        pass
    return None


def _critical_problem(c: x509.Certificate) -> str | None:
    for ext in c.extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            name = getattr(ext.oid, "_name", "")
            return (f"certificate '{_subject(c)}' has an unsupported critical extension "
                    f"{ext.oid.dotted_string}" + (f" ({name})" if name else ""))
    return None


def _paths(leaf: x509.Certificate, pool: list[tuple[x509.Certificate, bool]]
           ) -> tuple[list[list[x509.Certificate]], str]:
    """Every issuer path from ``leaf`` to a trusted self-signed certificate, trusted
    issuers tried first (OpenSSL's default), and the first reason a path failed."""
    found: list[list[x509.Certificate]] = []
    first_problem = ""
    budget = [_MAX_VISITS]  # crafted same-name certificates must not explode the search

    def walk(path: list[x509.Certificate]) -> None:
        nonlocal first_problem
        top = path[-1]
        budget[0] -= 1
        if budget[0] < 0:
            return
        if any(top == c and trusted for c, trusted in pool) and _self_signed(top):
            found.append(list(path))
            return
        if len(path) > _MAX_DEPTH or len(found) >= 4:
            return
        candidates = [c for c, _ in sorted(pool, key=lambda e: not e[1])
                      if c.subject == top.issuer and c not in path]
        for cand in candidates:
            if not _issued_by(top, cand):
                continue
            problem = _ca_problem(cand, len(path) - 1) or _critical_problem(cand)
            if problem:
                first_problem = first_problem or problem
                continue
            walk([*path, cand])

    walk([leaf])
    return found, first_problem


def _validity_problem(c: x509.Certificate, at: datetime, at_issue: datetime) -> str | None:
    nb, na = c.not_valid_before_utc, c.not_valid_after_utc
    if not nb <= at_issue <= na:  # model_signing's check time: the signing cert's notBefore
        return (f"certificate '{_subject(c)}' was not valid when the signing certificate "
                f"was issued ({at_issue:%Y-%m-%d %H:%M:%S} UTC; valid "
                f"{nb:%Y-%m-%d} to {na:%Y-%m-%d})")
    if at > na:
        return f"certificate '{_subject(c)}' expired on {na:%Y-%m-%d %H:%M:%S} UTC"
    if at < nb:
        return f"certificate '{_subject(c)}' is not valid before {nb:%Y-%m-%d %H:%M:%S} UTC"
    return None


def _check_certificates(leaf: x509.Certificate, untrusted: list[x509.Certificate],
                        trusted: list[x509.Certificate], now: datetime) -> x509.Certificate:
    """The signing certificate, once it chains to a trusted root and may sign."""
    subject = _subject(leaf)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_HASH:
        raise SignatureError(f"certificate '{subject}' does not hold a P-256, P-384 or P-521 "
                             "key, which model_signing requires")
    problem = _critical_problem(leaf)
    if problem:
        raise SignatureError(problem)
    pool = [(c, True) for c in trusted] + [(c, False) for c in untrusted]
    paths, why = _paths(leaf, pool)
    if not paths:
        raise SignatureError(
            f"certificate '{subject}' does not chain to a self-signed certificate among the "
            f"given ones (its issuer is '{leaf.issuer.rfc4514_string()}')"
            + (f": {why}" if why else ""))
    at_issue = leaf.not_valid_before_utc
    problems = [next(filter(None, (_validity_problem(c, now, at_issue) for c in p)), None)
                for p in paths]
    if all(problems):
        raise SignatureError(problems[0] or "")

    exts = leaf.extensions
    try:
        if exts.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return leaf
    except x509.ExtensionNotFound:
        pass
    try:
        if ExtendedKeyUsageOID.CODE_SIGNING in exts.get_extension_for_class(
                x509.ExtendedKeyUsage).value:
            return leaf
    except x509.ExtensionNotFound:
        pass
    raise SignatureError(f"certificate '{subject}' may not be used for signing: it needs "
                         "keyUsage digitalSignature or extendedKeyUsage codeSigning")


# --- against a locked model (what lock and apply call) ---------------------------------------


def check_model(config: Any, files: Iterable[Any], bundle: bytes, where: str) -> str:
    """Verify the signature declared in models.toml (``config``: a SignatureConfig)
    against a locked model's files (the signature file left out); returns the signer as
    the lock records it: ``key:<hint>`` or ``certificate:<subject>``. ``where`` names
    the model in errors (``models.<key>``). Every entry of the lock counts: regular
    files, links and directories (see :func:`verify`)."""
    entries = [f for f in files if f.path != config.file]
    model: dict[str, Any] = {
        "files": {f.path: f.sha256 for f in entries if getattr(f, "type", "f") == "f"},
        "links": {f.path: f.target or "" for f in entries if getattr(f, "type", "f") == "l"},
        "dirs": [f.path for f in entries if getattr(f, "type", "f") == "d"],
        "ignore": config.ignore,
    }
    try:
        if config.public_key:
            signer = verify(bundle, **model, public_key_pem=_read(
                config.public_key, f"{where}.signature.publicKey"))
        else:
            pems = [_read(p, f"{where}.signature.certificateChain")
                    for p in config.certificate_chain]
            signer = verify(bundle, **model, certificate_chain_pems=pems)
    except ValueError as e:  # an entry the lock should not hold (its checks come first)
        raise SignatureError(f"{where}: {config.file}: the lock's entries cannot be checked:"
                             f" {e}", hint="lock the model again") from None
    except SignatureError as e:
        raise SignatureError(f"{where}: {config.file}: {e.message}",
                             hint="nothing was locked or installed; if the publisher re-signed"
                             " with another key, update signature in models.toml") from None
    return f"{signer.kind}:{signer.identity}"


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
