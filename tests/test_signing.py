"""reconcile.signing against the real `model_signing` (OpenSSF model signing) CLI.

Signatures made by `model_signing sign key|certificate` (keys and a root → intermediate
→ leaf chain made with `openssl`) must verify from the per-file sha256 alone, and
signatures made by `signing.sign` must pass `model_signing verify key`. Each refusal is
checked for its reason. The CLI runs as `python -m model_signing` of the interpreter
running the tests (PyPI `model-signing` plus `pyopenssl`, which it imports but does
not declare); without it the integration tests skip, which RECONCILE_REQUIRE_PEERS=1
turns into failures. The unit and property tests need only `cryptography`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile import signing
from reconcile.errors import ReconcileError
from reconcile.signing import SignatureError, Signer

OPENSSL = shutil.which("openssl")


@functools.cache
def _cli_problem() -> str | None:
    """Why `python -m model_signing` cannot run here, or None."""
    try:
        p = subprocess.run([sys.executable, "-m", "model_signing", "--help"],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return None


@pytest.fixture(scope="module")
def ms():
    """Runs the model_signing CLI; skips (a missing peer) when it is not installed."""
    problem = _cli_problem()
    if problem:
        pytest.skip("the model_signing CLI does not run (pip install model-signing "
                    f"pyopenssl): {problem}")
    if OPENSSL is None:
        pytest.skip("openssl is not on PATH (it makes the test keys and certificates)")

    def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)],
                           capture_output=True, text=True, timeout=120)
        if ok and p.returncode != 0:
            raise AssertionError(f"model_signing {args[:2]} failed: {p.stdout}{p.stderr}")
        return p

    return run


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True)


def tree_files(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """What the lock would hold: relative path -> sha256 hex of every file."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in skip
    }


def make_model(d: Path, salt: bytes = b"") -> Path:
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 8}' + salt.decode())
    (d / "weights.bin").write_bytes(os.urandom(64 * 1024) + salt)
    (d / "sub" / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    (d / "README.md").write_text("# tiny\n")
    (d / ".gitattributes").write_text("*.bin filter=lfs\n")  # model_signing skips it
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory, ms) -> Path:
    """Keys P-256 and P-384, and root CA → intermediate → leaf certificates, by openssl."""
    d = tmp_path_factory.mktemp("pki")
    (d / "ext.cnf").write_text(
        "[inter]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
        "[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=codeSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        "[noku]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment\n"
    )
    for name, curve in [("p256", "prime256v1"), ("p384", "secp384r1"), ("root", "prime256v1"),
                        ("other", "prime256v1"), ("inter", "secp384r1"), ("leaf", "prime256v1")]:
        openssl("ecparam", "-name", curve, "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
        openssl("ec", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=d)
    for root in ("root", "other"):
        openssl("req", "-x509", "-new", "-key", f"{root}.key", "-days", "3650",
                "-subj", f"/CN=Test {root} CA/O=reconcile", "-out", f"{root}.pem",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-new", "-key", "inter.key", "-subj", "/CN=Test Intermediate/O=reconcile",
            "-out", "inter.csr", cwd=d)
    openssl("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey", "root.key",
            "-CAcreateserial", "-days", "1825", "-extfile", "ext.cnf", "-extensions", "inter",
            "-out", "inter.pem", cwd=d)
    openssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=Model Signer/O=reconcile",
            "-out", "leaf.csr", cwd=d)
    for ext, out in [("leaf", "leaf.pem"), ("noku", "noku.pem")]:
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "inter.pem", "-CAkey", "inter.key",
                "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-extensions", ext,
                "-out", out, cwd=d)
    return d


@pytest.fixture(scope="module")
def signed(tmp_path_factory, ms, pki) -> dict:
    """One model and the signatures the real CLI made for it."""
    base = tmp_path_factory.mktemp("signed")
    model = make_model(base / "tiny-model")
    sigs = base / "sigs"
    sigs.mkdir()
    for k in ("p256", "p384"):
        ms("sign", "key", model, "--private_key", pki / f"{k}.key",
           "--signature", sigs / f"{k}.sig")
    ms("sign", "certificate", model, "--private_key", pki / "leaf.key",
       "--signing_certificate", pki / "leaf.pem", "--certificate_chain", pki / "inter.pem",
       "--signature", sigs / "cert.sig")
    return {"model": model, "sigs": sigs, "files": tree_files(model)}


def pem(pki: Path, name: str) -> bytes:
    return (pki / name).read_bytes()


def refused(bundle: bytes, files: dict[str, str], **kw) -> str:
    with pytest.raises(SignatureError) as e:
        signing.verify(bundle, files, **kw)
    return str(e.value)


# --- the real CLI's signatures, verified from the lock's sha256 -----------------------------


@pytest.mark.integration
@pytest.mark.parametrize("k", ["p256", "p384"])
def test_cli_key_signature_verifies(signed, pki, k):
    bundle = (signed["sigs"] / f"{k}.sig").read_bytes()
    got = signing.verify(bundle, signed["files"], public_key_pem=pem(pki, f"{k}.pub"))
    hint = json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"]
    assert got == Signer("key", hint)
    assert hint == signing.key_hint(pem(pki, f"{k}.pub"))


@pytest.mark.integration
def test_cli_certificate_signature_verifies(signed, pki):
    bundle = (signed["sigs"] / "cert.sig").read_bytes()
    got = signing.verify(bundle, signed["files"], certificate_chain_pems=[pem(pki, "root.pem")])
    assert got == Signer("certificate", "O=reconcile,CN=Model Signer")
    # the intermediate may come from the caller as well as from the bundle
    both = [pem(pki, "inter.pem"), pem(pki, "root.pem")]
    assert signing.verify(bundle, signed["files"], certificate_chain_pems=both) == got


@pytest.mark.integration
@pytest.mark.parametrize("k", ["p256", "p384"])
def test_our_signature_passes_model_signing_verify(signed, pki, tmp_path, ms, k):
    ours = signing.sign(signed["files"], private_key_pem=pem(pki, f"{k}.key"),
                        model_name="tiny-model")
    (tmp_path / "ours.sig").write_bytes(ours)
    p = ms("verify", "key", signed["model"], "--signature", tmp_path / "ours.sig",
           "--public_key", pki / f"{k}.pub", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Verification succeeded" in p.stdout
    assert json.loads(ours)["verificationMaterial"]["publicKey"]["hint"] == \
        signing.key_hint(pem(pki, f"{k}.pub"))
    # and the CLI refuses it once the model changes, as ours does
    bad = dict(signed["files"], **{"README.md": "0" * 64})
    assert "digest differs: README.md" in refused(ours, bad, public_key_pem=pem(pki, f"{k}.pub"))


@pytest.mark.integration
def test_signature_inside_the_model_and_its_ignore_paths(tmp_path, ms, pki):
    """The CLI records the in-model signature file and git paths as ignore_paths:
    a caller that forgets to leave model.sig out is still right."""
    model = make_model(tmp_path / "m")
    ms("sign", "key", model, "--private_key", pki / "p256.key",
       "--signature", model / "model.sig", "--ignore-paths", model / "docs")
    (model / "docs").mkdir()
    (model / "docs" / "card.md").write_text("unsigned, ignored by the signer")
    statement = json.loads(base64.b64decode(json.loads(
        (model / "model.sig").read_bytes())["dsseEnvelope"]["payload"]))
    assert {"model.sig", "docs", ".gitattributes"} <= set(
        statement["predicate"]["serialization"]["ignore_paths"])
    files = tree_files(model)
    assert "model.sig" in files and "docs/card.md" in files
    assert signing.verify((model / "model.sig").read_bytes(), files,
                          public_key_pem=pem(pki, "p256.pub")).kind == "key"


# --- refusals, each with its reason ------------------------------------------------------------


@pytest.mark.integration
def test_refuses_tampered_extra_and_missing_files(signed, pki):
    bundle, files = (signed["sigs"] / "p256.sig").read_bytes(), signed["files"]
    key = {"public_key_pem": pem(pki, "p256.pub")}
    tampered = dict(files, **{"weights.bin": hashlib.sha256(b"evil").hexdigest()})
    msg = refused(bundle, tampered, **key)
    assert "digest differs: weights.bin (signed " in msg and "missing" not in msg
    assert "extra (in the model, not signed): extra.txt" in refused(
        bundle, dict(files, **{"extra.txt": "a" * 64}), **key)
    gone = {n: d for n, d in files.items() if n != "sub/tokenizer.json"}
    assert "missing (signed, not in the model): sub/tokenizer.json" in refused(bundle, gone, **key)
    # ignore globs drop paths from both sides (a glob with a trailing / drops a
    # directory and what is under it; without it, only a file of that name)
    assert signing.verify(bundle, gone, ignore=["sub/"], **key).kind == "key"
    assert "missing (signed, not in the model): sub/tokenizer.json" in refused(
        bundle, gone, ignore=["sub"], **key)
    assert signing.verify(bundle, dict(files, **{"x.md": "b" * 64}), ignore=["*.md"], **key)


@pytest.mark.integration
def test_refuses_another_key(signed, pki):
    bundle = (signed["sigs"] / "p256.sig").read_bytes()
    hint = signing.key_hint(pem(pki, "p256.pub"))
    msg = refused(bundle, signed["files"], public_key_pem=pem(pki, "p384.pub"))
    assert f"signed by another key (hint {hint})" in msg
    # a bundle without a hint (pre-1.0 layout) still needs the right key
    doc = json.loads(bundle)
    doc["verificationMaterial"]["publicKey"] = {}
    msg = refused(json.dumps(doc).encode(), signed["files"], public_key_pem=pem(pki, "p384.pub"))
    assert "does not verify with the given key" in msg
    assert signing.verify(json.dumps(doc).encode(), signed["files"],
                          public_key_pem=pem(pki, "p256.pub")).kind == "key"


@pytest.mark.integration
def test_refuses_expired_and_untrusted_certificates(signed, pki, ms):
    bundle, files = (signed["sigs"] / "cert.sig").read_bytes(), signed["files"]
    root = [pem(pki, "root.pem")]
    later = datetime.now(UTC) + timedelta(days=30)
    msg = refused(bundle, files, certificate_chain_pems=root, now=later)
    assert "certificate 'O=reconcile,CN=Model Signer' expired on " in msg
    assert "not valid before" in refused(bundle, files, certificate_chain_pems=root,
                                         now=datetime.now(UTC) - timedelta(days=3))
    assert "does not chain to a self-signed certificate" in refused(
        bundle, files, certificate_chain_pems=[pem(pki, "other.pem")])
    # an intermediate alone is no trust anchor, for model_signing (OpenSSL) as for us
    assert "does not chain" in refused(bundle, files,
                                       certificate_chain_pems=[pem(pki, "inter.pem")])
    p = ms("verify", "certificate", signed["model"], "--signature", signed["sigs"] / "cert.sig",
           "--certificate_chain", pki / "inter.pem", ok=False)
    assert p.returncode == 1
    # and a certificate is not a key
    assert "not a key" in refused(bundle, files, public_key_pem=pem(pki, "leaf.pub"))


@pytest.mark.integration
def test_refuses_certificate_not_for_signing(signed, pki, ms, tmp_path):
    ms("sign", "certificate", signed["model"], "--private_key", pki / "leaf.key",
       "--signing_certificate", pki / "noku.pem", "--certificate_chain", pki / "inter.pem",
       "--signature", tmp_path / "noku.sig")
    msg = refused((tmp_path / "noku.sig").read_bytes(), signed["files"],
                  certificate_chain_pems=[pem(pki, "root.pem")])
    assert "may not be used for signing" in msg


@pytest.mark.integration
def test_refuses_signature_over_another_model(signed, pki, ms, tmp_path):
    other = make_model(tmp_path / "other", salt=b"2")
    ms("sign", "key", other, "--private_key", pki / "p256.key",
       "--signature", tmp_path / "other.sig")
    msg = refused((tmp_path / "other.sig").read_bytes(), signed["files"],
                  public_key_pem=pem(pki, "p256.pub"))
    assert "digest differs: config.json" in msg and "weights.bin" in msg


@pytest.mark.integration
def test_refuses_garbage_and_truncated_bundles(signed, pki):
    bundle, files = (signed["sigs"] / "p256.sig").read_bytes(), signed["files"]
    key = {"public_key_pem": pem(pki, "p256.pub")}
    for bad in (b"", b"\x00\xff garbage", bundle[: len(bundle) // 2], b"[]", b"null",
                b"[" * 100_000, bundle.replace(b"application/vnd.dev", b"application/vnd.xxx")):
        with pytest.raises(SignatureError):
            signing.verify(bad, files, **key)
    assert "16 MiB" in refused(b" " * (signing.MAX_BUNDLE_BYTES + 1), files, **key)


# --- malformed and hand-made bundles (no CLI needed) ---------------------------------------


P256 = ec.generate_private_key(ec.SECP256R1())
P256_PEM = P256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
P256_PUB = P256.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
P256_CA = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unrelated CA")]))
           .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unrelated CA")]))
           .public_key(P256.public_key()).serial_number(1)
           .not_valid_before(datetime(2020, 1, 1)).not_valid_after(datetime(2100, 1, 1))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
           .sign(P256, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
FILES = {"config.json": "1" * 64, "weights.bin": "2" * 64, "sub/tok.json": "3" * 64}


def hand_made(statement: dict, *, compat: bool = False, key=P256) -> bytes:
    """A key-mode bundle around any statement: to test what the CLI never writes."""
    payload = json.dumps(statement).encode()
    pae = signing._pae_compat(payload) if compat else signing._pae(payload)
    sig = key.sign(pae, ec.ECDSA(hashes.SHA256()))
    return json.dumps({
        "mediaType": signing.BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                         "payloadType": signing.PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(sig).decode()}]},
    }).encode()


def statement_of(bundle: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))


def test_payload_changed_after_signing_is_refused():
    bundle = signing.sign(FILES, private_key_pem=P256_PEM, model_name="m")
    doc = json.loads(bundle)
    st_ = statement_of(bundle)
    st_["predicate"]["resources"][0]["digest"] = "9" * 64  # and ROOT made consistent again
    st_["subject"][0]["digest"]["sha256"] = hashlib.sha256(b"".join(
        bytes.fromhex(r["digest"]) for r in st_["predicate"]["resources"])).hexdigest()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st_).encode()).decode()
    forged = dict(FILES, **{st_["predicate"]["resources"][0]["name"]: "9" * 64})
    assert "does not verify" in refused(json.dumps(doc).encode(), forged, public_key_pem=P256_PUB)


def test_statement_rules():
    good = statement_of(signing.sign(FILES, private_key_pem=P256_PEM, model_name="m"))
    key = {"public_key_pem": P256_PUB}
    assert signing.verify(hand_made(good), FILES, **key).kind == "key"

    def variant(edit) -> dict:
        """``good`` edited, its ROOT recomputed (so each case fails for its own reason)."""
        s = json.loads(json.dumps(good))
        edit(s)
        try:
            s["subject"][0]["digest"]["sha256"] = hashlib.sha256(b"".join(
                bytes.fromhex(r["digest"]) for r in s["predicate"]["resources"])).hexdigest()
        except (KeyError, TypeError, AttributeError):
            pass
        return s

    cases = {
        "shards": lambda s: s["predicate"]["serialization"].update(method="shards"),
        "'blake3'": lambda s: s["predicate"]["serialization"].update(hash_type="blake3"),
        "listed twice": lambda s: s["predicate"]["resources"].append(
            dict(s["predicate"]["resources"][0])),
        "unknown predicateType": lambda s: s.update(predicateType="https://example/x"),
        "allow_symlinks": lambda s: s["predicate"]["serialization"].pop("allow_symlinks"),
        "one (the model)": lambda s: s["subject"].append(s["subject"][0]),
        "not sha256": lambda s: s["predicate"]["resources"][0].update(algorithm="sha512"),
        "wrong type": lambda s: s["predicate"].update(resources={"a": 1}),
        "in-toto": lambda s: s.update(_type="x"),
    }
    for reason, edit in cases.items():
        assert reason in refused(hand_made(variant(edit)), FILES, **key), reason
    bad_root = json.loads(json.dumps(good))
    bad_root["subject"][0]["digest"]["sha256"] = "0" * 64
    assert "inconsistent" in refused(hand_made(bad_root), FILES, **key)
    # a signature over nothing vouches for nothing (model_signing would accept it)
    empty = variant(lambda s: s["predicate"].update(resources=[]))
    assert "covers no file" in refused(hand_made(empty), {}, **key)
    # the recorded ignore_paths are prefixes dropped from the model side
    ign = variant(lambda s: s["predicate"]["serialization"].update(ignore_paths=["docs"]))
    assert signing.verify(hand_made(ign), dict(FILES, **{"docs/a/b.md": "4" * 64}), **key)


def test_v02_signature_is_accepted_like_model_signing():
    """model_signing 0.2 wrote files as subjects and signed a buggy PAE; 1.1 still
    accepts those, so this module does too."""
    statement = {"_type": signing.STATEMENT_TYPE, "predicateType": signing.PREDICATE_TYPE_V01,
                 "subject": [{"name": n, "digest": {"sha256": d}} for n, d in FILES.items()],
                 "predicate": {}}
    bundle = hand_made(statement, compat=True)
    assert signing.verify(bundle, FILES, public_key_pem=P256_PUB).kind == "key"
    assert "digest differs: weights.bin" in refused(
        bundle, dict(FILES, **{"weights.bin": "0" * 64}), public_key_pem=P256_PUB)


@pytest.mark.integration
def test_v02_bundle_is_accepted_by_model_signing_too(signed, pki, ms, tmp_path):
    key = serialization.load_pem_private_key(pem(pki, "p256.key"), None)
    files = {n: d for n, d in signed["files"].items() if n != ".gitattributes"}
    statement = {"_type": signing.STATEMENT_TYPE, "predicateType": signing.PREDICATE_TYPE_V01,
                 "subject": [{"name": n, "digest": {"sha256": d}} for n, d in files.items()],
                 "predicate": {}}
    (tmp_path / "v02.sig").write_bytes(hand_made(statement, compat=True, key=key))
    assert signing.verify((tmp_path / "v02.sig").read_bytes(), signed["files"],
                          public_key_pem=pem(pki, "p256.pub")).kind == "key"
    p = ms("verify", "key", signed["model"], "--signature", tmp_path / "v02.sig",
           "--public_key", pki / "p256.pub", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_crafted_certificate_loops_are_refused_quickly():
    """Certificates that all issue each other (one name, one key) and lead to no trusted
    root: the path search is bounded, and the answer is a refusal, not a hang."""
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loop")])
    t0 = datetime.now(UTC) - timedelta(days=1)
    certs = [x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(k.public_key()).serial_number(i + 1).not_valid_before(t0)
             .not_valid_after(t0 + timedelta(days=9))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
             .sign(k, hashes.SHA256()) for i in range(16)]
    bundle = json.loads(signing.sign(FILES, private_key_pem=P256_PEM, model_name="m"))
    bundle["verificationMaterial"] = {"x509CertificateChain": {"certificates": [
        {"rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()}
        for c in certs]}, "tlogEntries": []}
    started = time.perf_counter()
    assert "does not chain" in refused(json.dumps(bundle).encode(), FILES,
                                       certificate_chain_pems=[P256_CA])
    assert time.perf_counter() - started < 2


def test_wrong_json_types_never_crash():
    """Untrusted bundles: every wrong type is a SignatureError, not a traceback."""
    base = json.loads(signing.sign(FILES, private_key_pem=P256_PEM, model_name="m"))
    paths = [[], ["mediaType"], ["verificationMaterial"], ["verificationMaterial", "publicKey"],
             ["verificationMaterial", "publicKey", "hint"], ["dsseEnvelope"],
             ["dsseEnvelope", "payload"], ["dsseEnvelope", "payloadType"],
             ["dsseEnvelope", "signatures"], ["dsseEnvelope", "signatures", 0],
             ["dsseEnvelope", "signatures", 0, "sig"]]
    for path in paths:
        for junk in (None, 1, "x", [], {}, True, "%%%"):
            doc = json.loads(json.dumps(base))
            if not path:
                doc = junk
            else:
                parent = doc
                for p in path[:-1]:
                    parent = parent[p]
                parent[path[-1]] = junk
            try:
                signing.verify(json.dumps(doc).encode(), FILES, public_key_pem=P256_PUB)
            except SignatureError:
                pass  # hint "" / None / {} are the legacy no-hint layout: those verify


def test_argument_errors():
    bundle = signing.sign(FILES, private_key_pem=P256_PEM, model_name="m")
    with pytest.raises(ValueError, match="exactly one"):
        signing.verify(bundle, FILES)
    with pytest.raises(ValueError, match="sha256 hex"):
        signing.verify(bundle, {"a": "zz"}, public_key_pem=P256_PUB)
    with pytest.raises(ValueError, match="relative path"):
        signing.sign({"../a": "1" * 64}, private_key_pem=P256_PEM, model_name="m")
    rsa_like = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ReconcileError, match="public key"):
        signing.verify(bundle, FILES, public_key_pem=rsa_like)


# --- property: sign → verify round-trips, any single change is refused ---------------------

_segment = st.text("ab-._0", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
_names = st.lists(_segment, min_size=1, max_size=3).map("/".join)
_digest = st.binary(min_size=32, max_size=32).map(bytes.hex)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_names, _digest, min_size=1, max_size=12), data=st.data())
def test_property_round_trip_and_single_change(files, data):
    # a name that is also a directory of another name cannot exist in a real tree
    files = {n: d for n, d in files.items()
             if not any(o.startswith(n + "/") for o in files)}
    bundle = signing.sign(files, private_key_pem=P256_PEM, model_name="m",
                          ignore_git_paths=False)
    assert signing.verify(bundle, files, public_key_pem=P256_PUB) == Signer(
        "key", signing.key_hint(P256_PUB))
    victim = data.draw(st.sampled_from(sorted(files)))
    flipped = data.draw(_digest.filter(lambda d: d != files[victim]))
    msg = refused(bundle, dict(files, **{victim: flipped}), public_key_pem=P256_PUB)
    assert f"digest differs: {victim} (" in msg


# --- every entry of the lock is accounted for: links, directories, git paths ------------------


def lock_entries(root: Path, *, skip: tuple[str, ...] = ()) -> list:
    """What models.lock holds for a tree: regular files, links (with their target) and
    directories, as a git or archive source records them."""
    from reconcile.lockfile import LockedFile

    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in skip:
            continue
        if p.is_symlink():
            out.append(LockedFile(rel, type="l", target=os.readlink(p)))
        elif p.is_dir():
            out.append(LockedFile(rel, type="d"))
        else:
            data = p.read_bytes()
            out.append(LockedFile(rel, len(data), hashlib.sha256(data).hexdigest()))
    return out


def sig_config(pki: Path, **kw):
    from reconcile.config import SignatureConfig

    return SignatureConfig(file="model.sig", public_key=str(pki / "p256.pub"), **kw)


def check(pki: Path, root: Path, bundle: bytes, **kw) -> str:
    return signing.check_model(sig_config(pki, **kw), lock_entries(root, skip=("model.sig",)),
                               bundle, "models.m")


def check_refused(pki: Path, root: Path, bundle: bytes, **kw) -> str:
    with pytest.raises(SignatureError) as e:
        check(pki, root, bundle, **kw)
    return str(e.value)


def transformers_layout(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "pytorch_model.bin").write_bytes(os.urandom(4096))
    return d


@pytest.mark.integration
def test_an_unsigned_link_into_github_is_refused_like_model_signing(tmp_path, ms, pki):
    """The review's proof: a signature over config.json + pytorch_model.bin; the lock adds
    unsigned weights under .github/ and a link to them at the name transformers loads."""
    model = transformers_layout(tmp_path / "m")
    ms("sign", "key", model, "--private_key", pki / "p256.key",
       "--signature", model / "model.sig")
    bundle = (model / "model.sig").read_bytes()
    assert check(pki, model, bundle).startswith("key:")
    (model / ".github").mkdir()
    (model / ".github" / "w.safetensors").write_bytes(b"unsigned weights")
    (model / "model.safetensors").symlink_to(".github/w.safetensors")
    msg = check_refused(pki, model, bundle)
    assert "model.safetensors is a symbolic link" in msg and "--allow_symlinks" in msg
    # the reference verifier refuses the same directory
    p = ms("verify", "key", model, "--signature", model / "model.sig", "--public_key",
           pki / "p256.pub", ok=False)
    assert p.returncode != 0 and "is a symlink" in p.stdout + p.stderr
    # and with --allow_symlinks it finds the link unsigned, as reconcile does for a
    # signature that allows links
    ms("sign", "key", model, "--private_key", pki / "p256.key", "--allow_symlinks",
       "--signature", tmp_path / "links.sig")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to("pytorch_model.bin")
    msg = check_refused(pki, model, (tmp_path / "links.sig").read_bytes())
    assert "digest differs: model.safetensors" in msg


@pytest.mark.integration
def test_model_signing_signature_over_in_tree_links_is_accepted(tmp_path, ms, pki):
    """`model_signing sign key --allow_symlinks` lists each link under its own name with
    the digest of what it points at; the lock holds the link and its target."""
    model = make_model(tmp_path / "m")
    (model / "config-alias.json").symlink_to("config.json")
    (model / "sub" / "weights-link.bin").symlink_to("../weights.bin")
    ms("sign", "key", model, "--private_key", pki / "p256.key", "--allow_symlinks",
       "--signature", model / "model.sig")
    bundle = (model / "model.sig").read_bytes()
    assert check(pki, model, bundle).startswith("key:")
    # a link re-pointed after signing is refused, naming it
    (model / "config-alias.json").unlink()
    (model / "config-alias.json").symlink_to("sub/tokenizer.json")
    assert "digest differs: config-alias.json" in check_refused(pki, model, bundle)
    # a link that leaves the model, or leads nowhere, is refused for what it is
    (model / "config-alias.json").unlink()
    (model / "config-alias.json").symlink_to("../outside.json")
    assert "config-alias.json points outside the model" in check_refused(pki, model, bundle)
    (model / "config-alias.json").unlink()
    (model / "config-alias.json").symlink_to("sub")
    assert "config-alias.json is a link to a directory" in check_refused(pki, model, bundle)


@pytest.mark.integration
def test_reconcile_sign_with_links_passes_model_signing_verify(tmp_path, ms, pki):
    """`reconcile sign` of a tree (or a lock) with links writes the --allow_symlinks form."""
    from reconcile.cli import main

    model = make_model(tmp_path / "m")
    (model / "config-alias.json").symlink_to("config.json")
    (model / "sub" / "weights-link.bin").symlink_to("../weights.bin")
    code = main(["sign", str(model), "--private-key", str(pki / "p256.key"), "-o",
                 str(model / "model.sig")])
    assert code == 0
    p = ms("verify", "key", model, "--signature", model / "model.sig", "--public_key",
           pki / "p256.pub", "--allow_symlinks", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert check(pki, model, (model / "model.sig").read_bytes()).startswith("key:")
    # signing.sign from lock entries (what `reconcile sign KEY` does) writes the same
    ours = signing.sign_entries(lock_entries(model, skip=("model.sig",)),
                                private_key_pem=pem(pki, "p256.key"), model_name="m")
    (tmp_path / "ours.sig").write_bytes(ours)
    p = ms("verify", "key", model, "--signature", tmp_path / "ours.sig", "--public_key",
           pki / "p256.pub", "--allow_symlinks", "--ignore-paths", model / "model.sig", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.integration
def test_ignore_globs_match_files_within_one_segment(tmp_path, ms, pki):
    model = transformers_layout(tmp_path / "m")
    ms("sign", "key", model, "--private_key", pki / "p256.key",
       "--signature", model / "model.sig")
    bundle = (model / "model.sig").read_bytes()
    (model / "README.md").write_text("unsigned card")
    assert check(pki, model, bundle, ignore=("*.md",))
    # a directory named like the glob is not hidden, nor is what is under it
    (model / "x.md").mkdir()
    (model / "x.md" / "model.safetensors").write_bytes(b"unsigned")
    assert "x.md/model.safetensors" in check_refused(pki, model, bundle, ignore=("*.md",))
    # only a trailing / names a directory
    assert check(pki, model, bundle, ignore=("*.md", "x.md/"))
    # `*` stays within one segment: `docs/*` is not `docs/deep/w.bin`
    (model / "docs" / "deep").mkdir(parents=True)
    (model / "docs" / "deep" / "w.bin").write_bytes(b"unsigned")
    msg = check_refused(pki, model, bundle, ignore=("*.md", "x.md/", "docs/*"))
    assert "docs/deep/w.bin" in msg
    assert check(pki, model, bundle, ignore=("*.md", "x.md/", "docs/**"))


@pytest.mark.integration
def test_an_empty_unsigned_directory_is_accounted_for(tmp_path, ms, pki):
    model = transformers_layout(tmp_path / "m")
    ms("sign", "key", model, "--private_key", pki / "p256.key",
       "--signature", model / "model.sig")
    bundle = (model / "model.sig").read_bytes()
    (model / "model.safetensors").mkdir()
    assert "model.safetensors/ (an empty directory" in check_refused(pki, model, bundle)
    assert check(pki, model, bundle, ignore=("model.safetensors/",))


# --- property: ignore globs and links -------------------------------------------------------

_plain = st.text("abcxyz.-_", min_size=1, max_size=5).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_plain, min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(parts=_paths, stars=st.integers(1, 5))
def test_property_star_stays_within_one_segment(parts, stars):
    path = "/".join(parts)
    assert signing.glob_match("/".join(["*"] * stars), path) == (stars == len(parts))
    assert signing.glob_match("**", path)
    assert signing.glob_match("**/" + parts[-1], path)
    assert signing.glob_match(path, path) and not signing.glob_match(path + "x", path)
    # a file glob never hides a directory's contents; the same glob with / does
    if len(parts) > 1:
        head = "/".join(parts[:-1])
        assert not signing.ignored(path, [head])
        assert signing.ignored(path, [head + "/"])
        assert signing.ignored(path, ["*/" * (len(parts) - 1)])
    assert not signing.ignored(path, [path + "/"])  # a file is no directory
    assert signing.ignored(path, [path + "/"], is_dir=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(_names, _digest, min_size=1, max_size=8), data=st.data())
def test_property_links_round_trip_and_a_repointed_link_is_refused(files, data):
    files = {n: d for n, d in files.items() if not any(o.startswith(n + "/") for o in files)}
    dirs = {"/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
    names = sorted(files)
    links = {}
    for i in range(data.draw(st.integers(1, 3))):
        name = f"link{i}"
        if name in files or name in dirs:
            continue
        links[name] = data.draw(st.sampled_from(names))  # relative to the root
    bundle = signing.sign(files, links=links, private_key_pem=P256_PEM, model_name="m",
                          ignore_git_paths=False)
    assert signing.verify(bundle, files, links=links, public_key_pem=P256_PUB).kind == "key"
    # unsigned: a link the signature does not list, or one that now leads elsewhere
    victim = sorted(links)[0]
    other = [n for n in names if files[n] != files[links[victim]]]
    if other:
        moved = dict(links, **{victim: data.draw(st.sampled_from(other))})
        assert f"digest differs: {victim}" in refused(bundle, files, links=moved,
                                                       public_key_pem=P256_PUB)
    plain = signing.sign(files, private_key_pem=P256_PEM, model_name="m",
                         ignore_git_paths=False)
    assert "--allow_symlinks" in refused(plain, files, links=links, public_key_pem=P256_PUB)


@pytest.mark.integration
def test_a_certificate_expired_since_signing_is_refused_though_model_signing_accepts(
        signed, pki, ms, tmp_path):
    """A deliberate difference: model_signing checks the chain at the signing
    certificate's notBefore (there is no transparency-log timestamp to say when the
    signature was made), so an expired certificate verifies forever. Without a log,
    "valid now" is the reading that lets a revoked-by-expiry key stop working."""
    now = datetime.now(UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - timedelta(days=30)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old Signer")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(days=10)).not_valid_after(now - timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]),
                           False)
            .sign(ca_key, hashes.SHA256()))
    for name, cert in (("ca.pem", ca), ("old.pem", leaf)):
        (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ms("sign", "certificate", signed["model"], "--private_key", tmp_path / "old.key",
       "--signing_certificate", tmp_path / "old.pem", "--certificate_chain", tmp_path / "ca.pem",
       "--signature", tmp_path / "old.sig")
    p = ms("verify", "certificate", signed["model"], "--signature", tmp_path / "old.sig",
           "--certificate_chain", tmp_path / "ca.pem", ok=False)
    assert p.returncode == 0, p.stdout + p.stderr  # theirs: valid when it was issued
    msg = refused((tmp_path / "old.sig").read_bytes(), signed["files"],
                  certificate_chain_pems=[(tmp_path / "ca.pem").read_bytes()])
    assert "certificate 'CN=Old Signer' expired on " in msg
