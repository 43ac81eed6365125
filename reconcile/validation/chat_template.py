"""Chat templates: Jinja programs shipped with a model and rendered by whoever loads it.

A template lives in ``tokenizer_config.json`` (``chat_template``: a string or a list
of ``{name, template}``), ``chat_template.json``, ``*.jinja`` files, or a GGUF file's
``tokenizer.chat_template[.<name>]`` metadata. Rendered outside a sandbox it is code
(CVE-2024-34359), and Jinja's sandbox has been escaped through attribute tricks
(CVE-2024-56201, CVE-2024-56326, CVE-2025-27516). Real templates loop over messages,
test roles and concatenate strings; none needs Python's object internals. So this
module never renders anything: it reads the code inside ``{{ }}`` and ``{% %}`` and
flags what only an escape needs (security.md §3.8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.S)
# checked on the code with its strings: x['__class__'] and |attr('__globals__') hide there
_RAW = [
    (re.compile(r"__\w*__|\b_{2}[a-z]"), "touches Python internals ({})"),
    (re.compile(r"\|\s*attr\b|\battr\s*\("), "uses the attr filter ({})"),
    (re.compile(r"(['\"])_{2,}\1|(['\"])_\2\s*\*"), "builds a name from underscores ({})"),
    (re.compile(r"\\x5f|\\u005f|\\U0000005f|\\137|\\N\{LOW LINE\}", re.I),
     "spells an underscore as an escape ({})"),
]
# checked on the code without its strings, so prose inside literals never matches
_BARE = [
    (re.compile(r"\.\s*format\s*\(|\.\s*format_map\s*\("), "calls str.format ({})"),
    (re.compile(r"\b(?:lipsum|cycler|joiner|url_for|get_flashed_messages|request|config|self"
                r"|os|subprocess|builtins|globals|mro|subclasses)\b"),
     "names an object real templates never need ({})"),
    (re.compile(r"\bnamespace\s*\.\s*\w"), "reaches into namespace internals ({})"),
]
# files and keys a template comes from
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.json", "processor_config.json",
                  "preprocessor_config.json")
MAX_JSON = 64 << 20


def findings(template: str) -> list[str]:
    """Why ``template`` looks like a sandbox escape; empty when it does not."""
    out: list[str] = []
    for m in _CODE.finditer(template):
        code = m.group(1) if m.group(1) is not None else m.group(2)
        bare = _STRING.sub("''", code)
        for pattern, why in _RAW:
            if hit := pattern.search(code):
                out.append(why.format(_excerpt(code, hit)))
        for pattern, why in _BARE:
            if hit := pattern.search(bare):
                out.append(why.format(_excerpt(bare, hit)))
    return list(dict.fromkeys(out))


def _excerpt(code: str, hit: re.Match[str]) -> str:
    start, end = max(0, hit.start() - 20), min(len(code), hit.end() + 20)
    return " ".join(code[start:end].split())[:80]


def templates_in_json(doc: object) -> list[tuple[str, str]]:
    """(where, template) for each chat template a tokenizer/processor config carries."""
    if not isinstance(doc, dict):
        return []
    value = doc.get("chat_template")
    if isinstance(value, str):
        return [("chat_template", value)]
    if isinstance(value, list):
        return [(f"chat_template[{i}] ({t.get('name', '?')})", t["template"])
                for i, t in enumerate(value)
                if isinstance(t, dict) and isinstance(t.get("template"), str)]
    return []


def check_file(path: Path, rel: str) -> list[str]:
    """Findings for one file of a model tree, when it is where templates live."""
    name = Path(rel).name
    if name.endswith(".jinja"):
        text = path.read_text("utf-8", errors="replace")
        return [f"{rel}: chat template {f}" for f in findings(text)]
    if name in TEMPLATE_FILES and path.stat().st_size <= MAX_JSON:
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            return []  # validConfigJson reports that
        return [f"{rel}: {where} {f}" for where, text in templates_in_json(doc)
                for f in findings(text)]
    return []
