"""`reconcile add` / `reconcile remove`: edit models.toml as a person would, keeping every
other byte (comments, order, spacing) as it was.

The file is the user's, not ours: a declaration is appended as the text one would type,
and removing it cuts out exactly that entry, so `add` then `remove` gives the file back
byte for byte. tomlkit (lossless TOML) locates entries; tomllib checks the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from .config import NAME_RE
from .errors import UsageError

_HF_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FORMS = ("org/name, hf://org/name[@rev], https://huggingface.co/org/name, https://…/file,"
          " s3://bucket/prefix/, ollama:name[:tag], oci://registry/repo:tag,"
          " models:/name/version (MLflow), git+https://host/repo@rev (Git LFS)")


@dataclass
class Declaration:
    """What `add` writes: models.<key>.source.<source_type> = {options}."""

    key: str
    source_type: str
    options: dict[str, Any] = field(default_factory=dict)


def declaration(spec: str, *, name: str | None = None, files: list[str] | None = None,
                revision: str | None = None, hf_endpoint: str | None = None,
                mlflow_uri: str | None = None, s3_endpoint: str | None = None) -> Declaration:
    """Turn a SOURCE as users paste it (a repo id, a browser URL, an s3:// URI …) into the
    declaration models.toml takes. Raises UsageError naming the forms understood.

    What the environment resolved the SOURCE against (MLFLOW_TRACKING_URI, an S3-compatible
    AWS_ENDPOINT_URL) is written too, as typed: the manifest must mean the same on a
    teammate's machine, in CI and in the pre-commit hook, where the variable is not set."""
    spec = spec.strip()
    decl = _parse(spec, hf_endpoint)
    if decl.source_type == "mlflow" and mlflow_uri:
        decl.options = {"trackingUri": mlflow_uri, **decl.options}
    if decl.source_type == "s3" and s3_endpoint:
        decl.options["endpoint"] = s3_endpoint
    if revision is not None:
        slot = {"huggingface": "revision", "git-lfs": "rev", "ollama": "tag"}.get(decl.source_type)
        if slot is None:
            raise UsageError(f"--revision does not apply to a {decl.source_type} source ({spec})")
        decl.options[slot] = revision
    if files:
        if decl.source_type != "huggingface":
            raise UsageError(f"--files applies to Hugging Face repos, not a {decl.source_type}"
                             f" source ({spec})")
        decl.options["files"] = list(files)
    if decl.source_type == "git-lfs" and not decl.options.get("rev"):
        raise UsageError(f"{spec}: a git source needs a revision",
                         hint="append @branch, @tag or @commit, or pass --revision")
    decl.key = name or decl.key
    if not NAME_RE.match(decl.key):
        raise UsageError(f"{decl.key!r} is not a valid model key (letters, digits, . _ + -,"
                         " starting with a letter or digit)", hint="choose one with --name")
    return decl


def _parse(spec: str, hf_endpoint: str | None) -> Declaration:
    if _REPO_ID.match(spec):
        return _hf(spec, None)
    if spec.startswith("hf://"):
        repo, _, rev = spec[5:].strip("/").partition("@")
        return _hf(repo, rev or None, spec)
    if spec.startswith("ollama:"):
        model, _, tag = spec[len("ollama:"):].lstrip("/").partition(":")
        if not model:
            raise UsageError(f"{spec}: expected ollama:name[:tag], e.g. ollama:llama3.2:1b")
        opts = {"model": model} | ({"tag": tag} if tag else {})
        return Declaration(_key_of(model), "ollama", opts)
    if spec.startswith(("oci://", "oci+http://", "oci+https://")):
        # oci+http(s)://host/repo:tag (the team cache's form) names the scheme to use
        ref = spec[len("oci+"):] if spec.startswith("oci+") else spec[len("oci://"):]
        repo = ref.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
        return Declaration(_key_of(repo), "oci", {"ref": ref})
    if spec.startswith("models:/"):
        return _mlflow(spec)
    if spec.startswith("git+"):
        url, rev = spec[4:], ""
        if "@" in url.rsplit("/", 1)[-1]:  # …/repo@v1.0, not user@host
            url, _, rev = url.rpartition("@")
        return Declaration(_key_of(url.rstrip("/").removesuffix(".git")), "git-lfs",
                           {"url": url} | ({"rev": rev} if rev else {}))
    parts = urlsplit(spec)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise UsageError(f"{spec}: expected s3://bucket/prefix/")
        prefix = parts.path.lstrip("/")
        opts = {"bucket": parts.netloc} | ({"prefix": prefix} if prefix else {})
        return Declaration(_key_of(prefix.rstrip("/") or parts.netloc), "s3", opts)
    if parts.scheme in ("http", "https") and parts.netloc:
        endpoint = urlsplit(hf_endpoint).netloc if hf_endpoint else None
        if parts.hostname in _HF_HOSTS or (endpoint and parts.netloc == endpoint):
            return _hf_url(spec, parts.path)
        leaf = PurePosixPath(unquote(parts.path)).name
        if not leaf:
            raise UsageError(f"{spec}: the URL names no file", hint="give the file's own URL")
        return Declaration(_key_of(PurePosixPath(leaf).stem or leaf), "url", {"url": spec})
    raise UsageError(f"{spec!r} is not a source reconcile knows", hint=f"one of: {_FORMS}")


def _hf(repo: str, rev: str | None, spec: str | None = None) -> Declaration:
    if not _REPO_ID.match(repo):
        raise UsageError(f"{spec or repo}: {repo!r} is not a Hub repo id ('org/name')")
    return Declaration(_key_of(repo.split("/")[-1]), "huggingface",
                       {"repo": repo} | ({"revision": rev} if rev else {}))


def _hf_url(spec: str, path: str) -> Declaration:
    """https://huggingface.co/org/name, …/tree/<rev>, …/blob/<rev>/<file>: the repo and
    revision a browser's address bar shows."""
    parts = [unquote(p) for p in path.split("/") if p]
    if parts[:1] in (["datasets"], ["spaces"]):
        kind = parts.pop(0)[:-1]
        decl = _hf("/".join(parts[:2]), None, spec)
        decl.options["repoType"] = kind
    else:
        decl = _hf("/".join(parts[:2]), None, spec)
    if len(parts) >= 4 and parts[2] in ("tree", "blob", "resolve"):
        decl.options["revision"] = parts[3]
    return decl


def _mlflow(spec: str) -> Declaration:
    """models:/name/3 or models:/name@alias, MLflow's own URIs (the tracking server comes
    from MLFLOW_TRACKING_URI, as MLflow's client takes it)."""
    rest = spec[len("models:/"):].strip("/")
    if re.fullmatch(r"m-[0-9a-f]+", rest):
        raise UsageError(f"{spec}: an MLflow 3 logged model, not a registered model version;"
                         " reconcile pins registered versions",
                         hint=f"register it (`mlflow.register_model(\"{spec}\", \"NAME\")`),"
                         " then add models:/NAME/VERSION")
    if "@" in rest:
        model, _, alias = rest.partition("@")
        opts = {"modelName": model, "alias": alias}
    else:
        model, _, version = rest.rpartition("/")
        if not model or not version:
            raise UsageError(f"{spec}: expected models:/name/version or models:/name@alias")
        latest = version.lower() == "latest"  # MLflow's newest version, any stage
        kind = "version" if version.isdigit() or latest else "stage"
        opts = {"modelName": model, kind: "latest" if latest else version}
    return Declaration(_key_of(model), "mlflow", opts)


def _key_of(text: str) -> str:
    """A model key from a repo or file name: its last part, with characters keys do not
    take replaced."""
    leaf = text.rstrip("/").rsplit("/", 1)[-1]
    key = re.sub(r"[^A-Za-z0-9._+-]", "-", leaf).lstrip("._+-")
    return key[:128] or "model"


# --- the text -------------------------------------------------------------------------

def render(decl: Declaration) -> str:
    """The table as a person writes it: a header, then the source as one dotted line."""
    import tomlkit

    body = ", ".join(f"{_toml_key(k)} = {tomlkit.item(v).as_string()}"
                     for k, v in decl.options.items())
    return f"[models.{_toml_key(decl.key)}]\nsource.{decl.source_type} = {{ {body} }}\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def add_text(text: str, decl: Declaration) -> str:
    """models.toml's text with ``decl`` appended after a blank line. Refuses a key that is
    declared already, and checks that the result parses and changes only that model."""
    import tomllib

    before = _parse_toml(text)
    if decl.key in before.get("models", {}):
        raise UsageError(f"models.{decl.key} already exists in models.toml",
                         hint="pick another key with --name, or `reconcile remove` it first")
    sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    entry = render(decl)
    if text and not text.endswith("\n"):  # the file's style: no newline after the last line
        entry = entry.rstrip("\n")
    out = text + sep + entry
    try:
        after = tomllib.loads(out)
    except tomllib.TOMLDecodeError as e:  # e.g. `models = { … }` as one inline table
        raise UsageError(f"cannot append [models.{decl.key}] to models.toml: {e}",
                         hint="add the declaration by hand") from None
    expected = before.get("models", {}) | {decl.key: {"source": {decl.source_type: decl.options}}}
    if after.get("models") != expected or _without(after, "models") != _without(before, "models"):
        raise UsageError(f"appending [models.{decl.key}] would change other entries of"
                         " models.toml", hint="add the declaration by hand")
    return out


def remove_text(text: str, key: str) -> str:
    """models.toml's text without models.<key> (its table, sub-tables or inline entry);
    everything else stays byte for byte."""
    import tomlkit

    models = _parse_toml(text).get("models", {})
    if key not in models:
        known = ", ".join(sorted(models)) or "none"
        raise UsageError(f"no model named {key!r} in models.toml (models: {known})")
    doc = tomlkit.parse(text)
    del doc["models"][key]
    out = tomlkit.dumps(doc)
    if text.startswith(out) or text.startswith(out.rstrip("\n")):
        out = _without_separator(text[:len(out)] if text.startswith(out) else out,
                                 final_newline=text.endswith("\n"))
    after = _parse_toml(out)
    if after.get("models", {}) != {k: v for k, v in models.items() if k != key}:
        raise UsageError(f"cannot remove models.{key} cleanly from models.toml",
                         hint="remove the declaration by hand")
    return out


def _without_separator(before: str, *, final_newline: bool) -> str:
    """The text before the last entry, without the separator `add_text` put there: one
    newline when the file ended with one (the entry kept its own), two when it did not
    (the entry's final newline was dropped). So `add` then `remove` is the identity even
    with trailing blank lines or no final newline; a separator add did not write (a
    hand-made entry after a single newline) leaves that line ending alone."""
    if final_newline:
        return before[:-1] if before.endswith("\n\n") else before
    return before[:-2] if before.endswith("\n\n") else before.rstrip("\n")


def _parse_toml(text: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"models.toml is not valid TOML: {e}",
                         hint="fix it first; `reconcile check` names the problem") from None


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}
