"""reconcile.ollama_manifest: what it composes, written into a models directory the way
the ollama target will write it (the GGUF a hard link to the store object), read back
by tests/ollama_reader.py as ollama's GetModel reads it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.errors import ConfigError, LockError
from reconcile.gguf import read_gguf
from reconcile.ollama_manifest import (
    LICENSE,
    MODEL,
    PARAMS,
    SYSTEM,
    TEMPLATE,
    Image,
    Settings,
    compose,
    go_json,
    human_number,
    manifest_path,
    ollama_name,
)
from tests import ollama_reader
from tests.ollama_reader import OllamaWouldFail, list_models, read_model
from tests.test_gguf import JINJA, make_gguf

GO = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"


def install(models: Path, name: str, store_object: Path, image: Image) -> None:
    """What the ollama target will do: the GGUF a hard link, the small blobs written,
    the manifest last."""
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    model = image.layers[0]
    os.link(store_object, models / "blobs" / f"sha256-{model.sha256}")
    for sha, data in image.small_blobs().items():
        (models / "blobs" / f"sha256-{sha}").write_bytes(data)
    path = manifest_path(models, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image.manifest)


@pytest.fixture
def store_gguf(tmp_path):
    """A GGUF as a store object: named by its sha256, read-only."""
    src = make_gguf(tmp_path / "src.gguf")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    obj = tmp_path / "store" / sha
    obj.parent.mkdir()
    src.rename(obj)
    obj.chmod(0o444)
    return obj


def test_a_gguf_from_the_store_is_a_model_ollama_reads_with_one_copy(tmp_path, store_gguf):
    models = tmp_path / "ollama"
    sha, size = store_gguf.name, store_gguf.stat().st_size
    image = compose(sha, size, read_gguf(store_gguf), Settings(
        system="You are terse.", parameters={"num_ctx": 8192, "stop": ["<|end|>"],
                                             "temperature": 0.2}))
    install(models, "team/tiny:q4", store_gguf, image)

    m = read_model(models, "team/tiny:q4")
    assert m.name == "registry.ollama.ai/team/tiny/q4" and m.digest == image.digest[7:]
    assert os.path.samefile(m.model_path, store_gguf)  # a hard link: one copy on disk
    assert m.config["model_format"] == "gguf" and m.config["model_families"] == ["qwen2"]
    assert (m.config["model_family"], m.config["file_type"]) == ("qwen2", "Q4_K_M")
    assert m.config["model_type"] == "520"  # 64*8 + 8 elements
    assert m.config["rootfs"]["diff_ids"] == [d["digest"] for d in m.manifest["layers"]]
    assert m.template is None and m.chat_template == JINJA  # ollama renders the GGUF's
    assert m.system == "You are terse."
    assert m.options == {"num_ctx": 8192, "stop": ["<|end|>"], "temperature": 0.2}
    assert m.licenses == ["apache-2.0"]  # the GGUF's general.license
    assert [d["mediaType"] for d in m.manifest["layers"]] == [MODEL, SYSTEM, LICENSE, PARAMS]
    assert list_models(models) == {"registry.ollama.ai/team/tiny/q4": image.digest[7:]}


def test_a_go_template_and_licence_texts_from_models_toml(tmp_path, store_gguf):
    models = tmp_path / "ollama"
    image = compose(store_gguf.name, store_gguf.stat().st_size, read_gguf(store_gguf),
                    Settings(template=GO, license=("MIT License\n", "Terms & <notes>")))
    install(models, "tiny", store_gguf, image)
    m = read_model(models, "tiny")
    assert m.template == GO and m.licenses == ["MIT License\n", "Terms & <notes>"]
    assert [d["mediaType"] for d in m.manifest["layers"]] == [MODEL, TEMPLATE, LICENSE, LICENSE]
    assert m.options is None and m.system is None


def test_the_reader_catches_what_ollama_would_trip_over(tmp_path, store_gguf):
    """The oracle is not vacuous: a missing or altered blob fails it."""
    models = tmp_path / "ollama"
    image = compose(store_gguf.name, store_gguf.stat().st_size, read_gguf(store_gguf),
                    Settings(system="hi"))
    install(models, "tiny", store_gguf, image)
    system = next(b for b in image.layers if b.media_type == SYSTEM)
    (models / "blobs" / f"sha256-{system.sha256}").write_bytes(b"ho")
    with pytest.raises(OllamaWouldFail, match="does not hold"):
        read_model(models, "tiny")
    (models / "blobs" / f"sha256-{system.sha256}").unlink()
    with pytest.raises(OllamaWouldFail, match="missing"):
        read_model(models, "tiny")
    with pytest.raises(OllamaWouldFail, match="not found"):
        read_model(models, "other")


def test_without_a_chat_template_or_licence_there_is_only_the_model(tmp_path):
    path = make_gguf(tmp_path / "m.gguf", arch="llama", ftype=0, template=None)
    header = read_gguf(path)
    header.metadata.pop("general.license")
    image = compose("b" * 64, 10, header)
    doc = json.loads(image.manifest)
    assert [d["mediaType"] for d in doc["layers"]] == [MODEL]
    assert json.loads(image.config.data)["file_type"] == "F32"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "a" * 63, None, "sha256:" + "a" * 64])
def test_a_forged_lock_digest_is_refused(tmp_path, bad):
    header = read_gguf(make_gguf(tmp_path / "m.gguf"))
    with pytest.raises(LockError, match="64-hex"):
        compose(bad, 10, header)
    with pytest.raises(LockError, match="64-hex"):
        compose("a" * 64, -1, header)


@pytest.mark.parametrize("settings_,key", [
    (Settings(template=JINJA), "template"),
    (Settings(template="{{ .Prompt }"), "template"),
    (Settings(template="{{ messages[0]['content'] }}"), "template"),
    (Settings(parameters={"stop": [{"x": 1}]}), "parameters.stop"),
    (Settings(parameters={"temperature": float("nan")}), "parameters.temperature"),
    (Settings(system=3), "system"),  # type: ignore[arg-type]
])
def test_settings_ollama_could_not_use_are_config_errors(tmp_path, settings_, key):
    header = read_gguf(make_gguf(tmp_path / "m.gguf"))
    with pytest.raises(ConfigError) as e:
        compose("c" * 64, 10, header, settings_)
    assert e.value.key == key


JSONABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False,
                                                                           allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(JSONABLE)
def test_go_json_round_trips_and_escapes_as_go_does(value):
    data = go_json(value)
    assert json.loads(data) == value and data.endswith(b"\n") and b"\n" not in data[:-1]
    assert not set(b"<>&") & set(data)
    assert go_json(value) == data


PARAMS_ = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=False, allow_infinity=False),
              st.booleans(), st.text(max_size=12), st.lists(st.text(max_size=8), max_size=3)),
    max_size=5)


@settings(max_examples=80, deadline=None)
@given(PARAMS_, st.text(max_size=30), st.lists(st.text(min_size=1, max_size=30), max_size=2))
def test_same_inputs_same_manifest_and_every_descriptor_matches_its_bytes(params, system, lic):
    from reconcile.gguf import GGUFHeader

    header = GGUFHeader(3, "<", 1, {"general.architecture": "llama", "general.file_type": 7},
                        7_241_732_096, 100)
    make = lambda: compose("d" * 64, 4_000_000_000, header,  # noqa: E731
                           Settings(system=system, parameters=params, license=tuple(lic)))
    one, two = make(), make()
    assert one.manifest == two.manifest and one.digest == two.digest
    doc = json.loads(one.manifest)
    assert doc["schemaVersion"] == 2 and doc["config"] == one.config.descriptor()
    for b in (one.config, *one.layers[1:]):
        assert (b.size, b.sha256) == (len(b.data), hashlib.sha256(b.data).hexdigest())
    got = {b.media_type: b.data for b in one.layers}
    assert json.loads(got[PARAMS]) == params if params else PARAMS not in got
    assert got.get(SYSTEM, b"").decode() == system
    config = json.loads(one.config.data)
    assert (config["model_type"], config["file_type"]) == ("7.2B", "Q8_0")


@pytest.mark.parametrize("n,text", [  # ollama's format/format_test.go: TestHumanNumber
    (0, "0"), (999, "999"), (1000, "1K"), (1001, "1K"), (1000000, "1M"), (125000000, "125M"),
    (500500000, "500.50M"), (500550000, "500.55M"), (1000000000, "1B"),
    (2800000000, "2.8B"), (2850000000, "2.9B"), (1000000000000, "1000B")])
def test_parameter_counts_read_as_ollama_prints_them(n, text):
    assert human_number(n) == text


PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
NS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,20}", fullmatch=True)
HOST = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{1,5})?", fullmatch=True)


@settings(max_examples=200)
@given(st.one_of(st.tuples(PART), st.tuples(NS, PART), st.tuples(HOST, NS, PART)),
       st.none() | PART)
def test_manifest_paths_are_where_ollama_looks(parts, tag):
    name = "/".join(parts) + (f":{tag}" if tag else "")
    models = Path("/models")
    assert manifest_path(models, name) == models / "manifests" / Path(
        *ollama_reader.parse_name(name))
    assert ollama_name(name).count("/") == 3


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_no_name_leaves_the_manifests_directory(name):
    models = Path("/models")
    try:
        path = manifest_path(models, name)
    except ConfigError:
        return
    rel = path.relative_to(models / "manifests")
    assert len(rel.parts) == 4 and ".." not in rel.parts and os.path.normpath(path) == str(path)


@given(st.lists(st.from_regex(r"[a-z]{1,6}(\.(gguf|GGUF|bin|json))?", fullmatch=True),
                unique=True, max_size=6))
def test_only_gguf_is_the_one_gguf_or_a_lock_error_listing_them(paths):
    from reconcile.ollama_manifest import only_gguf

    ggufs = [p for p in paths if p.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        assert only_gguf("m", paths) == ggufs[0]
        return
    with pytest.raises(LockError) as e:
        only_gguf("m", paths)
    assert str(e.value).startswith("models.m: integration.ollama needs exactly one GGUF")
    assert all(g in str(e.value) for g in ggufs) and "files = [" in str(e.value)
