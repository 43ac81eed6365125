"""`source.mlflow` against real `mlflow server`s started here (sqlite backend): one that
proxies artifacts, one with the basic-auth app, one whose artifacts live on S3 (moto).
Models are logged and registered with mlflow's own client."""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.servers import mlflow_cli, mlflow_server

pytestmark = pytest.mark.integration
if mlflow_cli() is None:
    pytest.skip("needs mlflow (pip install 'mlflow[auth]')", allow_module_level=True)
mlflow = pytest.importorskip("mlflow")

PASSWORD = "Mlflow-Admin-Pa55word"


def version_files(i: int) -> dict[str, bytes]:
    return {"weights.bin": hashlib.sha256(b"v%d" % i).digest() * 12_500,  # 400 kB
            "config.json": b'{"version": %d}' % i, "sub/tok.txt": b"tokens v%d\n" % i}


def seed(url: str, tmp: Path, *, logged_model: bool = False) -> str:
    """A registered model with versions 1 and 2 (distinct bytes), alias champion → 1 and
    version 2 in stage Production; returns its (unique) name."""
    from mlflow import MlflowClient

    name = f"clf-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("reconcile-test")
    exp_id = exp.experiment_id if exp else client.create_experiment("reconcile-test")
    client.create_registered_model(name)
    for i in (1, 2):
        src = tmp / f"{name}-v{i}"
        for rel, data in version_files(i).items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        run = client.create_run(exp_id)
        if logged_model:
            model = client.create_logged_model(exp_id, source_run_id=run.info.run_id)
            client.log_model_artifacts(model.model_id, str(src))
            source, extra = f"models:/{model.model_id}", {"model_id": model.model_id}
        else:
            client.log_artifacts(run.info.run_id, str(src), artifact_path="model")
            source, extra = f"runs:/{run.info.run_id}/model", {}
        client.set_terminated(run.info.run_id)
        client.create_model_version(name, source=source, run_id=run.info.run_id, **extra)
    client.set_registered_model_alias(name, "champion", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(name, "2", "Production")
    return name


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory) -> Path:
    """The module's server's directory: its sqlite backend store is mlflow.db there."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def server(server_dir):
    with mlflow_server(server_dir) as url:
        yield url


def declare(project, url: str, name: str, selector: str, extra: str = "") -> None:
    project.write(f'[models.clf]\nsource.mlflow = {{ trackingUri = "{url}",'
                  f' modelName = "{name}", {selector} }}\nvalidation.enable = false\n' + extra)


def installed(project):
    from reconcile.store import Store

    assert project.run("path", "clf").code == 0
    return Store(project.store).model_path(read_lock(project.lock).models["clf"])


@pytest.mark.parametrize(("selector", "version"), [('version = "2"', "2"), ("version = 1", "1"),
                                                   ('alias = "champion"', "1"),
                                                   ('stage = "Production"', "2")])
def test_each_selector_locks_its_version_and_the_files_arrive_byte_for_byte(
        project, server, tmp_path, selector, version):
    name = seed(server, tmp_path)
    declare(project, server, name, selector)
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["clf"]
    assert m.pin["version"] == version and m.pin["modelName"] == name
    assert m.pin["artifacts"].startswith("mlflow-artifacts:/") and m.pin["runId"]
    want = version_files(int(version))
    assert {f.path: f.sha256 for f in m.files} == {
        p: hashlib.sha256(d).hexdigest() for p, d in want.items()}
    objects = {p.name for p in (project.store / "objects").rglob("*") if p.is_file()}
    assert objects == {f.sha256 for f in m.files}  # downloaded once, at lock, into the store
    r = project.run("apply")
    assert r.code == 0, r.err
    root = installed(project)
    for rel, data in want.items():
        assert (root / rel).read_bytes() == data


def test_an_alias_moved_after_lock_changes_nothing_until_upgrade(project, server, tmp_path,
                                                                   monkeypatch):
    from mlflow import MlflowClient

    name = seed(server, tmp_path)
    declare(project, server, name, 'alias = "champion"')
    assert project.run("lock").code == 0
    MlflowClient(tracking_uri=server).set_registered_model_alias(name, "champion", "2")
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "fresh"))  # another machine
    r = project.run("apply", "--locked")
    assert r.code == 0, r.err
    from reconcile.store import Store

    root = Store(tmp_path / "fresh").model_path(read_lock(project.lock).models["clf"])
    assert (root / "config.json").read_bytes() == version_files(1)["config.json"]
    assert project.run("lock", "--upgrade").code == 0
    assert read_lock(project.lock).models["clf"].pin["version"] == "2"


def test_mlflow_3_logged_models(project, server, tmp_path):
    name = seed(server, tmp_path, logged_model=True)
    declare(project, server, name, 'version = "2"')
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["clf"]
    assert m.pin["source"].startswith("models:/m-") and "/models/m-" in m.pin["artifacts"]
    assert project.run("apply").code == 0
    assert (installed(project) / "weights.bin").read_bytes() == version_files(2)["weights.bin"]


def log_pyfunc(url: str) -> str:
    """A pyfunc model (a python_model that doubles its input) logged and registered as
    version 1 by mlflow's own client; returns its name."""
    import mlflow.pyfunc

    class Doubler(mlflow.pyfunc.PythonModel):  # local: cloudpickle keeps it by value
        def predict(self, context, model_input, params=None):
            return [2 * x for x in model_input]

    name = f"pyfunc-{uuid.uuid4().hex[:8]}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    try:
        mlflow.set_experiment("reconcile-pyfunc")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=Doubler(),
                                    pip_requirements=["mlflow"], registered_model_name=name)
    finally:
        mlflow.set_tracking_uri(before)
    return name


def test_the_path_given_for_an_mlflow_model_loads_with_mlflow_pyfunc(project, server):
    """`reconcile path` and the Python API give an MLflow model's store tree, which
    mlflow.pyfunc loads (its HF snapshot, links into ../../blobs, mlflow refuses)."""
    import mlflow.pyfunc

    import reconcile

    name = log_pyfunc(server)
    declare(project, server, name, 'version = "1"')
    r = project.run("apply")
    assert r.code == 0, r.err
    path = project.run("path", "clf").out.strip()
    assert path == str(installed(project))
    assert list(mlflow.pyfunc.load_model(path).predict([1, 2, 3])) == [2, 4, 6]
    fetched = reconcile.fetch_model({"name": "clf", "validation": {"enable": False},
                                     "source": {"mlflow": {"trackingUri": server,
                                                           "modelName": name, "version": 1}}})
    assert fetched.path == fetched.store_path
    assert list(mlflow.pyfunc.load_model(str(fetched.path)).predict([5])) == [10]


def test_an_mlflow_model_with_a_directory_is_given_that_directory(project, server):
    import mlflow.pyfunc

    name = log_pyfunc(server)
    declare(project, server, name, 'version = "1"',
            extra='integration.directory = { path = "models/clf" }\n')
    assert project.run("apply").code == 0
    path = project.run("path", "clf").out.strip()
    assert path == str(project.dir / "models" / "clf")
    assert list(mlflow.pyfunc.load_model(path).predict([4])) == [8]


def test_missing_model_version_alias_and_a_dead_server(project, server, tmp_path):
    name = seed(server, tmp_path)
    for selector, needle in (('version = "9"', "version 9"), ('alias = "nope"', "alias 'nope'"),
                             ('stage = "Staging"', "no version in stage 'Staging'")):
        declare(project, server, name, selector)
        r = project.run("lock")
        assert r.code == 1 and needle in r.err and "Traceback" not in r.err, (selector, r.err)
    declare(project, server, "no-such-model", 'version = "1"')
    r = project.run("lock")
    assert r.code == 1 and "no-such-model" in r.err and "not found" in r.err, r.err
    declare(project, server, name, 'version = "1", alias = "champion"')
    r = project.run("lock")
    assert r.code == 2 and "exactly one of version, alias or stage" in r.err, r.err
    from tests.servers import free_port

    declare(project, f"http://127.0.0.1:{free_port()}", name, 'version = "1"',
            extra="network.retry = { maxAttempts = 1 }\n")
    r = project.run("lock")
    assert r.code == 1 and r.err.count("\n") <= 3, r.err


def test_mk_mlflow_is_the_seeds_factory(project, server, tmp_path, monkeypatch):
    import reconcile
    from reconcile.sources import mk_mlflow

    name = seed(server, tmp_path)
    monkeypatch.setenv("MLFLOW_TOKEN", "a-token-the-open-server-ignores")
    mlf = mk_mlflow(tracking_uri=server, default_auth={"tokenEnvVar": "MLFLOW_TOKEN"})
    path = reconcile.fetch_model({"name": "clf", "source": mlf({"name": name, "version": "2"}),
                                  "validation": {"enable": False}})
    assert (Path(path) / "sub/tok.txt").read_bytes() == version_files(2)["sub/tok.txt"]


# --- auth ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-auth"), admin_password=PASSWORD) as url:
        yield url


def test_basic_auth_from_mlflows_variables_never_written_anywhere(project, auth_server, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    name = seed(auth_server, tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    declare(project, auth_server, name, 'version = "1"')
    r = project.run("lock")
    assert r.code == 1 and "not authenticated" in r.err and "MLFLOW_TRACKING_USERNAME" in r.err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "ignored-when-a-password-is-set")
    r = project.run("lock")
    assert r.code == 1 and "not authenticated" in r.err
    # a password was sent: it is the one to check, not a variable already set (#33)
    assert "refused" in r.err and "MLFLOW_TRACKING_PASSWORD" in r.err, r.err
    assert "set MLFLOW_TRACKING_USERNAME" not in r.err and "wrong-password" not in r.err, r.err
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    r = project.run("lock")
    assert r.code == 1 and "refused" in r.err and "MLFLOW_TRACKING_TOKEN" in r.err, r.err
    assert "ignored-when" not in r.err, r.err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    r = project.run("lock")
    assert r.code == 0, r.err
    r2 = project.run("apply")
    assert r2.code == 0, r2.err
    assert (installed(project) / "weights.bin").read_bytes() == version_files(1)["weights.bin"]
    for text in (project.lock.read_text(), r.out + r.err + r2.out + r2.err):
        assert PASSWORD not in text
    for p in project.store.rglob("*"):
        if p.is_file():
            assert PASSWORD.encode() not in p.read_bytes(), p


# --- artifacts on S3 --------------------------------------------------------------------


def test_artifacts_on_s3_come_through_the_s3_source(project, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from tests.servers import moto_s3

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    from reconcile.sources import s3

    s3._signers.clear()
    with moto_s3() as endpoint:
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlflow-artifacts")
        env = {k: os.environ[k] for k in os.environ if k.startswith(("AWS_", "MLFLOW_S3"))}
        with mlflow_server(tmp_path / "srv", artifact_root="s3://mlflow-artifacts/root",
                           env=env) as url:
            name = seed(url, tmp_path)
            declare(project, url, name, 'alias = "champion"')
            monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")  # reconcile's side only: AWS's S3
            for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                monkeypatch.delenv(var, raising=False)
            r = project.run("lock")
            assert r.code == 1 and "Traceback" not in r.err, r.err
            assert "MLFLOW_S3_ENDPOINT_URL" in r.err and "AWS_ENDPOINT_URL_S3" in r.err, r.err
            monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
            r = project.run("lock")
            assert r.code == 0, r.err
            m = read_lock(project.lock).models["clf"]
            assert m.pin["artifacts"].startswith("s3://mlflow-artifacts/root/")
            assert project.run("apply").code == 0
            for rel, data in version_files(1).items():
                assert (installed(project) / rel).read_bytes() == data
    s3._signers.clear()


def test_a_hand_edited_lock_cannot_point_elsewhere(project, server, tmp_path):
    name = seed(server, tmp_path)
    declare(project, server, name, 'version = "1"')
    assert project.run("lock").code == 0
    text = project.lock.read_text()
    where = read_lock(project.lock).models["clf"].pin["artifacts"]
    for old, new in ((where, "mlflow-artifacts:/../../etc"), (where, "file:///etc"),
                     ('version = "1"', 'version = "2"'), (server, "http://127.0.0.1:9")):
        project.lock.write_text(text.replace(old, new))
        r = project.run("apply", "--locked")
        assert r.code != 0 and "models.lock" in r.err, (new, r.err)


def test_a_version_that_is_not_ready_is_refused_naming_its_status(project, server, tmp_path):
    """A front that reports the version still registering (as a slow artifact copy does)."""
    import http.server
    import threading
    import urllib.request

    name = seed(server, tmp_path)

    class Front(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with urllib.request.urlopen(server + self.path) as r:
                body = r.read()
            if "model-versions/get?" in self.path:
                body = body.replace(b'"READY"', b'"PENDING_REGISTRATION"')
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        declare(project, f"http://127.0.0.1:{front.server_address[1]}", name, 'version = "2"')
        r = project.run("lock")
        assert r.code == 1 and "version 2 is PENDING_REGISTRATION, not READY" in r.err, r.err
    finally:
        front.shutdown()


def test_a_version_whose_registration_failed_is_not_to_be_waited_for(project, server,
                                                                      server_dir, tmp_path):
    """FAILED_REGISTRATION is final in MLflow (a version's status only moves from
    PENDING_REGISTRATION): the version is set so in the server's own backend store, as a
    registry plugin whose copy failed leaves it, and read back through the REST API."""
    import sqlite3

    name = seed(server, tmp_path)
    with sqlite3.connect(server_dir / "mlflow.db") as db:
        db.execute("UPDATE model_versions SET status = 'FAILED_REGISTRATION', status_message ="
                   " 'artifact copy failed' WHERE name = ? AND version = 2", (name,))
    declare(project, server, name, 'version = "2"')
    r = project.run("lock")
    assert r.code == 1 and "version 2 is FAILED_REGISTRATION" in r.err, r.err
    assert "artifact copy failed" in r.err and "will not become READY" in r.err, r.err
    assert "wait" not in r.err and "register" in r.err, r.err


def test_add_writes_the_tracking_uri_it_used_and_takes_latest(project, server, tmp_path,
                                                               monkeypatch):
    """`add models:/…` with MLFLOW_TRACKING_URI set writes that server into models.toml, so
    the manifest is valid where the variable is not set (a teammate, CI, the hook);
    models:/name/latest is MLflow's newest version; models:/m-<id> is named for what it is."""
    name = seed(server, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    r = project.run("add", f"models:/{name}@champion")
    assert r.code == 0, r.err
    assert f'trackingUri = "{server}"' in project.manifest.read_text()
    r = project.run("add", f"models:/{name}/latest", "--name", "newest")
    assert r.code == 0, r.err
    lock = read_lock(project.lock)
    assert lock.models["newest"].pin["version"] == "2"
    assert lock.models[name].pin["version"] == "1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    r = project.run("lock", "--check")
    assert r.code == 0, r.err
    r = project.run("add", "models:/m-0123456789abcdef", "--no-lock")
    assert r.code == 2 and "logged model" in r.err and "stage" not in r.err, r.err
