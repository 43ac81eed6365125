"""Validators, presets and outcomes, as apply and `reconcile validate` run them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from reconcile.validation.builtin import BUILTINS
from reconcile.validation.runner import PRESETS, Validator, run_validator, scrubbed_env


def model(files: str, validation: str) -> str:
    return (f'[models.m]\nsource.mock = {{ org = "acme", model = "m", files = [{files}] }}\n'
            f"validation = {validation}\n")


def only(*validators: str, on_failure: str = "abort") -> str:
    return (f'{{ skipDefaults = true, onFailure = "{on_failure}", '
            f'validators = [{", ".join(validators)}] }}')


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}      ")
    (root / "sub" / "notes.txt").write_text("hi")
    return root


@pytest.mark.parametrize("name,arg,setup,expect_fail", [
    ("maxSize", "10", None, True),
    ("maxSize", "1M", None, False),
    ("requiredFiles", ["config.json", "sub/*.txt"], None, False),
    ("requiredFiles", ["tokenizer.json"], None, True),
    ("noSymlinks", None, lambda r: os.symlink("config.json", r / "alias.json"), True),
    ("noSymlinks", None, None, False),
    ("fileTypes", [".json", "safetensors", "txt"], None, False),
    ("fileTypes", [".json"], None, True),
    ("validConfigJson", None, None, False),
    ("validConfigJson", None, lambda r: (r / "bad.json").write_text("{nope"), True),
    ("noPythonCode", None, None, False),
    ("noPythonCode", None, lambda r: (r / "modeling.py").write_text("import os"), True),
    ("noPythonCode", None, lambda r: (r / "config.json").write_text('{"auto_map": {"AutoModel": "x.Y"}}'), True),
    ("licenseCheck", None, None, True),
    ("licenseCheck", None, lambda r: (r / "LICENSE").write_text("MIT"), False),
    ("licenseCheck", None, lambda r: (r / "README.md").write_text("---\nlicense: mit\n---\n"), False),
    ("noPickleFiles", None, None, False),
    ("noPickleFiles", None, lambda r: (r / "w.bin").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."), True),
    ("safetensorsOnly", None, lambda r: (r / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00."), True),
])
def test_builtin_validators(tree, name, arg, setup, expect_fail):
    if setup:
        setup(tree)
    outcome = run_validator(Validator(name, arg=arg), tree)
    assert (outcome.status == "fail") == expect_fail, outcome.findings


def test_every_seed_validator_exists():
    for name in ("noPickleFiles", "safetensorsOnly", "maxSize", "requiredFiles", "noSymlinks",
                 "fileTypes", "modelscan", "validConfigJson", "noPythonCode", "licenseCheck"):
        assert name in BUILTINS
    assert set(PRESETS) == {"strict", "standard", "minimal", "none", "paranoid"}


def test_abort_is_not_linked_and_apply_exits_1_naming_model_validator_and_file(project):
    project.write(model('"config.json", "x.py"', only('"noPythonCode"')))
    r = project.sh("apply")
    assert r.code == 1
    assert "'m' failed validation" in r.err and "noPythonCode" in r.err and "x.py" in r.err
    assert not (project.cache / "models--acme--m" / "refs" / "main").exists()
    assert json.loads(project.sh("status", "--json").out)[0]["state"] == "invalid"


@pytest.mark.parametrize("hf", [True, False])
def test_a_model_that_failed_validation_is_never_handed_out(project, hf):
    """#31 case 5: `path` exits 1 naming why, `status` says invalid with the validator
    (exit 1), the summary names the model, no tree is reachable under its name; once the
    validators let it through, it is published and handed out."""
    extra = "" if hf else "integration.huggingface = { enable = false }\n"
    project.write(model('"config.json", "x.py"', only('"noPythonCode"')) + extra)
    r = project.run("apply")
    assert r.code == 1 and "not installed: m" in r.err, r.err
    r = project.run("path", "m")
    assert r.code == 1 and not r.out and "failed validation: noPythonCode" in r.err, r.err
    assert "x.py" in r.err and "Traceback" not in r.err
    r = project.run("status", "--json")
    row = json.loads(r.out)[0]
    assert r.code == 1 and row["state"] == "invalid" and "noPythonCode" in row["validation"]
    assert row["store_path"] is None
    assert "failed validation: noPythonCode" in project.run("status").out
    assert not any((project.store / "models").iterdir()), "no tree under a model name"
    assert project.run("apply").code == 1, "a second apply blocks it again"
    assert not any((project.store / "models").iterdir())

    project.write(model('"config.json", "x.py"', only('"noPythonCode"', on_failure="warn"))
                  + extra)
    assert project.run("apply").code == 0
    r = project.run("path", "m")
    assert r.code == 0 and (Path(r.out.strip()) / "x.py").is_file()
    assert json.loads(project.run("status", "--json").out)[0]["state"] == "ok"
    assert not any((project.store / "pending").iterdir())


def test_the_python_api_raises_for_a_blocked_model(project, tmp_path):
    import reconcile
    from reconcile.errors import ReconcileError
    from reconcile.store import Store

    with pytest.raises(ReconcileError, match="failed validation"):
        reconcile.fetch_model({"name": "m", "source": {"mock": {
            "org": "acme", "model": "m", "files": ["config.json", "x.py"]}},
            "validation": {"skipDefaults": True, "validators": ["noPythonCode"]}},
            store=Store(tmp_path / "s"), cache=tmp_path / "c")
    assert not any((tmp_path / "s" / "models").iterdir())


def test_warn_links_and_the_warning_is_kept_in_status(project):
    project.write(model('"config.json", "x.py"', only('"noPythonCode"', on_failure="warn")))
    r = project.sh("apply")
    assert r.code == 0 and "warning: m: noPythonCode: x.py" in r.err
    row = json.loads(project.sh("status", "--json").out)[0]
    assert row["state"] == "ok" and any("x.py" in w for w in row["warnings"])


def test_skip_records_and_links(project):
    project.write(model('"config.json", "x.py"', only('"noPythonCode"', on_failure="skip")))
    assert project.sh("apply").code == 0
    assert json.loads(project.sh("status", "--json").out)[0]["state"] == "ok"


def test_results_are_cached_by_content_and_revalidate_forces_a_rerun(project, tmp_path):
    marker = tmp_path / "runs"
    project.write(model('"config.json"', only('"counter"'))
                  + f'[validators.counter]\ncommand = "echo x >> {marker}"\n')
    assert project.sh("apply").code == 0
    assert project.sh("apply").code == 0
    assert marker.read_text().count("x") == 1  # unchanged model, unchanged validator
    assert project.sh("apply", "--revalidate").code == 0
    assert marker.read_text().count("x") == 2
    # changing the validator (its fingerprint) runs it again
    project.write(model('"config.json"', only('"counter"'))
                  + f'[validators.counter]\ncommand = "echo x >> {marker}; true"\n')
    assert project.sh("apply").code == 0
    assert marker.read_text().count("x") == 3


def test_custom_validator_sees_src_and_a_scrubbed_environment(project, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_verysecret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("MY_API_TOKEN", "t0k")
    out = tmp_path / "env.txt"
    project.write(model('"config.json"', only('"envdump"'))
                  + f'[validators.envdump]\ncommand = \'env > {out}; test -f "$src/config.json"\'\n')
    assert project.sh("apply").code == 0
    text = out.read_text()
    assert "src=" in text and "hf_verysecret" not in text and "aws-secret" not in text
    assert "t0k" not in text


#: What the review set: 18 secrets in the user's environment, under the names real tools
#: use; 8 of them reached validators through the old deny-list.
SECRETS = {
    "HTTPS_PROXY": "http://user:proxy-pass@127.0.0.1:3128", "PIP_INDEX_URL":
    "https://u:pip-pass@pypi.example/simple", "GH_PAT": "ghp_pat", "CI_JOB_JWT": "eyJjwt",
    "DATABASE_URL": "postgres://u:db-pass@h/db", "DOCKER_AUTH_CONFIG": '{"auths": "dock"}',
    "NETRC": "/home/u/.netrc-secret", "SSH_AUTH_SOCK": "/tmp/ssh-agent-sock",
    "HF_TOKEN": "hf_tok", "AWS_SECRET_ACCESS_KEY": "aws-sk", "GITHUB_TOKEN": "gh-tok",
    "OPENAI_API_KEY": "sk-openai", "MLFLOW_TRACKING_PASSWORD": "mlf-pass",
    "AZURE_CLIENT_SECRET": "az-sec", "GOOGLE_APPLICATION_CREDENTIALS": "/gcp-creds.json",
    "NPM_TOKEN": "npm-tok", "VAULT_TOKEN": "vault-tok", "MY_MODEL_PASSWORD": "model-pass",
}


def test_validators_get_an_allow_listed_environment(project, tmp_path, monkeypatch):
    """Validators run beside untrusted files (and may load them): they get PATH, HOME,
    the locale, TMPDIR, TERM, $src and what the validator's own `env` names; nothing
    else, whatever it is called."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    for k, v in {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": str(tmp_path),
                 "TERM": "dumb", "CUDA_VISIBLE_DEVICES": "1", "SOME_TOOL_HOME": "/opt/t"}.items():
        monkeypatch.setenv(k, v)
    out, out2 = tmp_path / "env.txt", tmp_path / "env2.txt"
    project.write(model('"config.json"', only('"envdump"', '"gpu"'))
                  + f"[validators.envdump]\ncommand = 'env > {out}'\n"
                  + f"[validators.gpu]\ncommand = 'env > {out2}'\n"
                  + 'env = ["CUDA_VISIBLE_DEVICES", "NOT_SET_ANYWHERE"]\n')
    r = project.sh("apply")
    assert r.code == 0, r.err
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    leaked = sorted(k for k, v in SECRETS.items() if v in out.read_text() + out2.read_text())
    assert leaked == []
    for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM", "src"):
        assert k in seen, k
    assert "CUDA_VISIBLE_DEVICES" not in seen and "SOME_TOOL_HOME" not in seen
    assert "CUDA_VISIBLE_DEVICES=1" in out2.read_text().splitlines()
    assert "NOT_SET_ANYWHERE" not in out2.read_text()


def test_a_validator_env_entry_must_be_a_variable_name(project):
    project.write(model('"config.json"', only('"gpu"'))
                  + '[validators.gpu]\ncommand = "true"\nenv = ["CUDA VISIBLE"]\n')
    r = project.sh("apply")
    assert r.code == 2 and "validators.gpu.env[0]" in r.err and "Traceback" not in r.err


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    v = Validator("slow", command=f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5)
    t = time.monotonic()
    outcome = run_validator(v, tmp_path)
    assert outcome.status == "timeout" and time.monotonic() - t < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    try:  # gone, or a zombie nobody reaps yet: either way no longer running
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")


def test_build_inputs_are_checked_before_running(tmp_path):
    v = Validator("needs", command="true", build_inputs=("definitely-not-a-program-xyz",))
    o = run_validator(v, tmp_path)
    assert o.status == "error" and "definitely-not-a-program-xyz" in o.findings[0]


def test_validator_output_is_kept_for_the_report(project):
    project.write(model('"config.json"', only('"loud"'))
                  + '[validators.loud]\ncommand = "echo the model smells; exit 3"\n')
    r = project.sh("apply")
    assert r.code == 1 and "the model smells" in r.err and "exited 3" in r.err


def test_unknown_validator_name_is_a_config_error(project):
    project.write(model('"config.json"', only('"noPikleFiles"')))
    r = project.sh("apply")
    assert r.code == 2 and "did you mean 'noPickleFiles'" in r.err


def test_disabled_validation_and_preset_none_run_nothing(project):
    project.write(model('"x.py"', '{ enable = false, validators = ["noPythonCode"] }'))
    assert project.sh("apply").code == 0


def test_validate_command_on_a_directory(project, tree):
    (tree / "x.py").write_text("print(1)")
    r = project.sh("validate", str(tree), "--validator", "noPythonCode", "--validator", "maxSize:1G")
    assert r.code == 1 and "noPythonCode" in r.out
    r = project.sh("validate", str(tree), "--validator", "maxSize:1G", "--json")
    assert r.code == 0 and json.loads(r.out)[0]["status"] == "pass"


def test_scrubbed_env_drops_secrets(monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "g")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p")
    monkeypatch.setenv("HOME", "/root")
    env = scrubbed_env(Path("/x"))
    assert "GITHUB_TOKEN" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    assert env["HOME"] == "/root" and env["src"] == "/x"


def test_default_preset_comes_from_the_environment(project, monkeypatch):
    project.write(model('"config.json", "helper.py"', "{ }"))
    monkeypatch.setenv("RECONCILE_VALIDATION", "strict")
    r = project.sh("apply")
    assert r.code == 1 and "noPythonCode" in r.err and "helper.py" in r.err
    monkeypatch.setenv("RECONCILE_VALIDATION", "standard")
    assert project.sh("apply").code == 0


def test_validate_a_locked_model_by_key_with_a_preset(project):
    project.write(model('"config.json", "helper.py"', "{ }"))
    assert project.sh("apply").code == 0  # standard allows Python files
    r = project.sh("validate", "m", "--preset", "strict", "--continue-on-error", "--json")
    rows = {o["validator"]: o for o in json.loads(r.out)}
    assert r.code == 1 and rows["noPythonCode"]["status"] == "fail"
    assert rows["modelscan"]["status"] == "pass" and "safetensorsOnly" in rows


def test_valid_formats_knows_real_files_and_refuses_what_their_names_lie_about(tmp_path):
    """Real files written by their own libraries pass; an HTML page or a wrong format
    under a weight file's name fails, naming the file."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    root = tmp_path / "m"
    root.mkdir()
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(root / "model.safetensors"))
    torch.save({"w": torch.zeros(2)}, root / "pytorch_model.bin")
    torch.save({"w": torch.zeros(2)}, root / "legacy.pt", _use_new_zipfile_serialization=False)
    np.save(root / "arr.npy", np.arange(3))
    (root / "config.json").write_text("{}")
    (root / "README.md").write_text("<html> in a readme is fine\n")
    (root / "page.html").write_text("<!DOCTYPE html><html></html>")
    check = BUILTINS["validFormats"][0]
    assert check(root, None) == []
    login = b"\n  <!DOCTYPE html>\n<html><body>Sign in</body></html>"
    for name in ("model-00001-of-00002.safetensors", "q4.gguf", "pytorch_model.bin", "x.ckpt"):
        (root / name).write_bytes(login)
        (finding,) = check(root, None)
        assert finding.startswith(f"{name}: is an HTML page"), finding
        (root / name).unlink()
    (root / "weights.gguf").write_bytes(b"\x08" + b"\0" * 7 + b"{}      ")  # safetensors
    (finding,) = check(root, None)
    assert finding == "weights.gguf: is not a gguf file, as its name says"


def test_a_login_page_saved_as_weights_is_not_installed_under_the_default_preset(project, tmp_path):
    page = tmp_path / "model.safetensors"
    page.write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    project.write(f'[models.w]\nsource.url = {{ url = "file://{page}" }}\n')
    r = project.run("apply")
    assert r.code == 1 and "validFormats" in r.err and "is an HTML page" in r.err
    rows = json.loads(project.run("status", "--json").out)
    assert rows[0]["state"] != "ok"
