"""`reconcile add`/`remove` edit models.toml as text: every other byte is kept, and add then
remove gives the file back byte for byte."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconcile.edit import add_text, declaration, remove_text, render
from reconcile.errors import UsageError

HUB = "http://127.0.0.1:9"


@pytest.mark.parametrize("spec,key,stype,opts", [
    ("google-bert/bert-base-uncased", "bert-base-uncased", "huggingface",
     {"repo": "google-bert/bert-base-uncased"}),
    ("hf://acme/tiny@v1.0", "tiny", "huggingface", {"repo": "acme/tiny", "revision": "v1.0"}),
    ("https://huggingface.co/acme/tiny", "tiny", "huggingface", {"repo": "acme/tiny"}),
    ("https://huggingface.co/acme/tiny/tree/v2", "tiny", "huggingface",
     {"repo": "acme/tiny", "revision": "v2"}),
    ("https://huggingface.co/acme/tiny/blob/main/config.json", "tiny", "huggingface",
     {"repo": "acme/tiny", "revision": "main"}),
    ("https://huggingface.co/datasets/acme/data", "data", "huggingface",
     {"repo": "acme/data", "repoType": "dataset"}),
    (f"{HUB}/acme/mirror/tree/main", "mirror", "huggingface",
     {"repo": "acme/mirror", "revision": "main"}),
    ("https://example.com/files/model.gguf", "model", "url",
     {"url": "https://example.com/files/model.gguf"}),
    ("s3://team-models/llama/7b/", "7b", "s3", {"bucket": "team-models", "prefix": "llama/7b/"}),
    ("s3://team-models", "team-models", "s3", {"bucket": "team-models"}),
    ("ollama:llama3.2:1b", "llama3.2", "ollama", {"model": "llama3.2", "tag": "1b"}),
    ("ollama:library/qwen", "qwen", "ollama", {"model": "library/qwen"}),
    ("oci://ghcr.io/org/bert:v1", "bert", "oci", {"ref": "ghcr.io/org/bert:v1"}),
    # the form the team-cache docs use, for a registry without TLS (and with it)
    ("oci+http://127.0.0.1:5000/repo:tag", "repo", "oci",
     {"ref": "http://127.0.0.1:5000/repo:tag"}),
    ("oci+https://reg.internal/org/bert@sha256:" + "a" * 64, "bert", "oci",
     {"ref": "https://reg.internal/org/bert@sha256:" + "a" * 64}),
    ("models:/classifier/latest", "classifier", "mlflow",
     {"modelName": "classifier", "version": "latest"}),
    ("models:/classifier/3", "classifier", "mlflow", {"modelName": "classifier", "version": "3"}),
    ("models:/classifier@champion", "classifier", "mlflow",
     {"modelName": "classifier", "alias": "champion"}),
    ("models:/classifier/Production", "classifier", "mlflow",
     {"modelName": "classifier", "stage": "Production"}),
    ("git+https://git.example.com/org/models.git@v1.0", "models", "git-lfs",
     {"url": "https://git.example.com/org/models.git", "rev": "v1.0"}),
])
def test_source_forms(spec, key, stype, opts):
    d = declaration(spec, hf_endpoint=HUB)
    assert (d.key, d.source_type, d.options) == (key, stype, opts)


def test_flags_and_refusals():
    d = declaration("acme/tiny", name="my-model", files=["*.json"], revision="v1")
    assert d.key == "my-model" and d.options == {"repo": "acme/tiny", "revision": "v1",
                                                 "files": ["*.json"]}
    assert declaration("ollama:qwen", revision="7b").options == {"model": "qwen", "tag": "7b"}
    for spec, kw, words in [
        ("ftp://x/y", {}, "not a source"),
        ("https://example.com/", {}, "names no file"),
        ("s3://b/p", {"files": ["*"]}, "--files applies to Hugging Face"),
        ("https://example.com/a.bin", {"revision": "x"}, "--revision does not apply"),
        ("git+https://git.example.com/org/models", {}, "needs a revision"),
        ("acme/tiny", {"name": "../etc"}, "not a valid model key"),
        ("models:/x", {}, "models:/name/version"),
    ]:
        with pytest.raises(UsageError, match=words):
            declaration(spec, **kw)


def test_rendered_declaration_is_what_a_person_writes():
    d = declaration("acme/tiny", files=["*.json", "*.safetensors"], revision="v1.0")
    assert render(d) == ('[models.tiny]\nsource.huggingface = { repo = "acme/tiny", revision ='
                         ' "v1.0", files = ["*.json", "*.safetensors"] }\n')
    assert render(declaration("ollama:llama3.2")).startswith('[models."llama3.2"]\n')


EXAMPLE = """\
#:schema ./schemas/models.schema.json
# Models this repository needs.

[models.bert]          # the encoder
source.huggingface = { repo = "google-bert/bert-base-uncased", files = ["*.json"] }

[models.bert.integration.huggingface]
refs = ["main"]

[models.tiny]
source.mock = { org = "t", model = "tiny" }
meta = { description = "x" }   # trailing comment
"""


def test_add_then_remove_is_byte_for_byte_and_a_key_is_never_declared_twice():
    d = declaration("acme/new-model", revision="v2")
    added = add_text(EXAMPLE, d)
    assert added.startswith(EXAMPLE) and added[len(EXAMPLE):] == "\n" + render(d)
    assert tomllib.loads(added)["models"]["new-model"] == {
        "source": {"huggingface": {"repo": "acme/new-model", "revision": "v2"}}}
    assert remove_text(added, "new-model") == EXAMPLE
    with pytest.raises(UsageError, match="already exists"):
        add_text(EXAMPLE, declaration("acme/tiny"))
    with pytest.raises(UsageError, match=r"no model named 'nope'.*bert, tiny"):
        remove_text(EXAMPLE, "nope")


def test_remove_takes_sub_tables_and_keeps_the_rest():
    out = remove_text(EXAMPLE, "bert")
    doc = tomllib.loads(out)
    assert list(doc["models"]) == ["tiny"]
    assert "# Models this repository needs." in out and "# trailing comment" in out
    assert out.endswith('meta = { description = "x" }   # trailing comment\n')
    assert remove_text(remove_text(EXAMPLE, "tiny"), "bert").strip().startswith("#:schema")


def test_inline_models_table_is_refused_not_corrupted():
    text = 'models = { a = { source.mock = { org = "o", model = "m" } } }\n'
    with pytest.raises(UsageError, match="by hand"):
        add_text(text, declaration("acme/b"))


# --- property: whatever the file looks like, add then remove restores it ----------------

_key = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
_comment = st.from_regex(r"# [ -~]{0,20}", fullmatch=True)
_entry = st.tuples(_key, st.sampled_from(["table", "inline", "dotted", "subtable"]),
                   st.lists(_comment, max_size=2), st.integers(0, 2))


def _render_entry(key: str, form: str, comments: list[str], blank: int) -> tuple[str, str]:
    """One hand-written model in one of the forms TOML allows; returns (header, body)."""
    pre = "".join(c + "\n" for c in comments) + "\n" * blank
    src = f'{{ org = "o", model = "{key}" }}'
    if form == "table":
        return "", f"{pre}[models.{key}]\nsource.mock = {src}\n"
    if form == "subtable":
        return "", (f"{pre}[models.{key}]\nname = \"{key}\"\n\n"
                    f"[models.{key}.source.mock]\norg = \"o\"\nmodel = \"{key}\"\n")
    if form == "inline":
        return "[models]\n", f"{pre}{key} = {{ source.mock = {src} }}\n"
    return "", f"{pre}models.{key}.source.mock = {src}\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(_entry, max_size=4, unique_by=lambda e: e[0]), st.lists(_comment, max_size=2))
def test_add_then_remove_restores_any_file(entries, head):
    header = "".join(c + "\n" for c in head)
    tables, root = [], []
    for key, form, comments, blank in entries:
        prefix, body = _render_entry(key, form, comments, blank)
        (root if form == "dotted" else tables).append((prefix, body))
    text = header + "".join(b for _, b in root)
    inline = [b for p, b in tables if p]
    if inline:
        text += "\n[models]\n" + "".join(inline)
    text += "".join("\n" + b for p, b in tables if not p)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:  # `models.x = …` at the root beside a [models] table
        assume(False)
    d = declaration("acme/zz-added-model")
    try:
        added = add_text(text, d)
    except UsageError as e:  # only a form that cannot take a new table, and said so
        assert "by hand" in str(e)
        return
    assert remove_text(added, d.key) == text


def test_add_then_remove_is_byte_for_byte_without_a_final_newline():
    """A models.toml whose last line has no newline keeps that style through add, and
    remove gives it back byte for byte."""
    text = EXAMPLE.rstrip("\n")
    d = declaration("acme/new-model")
    added = add_text(text, d)
    assert not added.endswith("\n") and added.startswith(text + "\n\n")
    assert remove_text(added, "new-model") == text
    assert remove_text(add_text(EXAMPLE, d), "new-model") == EXAMPLE


_tail = st.sampled_from(["", "\n", "\n\n", "\n\n\n", "\r\n", "\n \n", " ", "\t", "  # end"])
_line = st.sampled_from(["#:schema x", "# a comment", "", "   ", "[models.a]",
                         "source.mock = { files = [] }", "source.mock = { files = [] }   # c",
                         "[models.a.validation]", 'preset = "none"', "[cache]", 'url = "x"',
                         "models.b = { source.mock = { files = [] } }"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=8), _tail)
def test_add_then_remove_restores_any_ending(lines, tail):
    """However the file ends (no final newline, blank lines, spaces, CRLF, a comment),
    add then remove gives it back byte for byte: an empty file, or one ending in blank
    lines, lost a byte before (#33)."""
    text = "\n".join(lines) + tail
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        assume(False)
    d = declaration("acme/zz-added-model")
    try:
        added = add_text(text, d)
    except UsageError:  # a key declared already, or a form that cannot take a table
        return
    assert remove_text(added, d.key) == text
