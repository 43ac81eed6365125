"""tests/ollama_reader.py against a models directory reconcile's `source.ollama`
installs from Debian's docker-registry: what ollama's GetModel would load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.integration.test_ollama_source import (  # noqa: F401 (ollama_dir: a fixture)
    CONFIG,
    GGUF,
    declare,
    ollama_dir,
    push_ollama,
)
from tests.ollama_reader import OllamaWouldFail, list_models, read_model
from tests.servers import Pusher, docker_registry, registry_binary

pytestmark = pytest.mark.integration
if registry_binary() is None:
    pytest.skip("needs docker-registry (apt-get install docker-registry)",
                allow_module_level=True)

TEMPLATE = b"{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"
LAYERS = [
    ("application/vnd.ollama.image.model", GGUF),
    ("application/vnd.ollama.image.template", TEMPLATE),
    ("application/vnd.ollama.image.system", b"Answer in French."),
    ("application/vnd.ollama.image.params", b'{"num_ctx": 4096, "stop": ["</s>"]}'),
    ("application/vnd.ollama.image.messages", b'[{"role": "user", "content": "hi"}]'),
    ("application/vnd.ollama.image.license", b"MIT License\n"),
    ("application/vnd.ollama.image.license", b"Apache License 2.0\n"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with docker_registry(tmp_path_factory.mktemp("registry")) as url:
        served = push_ollama(Pusher(url), "library/chatty", "v1", layers=LAYERS)
        yield url, served


def test_an_installed_model_reads_back_as_ollama_loads_it(project, registry):
    url, served = registry
    models = Path(os.environ["OLLAMA_MODELS"])  # set by the autouse ollama_dir fixture
    host = url.split("//")[1]
    declare(project, url, "chatty:v1")
    assert project.run("lock").code == 0
    r = project.run("apply")
    assert r.code == 0, r.err

    m = read_model(models, f"{host}/library/chatty:v1")
    assert m.name == f"{host}/library/chatty/v1"
    assert m.digest == hashlib.sha256(served).hexdigest()  # `ollama list`'s ID
    assert m.config == json.loads(CONFIG)
    assert m.model_path.read_bytes() == GGUF and m.chat_template is None
    assert m.template == TEMPLATE.decode() and m.system == "Answer in French."
    assert m.options == {"num_ctx": 4096, "stop": ["</s>"]}
    assert m.messages == [{"role": "user", "content": "hi"}]
    assert m.licenses == ["MIT License\n", "Apache License 2.0\n"]
    assert list_models(models) == {f"{host}/library/chatty/v1": m.digest}

    m.model_path.unlink()  # a hard link to the store object: replaced, not written into
    m.model_path.write_bytes(GGUF[:-1])  # what a half-finished copy would leave
    with pytest.raises(OllamaWouldFail, match="does not hold"):
        read_model(models, f"{host}/library/chatty:v1")
