"""Planner algebra (plan after apply is empty, one fetch per object) and the Python API."""

from __future__ import annotations

import json
import os
import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reconcile
from reconcile.config import parse_manifest
from reconcile.plan import make_plan
from reconcile.resolve import lock_models
from reconcile.store import Store
from reconcile.workspace import Workspace

file_names = st.sampled_from(["config.json", "a.bin", "b/c.bin", "model.safetensors", "x.txt"])
model_spec = st.tuples(st.sampled_from(["m1", "m2", "shared"]),
                       st.lists(file_names, min_size=0, max_size=4, unique=True))


def manifest_text(models: dict[str, tuple[str, list[str]]]) -> str:
    out = []
    for key, (model, files) in models.items():
        out.append(f'[models.{key}]\nsource.mock = {{ org = "o", model = "{model}", files = '
                   f'{json.dumps(files)} }}\nintegration.huggingface.refs = ["{key}"]\n')
    return "\n".join(out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), model_spec, min_size=1, max_size=4))
def test_plan_after_apply_is_empty_and_objects_are_fetched_once(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("p")
    store, cache = Store(root / "store"), root / "hub"
    (root / "models.toml").write_text(manifest_text(models))
    ws = Workspace(root / "models.toml", store=store, cache=cache)
    lock = ws.lock().lock
    plan = ws.plan(lock)
    fetches = [a for a in plan.actions() if a.kind == "fetch"]
    distinct = {f.sha256 for m in lock.models.values() for f in m.regular_files()}
    assert len(fetches) == len(distinct) == len({a.target for a in fetches})
    # every fetch precedes the assembly of every model that needs it
    order = [a.node for a in plan.actions()]
    for m in lock.models.values():
        for f in m.regular_files():
            assert order.index(f"fetch:{f.sha256}") < order.index(f"assemble:{m.key}")
    report = ws.apply_lock(lock)
    assert report.ok, report.failures
    assert ws.plan(lock).empty
    assert ws.apply_lock(lock).done == {}


def test_plan_touches_nothing(tmp_path):
    (tmp_path / "models.toml").write_text(manifest_text({"a": ("m", ["a.bin"])}))
    ws = Workspace(tmp_path / "models.toml", store=Store(tmp_path / "s"), cache=tmp_path / "h")
    manifest = parse_manifest((tmp_path / "models.toml").read_bytes())
    lock = lock_models(manifest, None, ws.store).lock
    before = sorted(os.walk(tmp_path))
    make_plan(lock, ws.store, ws.cache, project="x")
    assert sorted(os.walk(tmp_path)) == before


def test_fetch_model_returns_the_seed_passthru(project):
    m = reconcile.fetch_model({"name": "tiny", "source": {"mock": {
        "org": "acme", "model": "tiny", "files": ["config.json"]}}})
    assert m.meta["org"] == "acme" and m.meta["model"] == "tiny"
    assert m.meta["sourceType"] == "mock" and m.meta["revision"] == "main"
    assert m.hf_cache_path == "models--acme--tiny"
    assert (m.path / "config.json").is_file() and os.path.islink(m.path / "config.json")
    assert (m.raw / "config.json").is_file()
    assert reconcile.integration.get_model_path(m) == m.path


def test_instantiate_and_predefined_models(project):
    out = reconcile.instantiate({"e": reconcile.model_defs.test.empty,
                                 "m": reconcile.model_defs.test.minimal})
    assert set(out) == {"e", "m"}
    assert os.listdir(out["e"].path) == []
    assert sorted(os.listdir(out["m"].path)) == ["README.md", "config.json", "model.safetensors"]
    assert reconcile.models.test.minimal.hash == out["m"].hash


def test_mk_cache_name_and_factories():
    ic = reconcile.integration
    assert ic.mk_cache_name({"org": "meta-llama", "model": "Llama-2-7b-hf"}) == \
        "models--meta-llama--Llama-2-7b-hf"
    assert ic.mk_cache_name(model="gpt2") == "models--gpt2"
    hf = reconcile.sources.mk_hugging_face(default_auth={"tokenEnvVar": "HF_TOKEN"})
    src = hf("meta-llama/Llama-2-7b-hf")
    assert src["huggingface"]["repo"] == "meta-llama/Llama-2-7b-hf"
    assert src["_defaults"]["auth"] == {"tokenEnvVar": "HF_TOKEN"}


def test_mk_link_script_reproduces_the_cache_layout(project, tmp_path):
    m = reconcile.fetch_model({"name": "tiny", "source": {"mock": {
        "org": "acme", "model": "tiny", "files": ["config.json", "sub/a.bin"]}}})
    other = tmp_path / "other-cache"
    script = reconcile.integration.mk_link_script(m, cache_dir=str(other))
    subprocess.run(["sh", "-c", script], check=True)
    repo = other / "models--acme--tiny"
    assert (repo / "refs" / "main").read_text() == m.locked.hf.commit
    link = repo / "snapshots" / m.locked.hf.commit / "sub" / "a.bin"
    assert os.readlink(link).startswith("../../../blobs/")
    assert link.read_bytes() == (m.path / "sub" / "a.bin").read_bytes()
