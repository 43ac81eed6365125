"""`source.oci` against Debian's docker-registry: a CNCF ModelPack artifact (raw, tar,
tar+gzip, tar+zstd layers), a KitOps ModelKit and a Docker model artifact, pushed here
with the registry protocol exactly as their tools push them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from reconcile.lockfile import read_lock
from tests.servers import Pusher, docker_registry, registry_binary
from tests.test_formats import gguf_bytes

pytestmark = pytest.mark.integration
if registry_binary() is None:
    pytest.skip("needs docker-registry (apt-get install docker-registry)",
                allow_module_level=True)
zstandard = pytest.importorskip("zstandard")

OCI = "application/vnd.oci.image.manifest.v1+json"
MP = "application/vnd.cncf.model."
WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(1000)  # an empty safetensors
CONFIG = b'{"model_type": "bert", "hidden_size": 8}'
GGUF = gguf_bytes()


def tar_of(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


DOCS = {"docs/README.md": b"# bert\n", "docs/run.sh": b"#!/bin/sh\necho run\n"}
CODE = {"code/infer.py": b"print('hi')\n"}
TOK = {"tok/vocab.json": b'{"[PAD]": 0}'}


def push(pusher: Pusher, repo: str, tag: str, config: tuple[str, bytes],
         layers: list[tuple[str, bytes, dict]], artifact: str | None = None) -> str:
    doc = {"schemaVersion": 2, "mediaType": OCI,
           "config": {"mediaType": config[0], **pusher.blob(repo, config[1])},
           "layers": [{"mediaType": m, **pusher.blob(repo, data),
                       **({"annotations": notes} if notes else {})}
                      for m, data, notes in layers]}
    if artifact:
        doc["artifactType"] = artifact
    return pusher.manifest(repo, tag, doc, media=OCI)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with docker_registry(tmp_path_factory.mktemp("registry")) as url:
        p = Pusher(url)
        fp = "org.cncf.model.filepath"
        push(p, "models/bert", "v1", (MP + "config.v1+json", b'{"descriptor": {"name": "bert"}}'),
             [(MP + "weight.v1.raw", WEIGHTS, {fp: "model.safetensors"}),
              (MP + "weight.config.v1.raw", CONFIG, {fp: "config.json"}),
              (MP + "doc.v1.tar", tar_of(DOCS), {fp: "docs"}),
              (MP + "code.v1.tar+gzip", gzip.compress(tar_of(CODE)), {fp: "code"}),
              (MP + "weight.config.v1.tar+zstd",
               zstandard.ZstdCompressor().compress(tar_of(TOK)), {fp: "tok"})],
             artifact=MP + "manifest.v1+json")
        push(p, "models/raw", "v1", (MP + "config.v1+json", b"{}"),
             [(MP + "weight.v1.raw", WEIGHTS, {fp: "model.safetensors"})],
             artifact=MP + "manifest.v1+json")
        kitfile = json.dumps({"manifestVersion": "1.0", "package": {"name": "tiny"},
                              "model": {"path": "model/model.gguf"}}).encode()
        kit = "application/vnd.kitops.modelkit."
        push(p, "kit/tiny", "latest", (kit + "config.v1+json", kitfile),
             [(kit + "model.v1.tar", tar_of({"model/model.gguf": GGUF}), {}),
              (kit + "docs.v1.tar+gzip", gzip.compress(tar_of({"README.md": b"kit\n"})), {})])
        ai = "application/vnd.docker.ai."
        push(p, "ai/smollm", "latest", (ai + "model.config.v0.1+json", b'{"format": "gguf"}'),
             [(ai + "gguf.v3", GGUF, {}), (ai + "license", b"MIT\n", {})])
        push(p, "images/app", "1.0", ("application/vnd.oci.image.config.v1+json", b"{}"),
             [("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress(tar_of(CODE)), {})])
        push(p, "models/evil", "v1", (MP + "config.v1+json", b"{}"),
             [(MP + "doc.v1.tar", tar_of({"../../escape.txt": b"x"}), {fp: "docs"})],
             artifact=MP + "manifest.v1+json")
        git = b'[core]\n\tfsmonitor = "touch /tmp/reconcile-pwned-oci"\n'
        push(p, "models/repo", "v1", (MP + "config.v1+json", b"{}"),
             [(MP + "weight.v1.raw", WEIGHTS, {fp: "model.safetensors"}),
              (MP + "weight.config.v1.raw", b"ref: refs/heads/main\n", {fp: ".git/HEAD"}),
              (MP + "weight.config.v1.raw", git, {fp: ".git/config"})],
             artifact=MP + "manifest.v1+json")
        push(p, "models/repo-tar", "v1", (MP + "config.v1+json", b"{}"),
             [(MP + "doc.v1.tar", tar_of({"docs/.Git/config": git}), {fp: "docs"})],
             artifact=MP + "manifest.v1+json")
        yield url


def declare(project, ref: str, extra: str = "") -> None:
    project.write(f'[models.m]\nsource.oci = {{ ref = "{ref}" }}\n'
                  'validation.enable = false\n' + extra)


def installed(project):
    from reconcile.store import Store

    assert project.run("path", "m").code == 0
    return Store(project.store).model_path(read_lock(project.lock).models["m"])


def test_modelpack_raw_tar_gzip_and_zstd_layers(project, registry):
    ref = registry.replace("http://", "http://") + "/models/bert:v1"
    declare(project, ref)
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["m"]
    assert m.pin["format"] == "modelpack" and m.pin["digest"].startswith("sha256:")
    files = {f.path: f for f in m.files}
    assert set(files) == {"model.safetensors", "config.json", "docs/README.md", "docs/run.sh",
                          "code/infer.py", "tok/vocab.json"}
    assert files["model.safetensors"].sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert files["model.safetensors"].pin is None  # a raw layer: its digest is the file's
    assert files["docs/run.sh"].executable and files["docs/README.md"].pin["layer"]
    r = project.run("apply")
    assert r.code == 0, r.err
    root = installed(project)
    for path, data in {**DOCS, **CODE, **TOK, "model.safetensors": WEIGHTS,
                       "config.json": CONFIG}.items():
        assert (root / path).read_bytes() == data, path


def test_raw_layers_are_not_downloaded_at_lock(project, registry):
    declare(project, registry + "/models/raw:v1")
    assert project.run("lock").code == 0
    assert not [p for p in (project.store / "objects").rglob("*") if p.is_file()]
    assert project.run("apply").code == 0
    assert (installed(project) / "model.safetensors").read_bytes() == WEIGHTS


def test_apply_on_a_fresh_machine_unpacks_tar_layers_from_the_registry(
        project, registry, tmp_path, monkeypatch):
    declare(project, registry + "/models/bert:v1")
    assert project.run("lock").code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "fresh"))
    r = project.run("apply", "--locked")
    assert r.code == 0, r.err
    from reconcile.store import Store

    root = Store(tmp_path / "fresh").model_path(read_lock(project.lock).models["m"])
    assert (root / "tok/vocab.json").read_bytes() == TOK["tok/vocab.json"]
    assert (root / "code/infer.py").read_bytes() == CODE["code/infer.py"]


def test_kitops_modelkit_and_docker_model_artifact(project, registry):
    declare(project, registry + "/kit/tiny")
    r = project.run("lock")
    assert r.code == 0, r.err
    assert read_lock(project.lock).models["m"].pin["format"] == "kitops"
    assert project.run("apply").code == 0
    root = installed(project)
    assert (root / "model/model.gguf").read_bytes() == GGUF
    assert (root / "README.md").read_bytes() == b"kit\n"
    declare(project, registry + "/ai/smollm:latest")
    r = project.run("lock")
    assert r.code == 0, r.err
    assert project.run("apply").code == 0
    root = installed(project)
    assert (root / "model.gguf").read_bytes() == GGUF and (root / "LICENSE").read_bytes() == b"MIT\n"


def test_refusals_name_what_was_found(project, registry):
    declare(project, registry + "/images/app:1.0")
    r = project.run("lock")
    assert r.code == 1 and "not a model artifact" in r.err
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in r.err, r.err
    declare(project, registry + "/models/evil:v1")
    r = project.run("lock")
    assert r.code == 1 and "escape.txt" in r.err, r.err
    assert not list(project.dir.parent.rglob("escape.txt"))
    declare(project, registry + "/models/bert:nope")
    r = project.run("lock")
    assert r.code == 1 and "no such model or tag" in r.err, r.err
    declare(project, "bert:v1")
    r = project.run("lock")
    assert r.code == 2 and "models.m.source.oci.ref" in r.err, r.err


def test_a_digest_reference_and_a_hand_edited_lock(project, registry):
    declare(project, registry + "/models/raw:v1")
    assert project.run("lock").code == 0
    digest = read_lock(project.lock).models["m"].pin["digest"]
    declare(project, registry + f"/models/raw@{digest}")
    assert project.run("lock").code == 0
    text = project.lock.read_text()
    project.lock.write_text(text.replace(digest, "sha256:" + "0" * 64))
    r = project.run("apply", "--locked")
    assert r.code != 0 and "models.lock" in r.err, r.err


@pytest.mark.parametrize("repo", ["models/repo", "models/repo-tar"])
def test_a_model_cannot_plant_a_git_repository(project, registry, tmp_path, repo):
    """Raw layers named .git/HEAD and .git/config, or a tar layer with a .Git/ member:
    the lock is refused naming the path; nothing is installed (#31 case 4)."""
    declare(project, f"{registry}/{repo}:v1")
    r = project.run("apply")
    assert r.code != 0 and ".git" in r.err.lower() and "not allowed" in r.err, r.err
    assert "Traceback" not in r.err and not project.lock.exists()
    assert not list(project.store.glob("models/*")), "no model tree was made"


MP_ART = MP + "manifest.v1+json"
FP = "org.cncf.model.filepath"


@pytest.mark.parametrize("delta", [-7, 7])
def test_a_descriptor_size_that_differs_from_its_blob_is_said_so(project, registry, delta):
    """The blob's bytes hash to its digest; only the size the manifest states is wrong:
    say that, and do not advise `lock --upgrade` (it would relock the same size)."""
    p = Pusher(registry)
    config = {"mediaType": MP + "config.v1+json", **p.blob("models/sized", b"{}")}
    blob = p.blob("models/sized", WEIGHTS)
    tag = f"d{delta + 10}"
    p.manifest("models/sized", tag, {
        "schemaVersion": 2, "mediaType": OCI, "artifactType": MP_ART, "config": config,
        "layers": [{"mediaType": MP + "weight.v1.raw", "digest": blob["digest"],
                    "size": blob["size"] + delta, "annotations": {FP: "model.safetensors"}}]},
        media=OCI)
    declare(project, f"{registry}/models/sized:{tag}")
    r = project.run("apply")
    assert r.code == 1, r.err
    assert "size mismatch" in r.err and str(blob["size"] + delta) in r.err, r.err
    assert str(blob["size"]) in r.err and "giving up" not in r.err, r.err
    assert "sha256 mismatch" not in r.err and "lock --upgrade" not in r.err, r.err


def test_kitops_raw_layers_as_current_kit_pack_makes_them(project, registry):
    """`kit pack` (kitops ≥ 1.x) stores files as `.raw` layers titled by path."""
    p = Pusher(registry)
    kit = "application/vnd.kitops.modelkit."
    kitfile = json.dumps({"manifestVersion": "1.0", "package": {"name": "raw"},
                          "model": {"path": "model.gguf"}}).encode()
    title = "org.opencontainers.image.title"
    push(p, "kit/raw", "v1", (kit + "config.v1+json", kitfile),
         [(kit + "model.v1.raw", GGUF, {title: "model.gguf"}),
          (kit + "docs.v1.raw", b"kit\n", {title: "README.md"}),
          (kit + "mcpb.v1.raw", b"{}", {title: "server.mcpb"})])
    declare(project, registry + "/kit/raw:v1")
    r = project.run("apply")
    assert r.code == 0, r.err
    root = installed(project)
    assert (root / "model.gguf").read_bytes() == GGUF
    assert (root / "README.md").read_bytes() == b"kit\n"


def test_modelpack_raw_layers_keep_their_file_mode(project, registry):
    """`org.cncf.model.file.metadata+json` on a raw layer carries the file's mode:
    `run.sh` with mode 493 (0755) lands executable, as it would from a tar layer."""
    p = Pusher(registry)
    meta = "org.cncf.model.file.metadata+json"
    script = b"#!/bin/sh\necho run\n"
    push(p, "models/mode", "v1", (MP + "config.v1+json", b"{}"),
         [(MP + "weight.v1.raw", WEIGHTS, {FP: "model.safetensors",
                                           meta: json.dumps({"name": "model.safetensors",
                                                             "mode": 420})}),
          (MP + "code.v1.raw", script, {FP: "run.sh",
                                        meta: json.dumps({"name": "run.sh", "mode": 493,
                                                          "size": len(script)})})],
         artifact=MP_ART)
    declare(project, registry + "/models/mode:v1")
    r = project.run("apply")
    assert r.code == 0, r.err
    files = {f.path: f for f in read_lock(project.lock).models["m"].files}
    assert files["run.sh"].executable and not files["model.safetensors"].executable
    root = installed(project)
    assert (root / "run.sh").stat().st_mode & 0o111
    assert not (root / "model.safetensors").stat().st_mode & 0o111
