"""Chat templates: sandbox-escape patterns are flagged, real-world template idioms are not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile.validation.builtin import modelscan
from reconcile.validation.chat_template import findings
from reconcile.validation.formats import check_gguf

# the idioms of real templates (Llama 3.1 tools, Qwen 2.5, Mistral, Granite, Gemma): none
# may be flagged. Checked by hand against 56 published templates too (none flagged).
BENIGN = [
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{- bos_token }}{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}"
    "{%- set ns = namespace(system='', found=false) %}{%- set ns.found = true %}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}"
    "{{- strftime_now('%d %b %Y') }}",
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate"
    " user/assistant/user/assistant/...') }}{% endif %}{{ message.content|trim }}"
    "{{ message['content'].split('</think>')[-1].strip() }}{{ loop.index0 }}",
    # words that name risky objects are harmless inside literals
    "{{ 'Answer the request; self-check your config; use .format(x) in Python; os' }}",
    "{{ message['tool_calls'][0]['function']['name'] | replace('-', '_') }}",
    "{# a comment with __class__ in it is not code #}no code here: __class__ self.config",
]
ATTACKS = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "Python internals"),
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "Python internals"),
    ("{{ self._TemplateReference__context.cycler }}", "never need"),
    ("{{ x|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "attr filter"),
    ("{{ x|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "escape"),
    ("{{ '{0.__class__}'.format(message) }}", "str.format"),
    ("{{ lipsum['__globals__'] }}", "Python internals"),
    ("{% set u = '_' * 2 %}{{ message[u + 'class' + u] }}", "underscores"),
    ("{{ namespace.__init__ }}", "Python internals"),
    ("{% set x = joiner %}{{ x }}", "never need"),
]


@pytest.mark.parametrize("template", BENIGN)
def test_real_template_idioms_are_not_flagged(template):
    assert findings(template) == []


@pytest.mark.parametrize("template,why", ATTACKS)
def test_escape_patterns_are_flagged(template, why):
    got = findings(template)
    assert any(why in f for f in got), got


prose = st.text(st.characters(blacklist_characters="'\"\\_{}%#"), max_size=200)


@given(prose, prose)
def test_text_outside_code_and_inside_literals_never_matters(outside, literal):
    assert findings(outside.replace("{", "")) == []
    assert findings(f"{{{{ '{literal}' + message['content'] }}}}{outside}") == []


def tree(tmp_path, files: dict[str, str]):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_modelscan_reads_templates_where_transformers_finds_them(tmp_path):
    evil = ATTACKS[1][0]
    root = tree(tmp_path, {
        "config.json": '{"model_type": "llama"}',
        "tokenizer_config.json": json.dumps({"chat_template": [
            {"name": "default", "template": BENIGN[0]}, {"name": "tool_use", "template": evil}]}),
        "chat_template.jinja": evil,
        "additional_chat_templates/rag.jinja": BENIGN[1],
        "sub/chat_template.json": json.dumps({"chat_template": evil}),
    })
    out = modelscan(root)
    assert any(f.startswith("tokenizer_config.json: chat_template[1] (tool_use)") for f in out)
    assert not any("chat_template[0]" in f for f in out)
    assert any(f.startswith("chat_template.jinja: chat template") for f in out)
    assert any(f.startswith("sub/chat_template.json: chat_template") for f in out)
    assert not any("rag.jinja" in f for f in out)


def test_a_clean_tokenizer_config_passes(tmp_path):
    root = tree(tmp_path, {"tokenizer_config.json": json.dumps({"chat_template": BENIGN[1]})})
    assert modelscan(root) == []


def test_gguf_chat_templates_are_read_from_metadata(tmp_path):
    import gguf

    def write(name: str, templates: dict[str, str]):
        w = gguf.GGUFWriter(str(tmp_path / name), "llama")
        for key, text in templates.items():
            w.add_string(key, text)
        w.add_tensor("w", np.ones((4, 8), np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return tmp_path / name

    assert check_gguf(write("ok.gguf", {"tokenizer.chat_template": BENIGN[1]}), deep=True) == []
    bad = write("bad.gguf", {"tokenizer.chat_template": BENIGN[0],
                             "tokenizer.chat_template.tool_use": ATTACKS[0][0]})
    problems = check_gguf(bad, deep=True)
    assert len(problems) >= 1 and all(
        p.startswith("tokenizer.chat_template.tool_use: chat template") for p in problems)
    (tmp_path / "ok.gguf").unlink()
    assert any("tokenizer.chat_template.tool_use" in f for f in modelscan(tmp_path))
