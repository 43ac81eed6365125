"""models.toml checking: every refusal names file, line, key, expectation and fix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.config import check_sri, parse_manifest, parse_size
from reconcile.errors import ConfigError


def err(text: str | bytes) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_manifest(text.encode() if isinstance(text, str) else text)
    assert e.value.exit_code == 2
    return e.value


def test_valid_manifest_with_every_option_is_read():
    m = parse_manifest(b"""
[sources.huggingface.team]
auth = { tokenEnvVar = "TEAM_TOKEN" }
network = { retry = { maxAttempts = 5 } }

[validators.has-license]
command = "test -f $src/LICENSE"
onFailure = "warn"

[models.bert]
name = "bert-base"
source.huggingface = { use = "team", repo = "google-bert/bert-base-uncased", files = ["*.json"] }
hash = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
validation = { preset = "strict", validators = ["noSymlinks", { maxSize = "10G" }, "has-license"], onFailure = "warn", timeout = 60 }
integration.huggingface = { enable = true, org = "google-bert", model = "bert", refs = ["main", "v1"] }
network = { timeout = { connect = 5, read = 60 }, bandwidth = { limit = "10M" }, proxy = "http://127.0.0.1:3128" }
meta = { owner = "ml-team" }
""")
    d = m.models["bert"]
    assert d.name == "bert-base" and d.source_type == "huggingface"
    assert d.source["repo"] == "google-bert/bert-base-uncased" and d.source["revision"] == "main"
    assert d.auth.token_env_var == "TEAM_TOKEN"  # from the shared defaults
    assert d.network.max_attempts == 5 and d.network.connect_timeout == 5
    assert d.network.bandwidth_limit == 10 * 1024**2
    assert d.integration.refs == ("main", "v1")
    assert m.validators["has-license"]["onFailure"] == "warn"


def test_misspelt_key_gets_line_and_did_you_mean():
    e = err('[models.a]\nsource.mock = {}\n\nintegraton = { }\n')
    assert e.key == "models.a.integraton" and e.line == 4
    assert "did you mean 'integration'" in str(e)


def test_misspelt_nested_key():
    e = err('[models.a]\nsource.mock = {}\nnetwork.retry.maxAttempt = 3\n')
    assert e.key == "models.a.network.retry.maxAttempt" and "maxAttempts" in str(e)


def test_wrong_type_says_what_was_expected():
    e = err('[models.a]\nsource.mock = {}\nnetwork.retry.maxAttempts = "three"\n')
    assert "expected a non-negative integer, got a string" in str(e) and e.line == 3


def test_two_source_types_in_one_model():
    e = err('[models.a]\nsource.mock = {}\nsource.url = { url = "http://x/y" }\n')
    assert "declares 2 source types" in str(e)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "a b", "x\\u0000y", ".."])
def test_unsafe_names_are_refused(name):
    e = err(f'[models.a]\nname = "{name}"\nsource.mock = {{}}\n')
    assert "not a safe name" in str(e)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a\\\\b", "x\\u0000"])
def test_unsafe_file_paths_are_refused(path):
    e = err(f'[models.a]\nsource.mock = {{ files = ["{path}"] }}\n')
    assert "files[0]" in str(e)


@pytest.mark.parametrize("h,why", [
    ("sha256-abc", "not valid base64"),
    ("sha256-AAAA", "digest is 32 bytes"),
    ("md5-AAAA", "expected an SRI hash"),
    ("sha256-" + "!" * 44, "expected an SRI hash"),
    ("sha256:" + "0" * 64, "expected an SRI hash"),
])
def test_malformed_hashes_are_refused(h, why):
    e = err(f'[models.a]\nsource.mock = {{}}\nhash = "{h}"\n')
    assert why in str(e)


def test_literal_token_is_refused_without_echoing_it():
    e = err('[models.a]\nsource.mock = {}\nauth = { token = "hf_SuperSecret123" }\n')
    assert "hf_SuperSecret123" not in str(e)
    assert "tokenEnvVar" in str(e) and e.key == "models.a.auth.token"


def test_non_utf8_input_is_a_clear_error():
    e = err(b'[models.a]\nsource.mock = {}\nmeta = { x = "\xff\xfe" }\n')
    assert "not valid UTF-8" in str(e) and e.line == 3


def test_invalid_toml_reports_the_line():
    e = err('[models.a]\nsource.mock = {\n')
    assert "invalid TOML" in str(e) and e.line is not None


def test_unknown_source_type_and_planned_ones(monkeypatch):
    from reconcile import sources

    assert "did you mean 'huggingface'" in str(err('[models.a]\nsource.hugingface = {}\n'))
    # a registry line whose module is not shipped yet: planned, said so (not "unknown")
    monkeypatch.setitem(sources.SOURCES, "punchcard", ("reconcile.sources.punchcard", "deck"))
    assert "not available in this version" in str(err('[models.a]\nsource.punchcard = {}\n'))


@pytest.mark.parametrize("opts, words", [
    ('{ prefix = "x/" }', "models.a.source.s3.bucket: required"),
    ('{ bucket = "My_Bucket" }', "models.a.source.s3.bucket: 'My_Bucket' is not a bucket name"),
    ('{ bucket = "ab" }', "is not a bucket name"),
    ('{ bucket = "models", prefix = "a/../b/" }', "models.a.source.s3.prefix: 'a/../b/' has"),
    ('{ bucket = "models", prefix = "/abs/" }', "models.a.source.s3.prefix: '/abs/' starts"),
    ('{ bucket = "models", prefix = "a//b" }', "an empty, '.' or '..' part"),
    ('{ bucket = "models", endpoint = "ftp://host" }', "models.a.source.s3.endpoint: 'ftp://host'"
     " is not an http(s) URL"),
    ('{ bucket = "models", endpoint = "https://u:p@host" }', "no user:password@"),
    ('{ bucket = "models", region = "US West" }', "models.a.source.s3.region:"),
    ('{ bucket = "models", profile = "p", anonymous = true }', "not both"),
    ('{ bucket = "models", addressingStyle = "sideways" }', "addressingStyle"),
])
def test_s3_options_are_checked_and_named(opts, words):
    e = err(f"[models.a]\nsource.s3 = {opts}\n")
    assert words in str(e) and e.exit_code == 2


def test_s3_takes_no_credentials_from_models_toml():
    e = err('[models.a]\nsource.s3 = { bucket = "models" }\nauth.tokenEnvVar = "AWS_SECRET"\n')
    assert "models.a.auth: source.s3 does not read auth from models.toml" in str(e)
    assert "AWS_PROFILE" in str(e)


def test_s3_shorthand_shared_defaults_and_prefix_normalised():
    m = parse_manifest(b'''
[sources.s3.team]
bucket = "team-models"
region = "eu-west-1"
endpoint = "https://minio.example.com:9000/"
[models.a]
source.s3 = { use = "team", prefix = "llama" }
[models.b]
source.s3 = "s3://public-models/bert/base/"
''')
    a, b = m.models["a"].source, m.models["b"].source
    assert a == {"bucket": "team-models", "prefix": "llama/", "region": "eu-west-1",
                 "endpoint": "https://minio.example.com:9000", "anonymous": False,
                 "addressingStyle": "path"}
    assert b["bucket"] == "public-models" and b["prefix"] == "bert/base/"
    assert b["addressingStyle"] == "auto"


def test_missing_shared_defaults_is_named():
    e = err('[models.a]\nsource.huggingface = { use = "nope", repo = "a/b" }\n')
    assert "[sources.huggingface.nope]" in str(e)


def test_missing_source():
    assert "missing source" in str(err('[models.a]\nname = "a"\n'))


def test_fingerprint_ignores_formatting_network_and_meta():
    a = parse_manifest(b'[models.a]\nsource.mock = { files = ["x"] }\n')
    b = parse_manifest(b'# c\n[models.a]\n# c2\nsource.mock={files=["x"]}\nmeta={a=1}\n'
                       b'network.retry.maxAttempts=9\n')
    c = parse_manifest(b'[models.a]\nsource.mock = { files = ["y"] }\n')
    assert a.models["a"].fingerprint() == b.models["a"].fingerprint()
    assert a.models["a"].fingerprint() != c.models["a"].fingerprint()


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "B", "K", "KiB", "M", "MB", "G", "Gi", "T"]))
def test_parse_size_units_are_powers_of_1024(n, unit):
    mult = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit[:1]]
    assert parse_size(f"{n}{unit}") == n * mult


@given(st.text())
def test_parse_size_never_crashes_on_garbage(s):
    try:
        assert parse_size(s) >= 0
    except ValueError as e:
        assert "size" in str(e)


@given(st.binary(min_size=32, max_size=32))
def test_check_sri_accepts_every_real_sha256(digest):
    import base64

    assert check_sri("sha256-" + base64.b64encode(digest).decode()) is None


@given(st.text(max_size=200))
def test_manifest_parser_only_ever_raises_config_errors(text):
    try:
        parse_manifest(text.encode())
    except ConfigError:
        pass


def test_one_registry_line_is_all_a_new_source_needs(monkeypatch):
    """models.toml's checker, the factories, __all__ and the schema follow the registry."""
    import sys
    import types

    from reconcile import schema, sources
    from reconcile.sources.mock import MockSource

    module = types.ModuleType("reconcile.sources.fake_tape")

    class Tape(MockSource):
        type = "tape"

    module.SOURCE = Tape
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(sources.SOURCES, "tape", (module.__name__, "model"))
    monkeypatch.setitem(sources.SOURCES, "punchcard", ("reconcile.sources.punchcard", "deck"))
    assert "tape" in sources.registry.names() and "punchcard" in sources.registry.planned()
    m = parse_manifest(b'[models.a]\nsource.tape = { files = ["x"] }\n')
    assert m.models["a"].source_type == "tape"
    assert "not available in this version" in str(err('[models.a]\nsource.punchcard = {}\n'))
    assert "tape" in schema.models_schema()["properties"]["models"]["additionalProperties"][
        "properties"]["source"]["properties"]
    made = sources.make_factories(sources.SOURCES)  # what __all__ and mk_* are made of
    assert {"mk_tape", "mk_punchcard", "mk_hugging_face", "mk_s3"} <= set(made)
    assert made["mk_punchcard"](region="x")("cards") == {"punchcard": {"region": "x",
                                                                       "deck": "cards"}}
    assert set(sources.make_factories(dict(sources.SOURCES))) - {"mk_tape", "mk_punchcard"} \
        <= set(sources.__all__)


@given(st.text(alphabet=st.sampled_from(list("ab./\\:~ \x00")), min_size=0, max_size=12))
def test_a_directory_target_is_inside_the_project_or_refused_naming_the_key(path):
    """Whatever models.toml gives as integration.directory.path, the folder is below
    models.toml's directory (and not it), or the refusal names the key."""
    import json
    import os
    from pathlib import Path

    project = Path("/work/proj")
    text = ('[models.m]\nsource.mock = { model = "m" }\n'
            f"integration.directory = {{ path = {json.dumps(path)} }}\n")
    try:
        m = parse_manifest(text, project / "models.toml")
    except ConfigError as e:
        assert e.key == "models.m.integration.directory.path"
        return
    d = m.models["m"].directory
    assert d is not None and os.path.isabs(d.path)
    assert Path(os.path.normpath(d.path)).is_relative_to(project) and Path(d.path) != project
    assert os.path.normpath(d.path) == d.path  # no '..' or '.' left to resolve


def test_two_models_in_one_directory_are_refused():
    e = err('[models.a]\nsource.mock = { model = "a" }\nintegration.directory = { path = "m" }\n'
            '[models.b]\nsource.mock = { model = "b" }\n'
            'integration.directory = { path = "m/b" }\n')
    assert e.key == "models.b.integration.directory.path" and "overlaps models.a" in str(e)


# --- integration.ollama for a GGUF from any source; integration.lmstudio ---------------

GGUF_REPO = '[models.t]\nsource.huggingface = { repo = "acme/tiny-GGUF", files = ["*Q4_K_M.gguf"] }\n'


def test_ollama_for_a_gguf_from_any_source_reads_name_and_modelfile_texts():
    decl = parse_manifest(GGUF_REPO + 'integration.ollama = { name = "team/tiny:q4",'
                          ' system = "Be brief.", parameters = { temperature = 0.7,'
                          ' stop = ["</s>"] }, license = "MIT" }\n').models["t"]
    o = decl.ollama
    assert o.enable and o.name == "registry.ollama.ai/team/tiny/q4"
    assert (o.system, o.parameters, o.license) == ("Be brief.", {"temperature": 0.7,
                                                                 "stop": ["</s>"]}, ("MIT",))
    plain = parse_manifest(GGUF_REPO).models["t"]
    assert not plain.ollama.enable
    # where a model is shown is not which bytes are locked: the lock stays fresh
    assert decl.fingerprint() == plain.fingerprint()


@pytest.mark.parametrize("table, key, words", [
    ('{ system = "x" }', "name", "required for a GGUF from source.huggingface"),
    ('{ name = "a/b/c/d" }', "name", "is not [host/][namespace/]model[:tag]"),
    ('{ name = "x:bad/tag" }', "name", "is not"),
    ('{ name = "x", template = "{% for m in messages %}{% endfor %}" }', "template",
     "Jinja chat template"),
    ('{ name = "x", license = 3 }', "license", "a string or a list of strings"),
    ('{ name = "x", parameters = { a = { b = 1 } } }', "parameters.a", "expected text"),
])
def test_ollama_settings_are_checked_naming_the_key(table, key, words):
    with pytest.raises(ConfigError) as e:
        parse_manifest(GGUF_REPO + f"integration.ollama = {table}\n")
    assert f"models.t.integration.ollama.{key}" in str(e.value) and words in str(e.value)


def test_a_source_ollama_model_keeps_its_own_manifest():
    plain = parse_manifest(b'[models.o]\nsource.ollama = { model = "llama3.2" }\n').models["o"]
    assert plain.ollama.enable and plain.ollama.name is None
    with pytest.raises(ConfigError, match=r"integration\.ollama\.template: a source\.ollama"):
        parse_manifest('[models.o]\nsource.ollama = { model = "llama3.2" }\n'
                       'integration.ollama = { template = "{{ .Prompt }}" }\n')


def test_lmstudio_is_true_or_a_table_with_folder_names():
    m = parse_manifest(GGUF_REPO + "integration.lmstudio = true\n").models["t"]
    assert m.lmstudio is not None and m.lmstudio.publisher is None
    m = parse_manifest(GGUF_REPO + 'integration.lmstudio = { publisher = "me",'
                       ' model = "tiny" }\n').models["t"]
    assert (m.lmstudio.publisher, m.lmstudio.model) == ("me", "tiny")
    assert parse_manifest(GGUF_REPO + "integration.lmstudio = false\n").models["t"].lmstudio \
        is None
    with pytest.raises(ConfigError, match="lmstudio: expected true or false or a table"):
        parse_manifest(GGUF_REPO + 'integration.lmstudio = "yes"\n')
    with pytest.raises(ConfigError, match=r"integration.lmstudio.publisher: '\.\.'"):
        parse_manifest(GGUF_REPO + 'integration.lmstudio = { publisher = ".." }\n')


@given(st.text(max_size=120))
def test_an_lmstudio_folder_name_is_one_plain_component_or_refused(name):
    from reconcile.paths import check_folder_name

    if check_folder_name(name) is None:
        assert name not in (".", "..") and "/" not in name and "\\" not in name
        assert "\0" not in name and 0 < len(name) <= 100 and name.strip(". ") == name
