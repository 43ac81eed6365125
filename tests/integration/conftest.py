"""Fixtures shared by the integration tests: the stand-in Hub and a project pointed at it."""

from __future__ import annotations

import json
import os

import pytest

from tests.hub import Hub

TOKEN = "hf_TestSecretToken123"
WEIGHTS = os.urandom(300_000)


def tokenizer_files() -> dict[str, bytes]:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "hello": 4, "world": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return {
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                             "unk_token": "[UNK]", "pad_token": "[PAD]"}).encode(),
    }


FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2,
                               "num_hidden_layers": 1, "intermediate_size": 16,
                               "vocab_size": 6}).encode(),
    "model.safetensors": WEIGHTS,
    "sub/readme.txt": b"nested\n",
    "sub/deeper/notes.md": b"# notes\n",
    **tokenizer_files(),
}


@pytest.fixture
def hub():
    h = Hub()
    repo = h.repo("acme/tiny")
    first = repo.commit(FILES, tag="v1.0")
    repo.refs["refs/pr/1"] = repo.commit({"extra.txt": b"pr"}, branch="pr-branch", parent=first)
    repo.refs["main"] = first
    h.repo("acme/data", "dataset").commit({"train.csv": b"a,b\n1,2\n"})
    h.repo("acme/demo", "space").commit({"app.py": b"print('hi')\n", "README.md": b"# demo\n"})
    h.repo("gpt2x").commit({"config.json": b'{"model_type": "gpt2"}'})
    gated = h.repo("acme/gated", gated=True, granted={TOKEN})
    gated.commit({"config.json": b"{}", "model.safetensors": b"secret weights" * 100})
    many = h.repo("acme/many")
    many.commit({f"shard-{i:03d}.json": b"{}" for i in range(25)})
    with h:
        yield h


@pytest.fixture
def hf_env(project, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RECONCILE_VALIDATION", "none")
    return project


@pytest.fixture
def tmpfs_store(hf_env, monkeypatch):
    """A store on /dev/shm while the project and its targets stay on disk: hard links
    cannot cross, so targets link by symlink (skipped where /dev/shm is no second
    filesystem). Removed afterwards, read-only objects included."""
    import shutil
    import tempfile
    from pathlib import Path

    from tests.conftest import NOT_APPLICABLE

    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(hf_env.dir).st_dev:
        pytest.skip(f"{NOT_APPLICABLE} no second filesystem at /dev/shm")
    store_dir = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="reconcile-store-"))
    monkeypatch.setenv("RECONCILE_STORE", str(store_dir))
    yield store_dir
    for d, _dirs, _names in os.walk(store_dir):
        os.chmod(d, 0o755)
    shutil.rmtree(store_dir, ignore_errors=True)




GGUF_REPO = "acme/tiny-GGUF"


@pytest.fixture
def ggufs(hub, tmp_path):
    """A GGUF repo on the Hub as they look: two quantizations of one tiny model (each a
    valid GGUF with a Jinja chat template, written by llama.cpp's own package) and a
    README. Returns {"q4": bytes, "q8": bytes}."""
    from tests.test_gguf import make_gguf

    q4 = make_gguf(tmp_path / "q4.gguf", ftype=15).read_bytes()
    q8 = make_gguf(tmp_path / "q8.gguf", ftype=7, rows=96).read_bytes()
    hub.repo(GGUF_REPO).commit({"tiny-Q4_K_M.gguf": q4, "tiny-Q8_0.gguf": q8,
                                "README.md": b"# tiny\n"})
    return {"q4": q4, "q8": q8}
