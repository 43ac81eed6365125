"""`source.mlflow`: a registered model version of an MLflow tracking server, pinned.

    selector   exactly one of version, alias (MLflow's pointer) or stage (the seed's;
               deprecated by MLflow, still served) → a version, which must be READY
    location   get-download-uri, resolved as MLflow resolves it: ``runs:/<run>/<sub>``
               through the run's artifact root, ``models:/m-<id>`` (MLflow 3 logged
               models) through the logged model, ``mlflow-artifacts:/…`` (the server's
               artifact proxy), or ``s3://bucket/prefix`` (the client's own AWS
               credentials, through the S3 source)
    files      the artifact listing, walked (MLflow lists one level a call); MLflow
               gives no content hash, so every file is downloaded once at lock time,
               into the store, in parallel
    pin        name, version, run id, the version's source and the resolved location;
               an alias or stage moved after lock changes nothing until --upgrade

Auth as the mlflow client reads it: MLFLOW_TRACKING_USERNAME + MLFLOW_TRACKING_PASSWORD
(Basic; they win, as in mlflow), else MLFLOW_TRACKING_TOKEN (Bearer), else the model's
``auth``. Credentials go to the tracking server only; never to storage it redirects to.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .. import settings
from ..errors import AuthRequired, NotFound, SourceError
from ..paths import check_relpath
from .base import HttpSource, RemoteFile, Resolution

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
VERSION = re.compile(r"^[0-9]{1,9}$")
NAME = re.compile(r"^[^\x00-\x1f/]{1,256}$")
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
STAGES = ("None", "Staging", "Production", "Archived")
# The artifact listing is walked a directory per call, for as long as the server names
# directories: one that never ends (a directory inside every directory) or names a
# million entries is refused past these caps, far above any model.
MAX_DEPTH = 64
MAX_ENTRIES = 100_000
# where an S3-compatible artifact store is named (mlflow's variable, then boto3's)
S3_ENDPOINT_VARS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
AUTH_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or"
             " MLFLOW_TRACKING_TOKEN), or auth in models.toml")


class MlflowSource(HttpSource):
    type = "mlflow"
    # mlflow.pyfunc.load_model refuses the HF snapshot's links into ../../blobs ("resolved
    # path is outside the artifact directory"); the store tree is the model's own layout
    path_target = "store"
    OPTIONS: dict[str, Any] = {"trackingUri": "str", "modelName": "str", "name": "str",
                               "version": "str|int", "stage": "str", "alias": "str"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        uri = opts.get("trackingUri") or settings.env_value("MLFLOW_TRACKING_URI")
        if not uri:
            raise ValueError('trackingUri: required, e.g. trackingUri = "https://mlflow.internal"'
                             " (or MLFLOW_TRACKING_URI)")
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"trackingUri: {uri!r} is not the http(s) URL of a tracking server")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("trackingUri: give the server's URL only (no user:password@, no"
                             f" query); {AUTH_HINT}")
        name = opts.get("modelName") or opts.get("name")
        if not name:
            raise ValueError('modelName: required, e.g. modelName = "classifier"')
        if opts.get("modelName") and opts.get("name") and opts["modelName"] != opts["name"]:
            raise ValueError("name: give modelName or name (the seed's factory), not both")
        if not NAME.match(name):
            raise ValueError(f"modelName: {name!r} is not a registered model name")
        chosen = [k for k in ("version", "stage", "alias") if opts.get(k) not in (None, "")]
        if len(chosen) != 1:
            raise ValueError(f"{chosen[1] if len(chosen) > 1 else 'version'}: give exactly one of"
                             " version, alias or stage"
                             + (f" (found {', '.join(chosen)})" if chosen else ""))
        out: dict[str, Any] = {"trackingUri": uri.rstrip("/"), "modelName": name}
        key = chosen[0]
        value = str(opts[key])
        if key == "version" and value.lower() == "latest":
            value = "latest"  # models:/name/latest: the newest version, whatever its stage
        elif key == "version" and not VERSION.match(value):
            raise ValueError(f"version: {value!r} is not a version number such as \"3\""
                             ' or "latest"')
        if key == "alias" and not ALIAS.match(value.lstrip("@")):
            raise ValueError(f"alias: {value!r} is not an alias name")
        if key == "stage" and value.capitalize() not in STAGES:
            raise ValueError(f"stage: {value!r} is not one of {', '.join(STAGES)}")
        out[key] = {"alias": value.lstrip("@"), "stage": value.capitalize()}.get(key, value)
        return out

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        """The artifact location comes from the server, not models.toml: a hand-edited
        one must at least name a proxied path or an S3 prefix, never climb out of one."""
        super().check_pin(pin, options)
        if not VERSION.match(str(pin.get("version", ""))):
            raise ValueError(f"version: {pin.get('version')!r} is not a version number")
        where = str(pin.get("artifacts", ""))
        try:
            if where.startswith("mlflow-artifacts:/"):
                check_relpath(where[len("mlflow-artifacts:/"):])
            elif where.startswith("s3://"):
                from .s3 import S3Source

                bucket, _, prefix = where[5:].partition("/")
                S3Source.check_options({"bucket": bucket, "prefix": prefix})
            else:
                raise ValueError("neither mlflow-artifacts:/ nor s3://")
        except ValueError as e:
            raise ValueError(f"artifacts: {where[:200]!r} is not an artifact location ({e})"
                             ) from None

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self.base = self.options["trackingUri"]
        self._s3: Any = None

    # --- transport ----------------------------------------------------------------------

    @property
    def credentials(self) -> Any:
        """mlflow's own precedence: username/password, then the token, then models.toml."""
        if self._credentials is None:
            from ..auth import Credentials

            auth = self.decl.auth
            if not any(dataclasses.asdict(auth).values()) and settings.env_value(
                    "MLFLOW_TRACKING_USERNAME") and settings.env_value("MLFLOW_TRACKING_PASSWORD"):
                auth = dataclasses.replace(auth, username_env_var="MLFLOW_TRACKING_USERNAME",
                                           password_env_var="MLFLOW_TRACKING_PASSWORD")
            self._credentials = Credentials(
                auth, lambda: settings.env_value("MLFLOW_TRACKING_TOKEN"))
        return self._credentials

    def _sent(self) -> tuple[str, str] | None:
        """What a refused request carried, named by where it was read (never its value),
        and what to check: a wrong password is not answered with "set
        MLFLOW_TRACKING_USERNAME" when that is set already. None: nothing was sent."""
        a = self.credentials.auth
        if self.credentials.anonymous:
            return None
        if a.username_env_var:
            where = a.password_env_var or a.password_file
            but = (": MLFLOW_TRACKING_TOKEN is not used while both are set, as in mlflow"
                   if a.username_env_var == "MLFLOW_TRACKING_USERNAME" else "")
            return (f"the password in {where} (user from {a.username_env_var})",
                    f"check {where} and {a.username_env_var}{but}")
        where = a.token_env_var or a.token_file or "MLFLOW_TRACKING_TOKEN"
        return (f"the token in {where}", f"check {where}: a wrong or expired token, or one"
                " for another server")

    def api(self, endpoint: str, what: str, **params: str) -> dict[str, Any]:
        """GET a REST endpoint; its error named, with what was asked for."""
        from ..http import call
        from ..transport import RetryPolicy

        url = f"{self.base}{endpoint}" + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept": "application/json", **self.credentials.headers()}
        r = RetryPolicy.of(self.decl.network).run(
            lambda: call("GET", url, headers, self.decl.network))
        if r.status_code < 300:
            try:
                doc = json.loads(r.content or b"{}")
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise SourceError(f"{self.base}: {what}: the answer is not MLflow's JSON")
            return doc
        raise self._error(r, what)

    def _error(self, r: Any, what: str) -> SourceError:
        code, message = "", ""
        if "json" in (r.headers.get("Content-Type") or ""):
            try:
                doc = json.loads(r.content)
                code, message = str(doc.get("error_code", "")), str(doc.get("message", ""))
            except (ValueError, AttributeError):
                pass
        message = "".join(c for c in message[:200] if c.isprintable())
        if r.status_code == 401:
            sent = self._sent()
            if sent is None:
                return AuthRequired(f"{self.base}: {what}: not authenticated (HTTP 401)",
                                    hint=AUTH_HINT)
            return AuthRequired(f"{self.base}: {what}: not authenticated (HTTP 401): the"
                                f" server refused {sent[0]}", hint=sent[1])
        if r.status_code == 403:
            return AuthRequired(f"{self.base}: {what}: permission denied (HTTP 403)",
                                hint="ask the server's admin for READ on the model")
        if r.status_code == 404 or code == "RESOURCE_DOES_NOT_EXIST" or (
                "alias" in what and code == "INVALID_PARAMETER_VALUE"):
            return NotFound(f"{self.base}: {what}: not found" + (f" ({message})" if message
                                                                 else ""))
        return SourceError(f"{self.base}: {what}: HTTP {r.status_code}"
                           + (f" {code}: {message}" if code else ""))

    # --- lock ---------------------------------------------------------------------------

    def resolve(self) -> Resolution:
        version = self.version()
        name, number = self.options["modelName"], version["version"]
        self._check_ready(version)
        uri = self.api(f"{API}/model-versions/get-download-uri", f"model {name!r} version"
                       f" {number}", name=name, version=number).get("artifact_uri", "")
        location = self.location(str(uri), version)
        pin = {"trackingUri": self.base, "modelName": name, "version": number,
               "runId": str(version.get("run_id") or ""), "source": str(version.get("source", "")),
               "artifacts": location}
        for k in ("alias", "stage"):
            if k in self.options:
                pin[k] = self.options[k]
        if location.startswith("s3://"):
            with self._on_s3(location):
                files = self.s3(location).resolve().files
        else:
            files = self.listing(location)
        if not files:
            raise NotFound(f"{self.base}: model {name!r} version {number}: no artifacts at"
                           f" {location}")
        return Resolution(pin=pin, files=files)

    def _check_ready(self, version: dict[str, Any]) -> None:
        """Only a READY version has its artifacts in place. PENDING_REGISTRATION may
        become READY; FAILED_REGISTRATION is final in MLflow: waiting never helps."""
        name, number = self.options["modelName"], version["version"]
        status = str(version.get("status"))
        if status == "READY":
            return
        why = "".join(c for c in str(version.get("status_message") or "")[:200]
                      if c.isprintable())
        said = f"{self.base}: model {name!r} version {number} is {status}" + (
            f" ({why})" if why else "")
        if status == "FAILED_REGISTRATION":
            raise SourceError(f"{said}: its registration failed and it will not become READY",
                              hint="pick another version (or move the alias or stage to one),"
                              " or register the model again as a new version")
        raise SourceError(f"{said}, not READY", hint="wait for it to finish registering, or"
                          " pick another version")

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        return self._resolve_with(version=pin["version"], alias=None, stage=None)

    def version(self) -> dict[str, Any]:
        """The model version the declaration names now."""
        name = self.options["modelName"]
        if self.options.get("version") == "latest":
            doc = {"model_version": self._latest(name)}
        elif "version" in self.options:
            v = self.options["version"]
            doc = self.api(f"{API}/model-versions/get", f"model {name!r} version {v}",
                           name=name, version=v)
        elif "alias" in self.options:
            a = self.options["alias"]
            doc = self.api(f"{API}/registered-models/alias", f"model {name!r} alias {a!r}",
                           name=name, alias=a)
        else:
            s = self.options["stage"]
            self.api(f"{API}/registered-models/get", f"model {name!r}", name=name)
            versions = self.api(f"{API}/registered-models/get-latest-versions",
                                f"model {name!r} stage {s!r}", name=name,
                                stages=s).get("model_versions") or []
            if not versions:
                raise NotFound(f"{self.base}: model {name!r} has no version in stage {s!r}")
            doc = {"model_version": max(versions, key=lambda v: int(v.get("version", 0)))}
        version = doc.get("model_version")
        if not isinstance(version, dict) or not VERSION.match(str(version.get("version", ""))):
            raise SourceError(f"{self.base}: model {name!r}: the server gave no model version")
        return version

    def _latest(self, name: str) -> dict[str, Any]:
        """The highest version number of ``name``, as MLflow reads models:/name/latest
        (get-latest-versions without stages gives the newest of each stage)."""
        self.api(f"{API}/registered-models/get", f"model {name!r}", name=name)
        versions = self.api(f"{API}/registered-models/get-latest-versions",
                            f"model {name!r}", name=name).get("model_versions") or []
        if not versions:
            raise NotFound(f"{self.base}: model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.get("version", 0)))

    def location(self, uri: str, version: dict[str, Any]) -> str:
        """The artifact location a download URI names: mlflow-artifacts:/<path> or s3://…"""
        if uri.startswith("runs:/"):
            run, _, sub = uri[len("runs:/"):].partition("/")
            info = self.api(f"{API}/runs/get", f"run {run}", run_id=run).get("run", {})
            root = str((info.get("info") or {}).get("artifact_uri", ""))
            uri = root.rstrip("/") + ("/" + sub.strip("/") if sub.strip("/") else "")
        elif uri.startswith("models:/m-"):
            model_id = uri[len("models:/"):].split("/")[0]
            doc = self.api(f"{API}/logged-models/{quote(model_id)}", f"logged model {model_id}")
            uri = str(((doc.get("model") or {}).get("info") or {}).get("artifact_uri", ""))
        if uri.startswith("mlflow-artifacts:"):
            path = urlsplit(uri).path.strip("/")
            return "mlflow-artifacts:/" + self._checked(path, uri)
        if uri.startswith("s3://"):
            return uri.rstrip("/") + "/"
        raise SourceError(f"{self.base}: the artifacts are at {uri.split('?')[0][:200]!r},"
                          " which the server does not proxy and reconcile cannot reach",
                          hint="serve artifacts through the tracking server (--serve-artifacts),"
                          " or store them on S3")

    def _checked(self, path: str, what: str) -> str:
        try:
            return check_relpath(path)
        except ValueError as e:
            raise SourceError(f"{self.base}: {what}: {e}") from None

    def listing(self, location: str) -> list[RemoteFile]:
        """Every file under a proxied location (MLflow lists one directory per call)."""
        root = location[len("mlflow-artifacts:/"):]
        files: list[RemoteFile] = []
        todo, depth, seen = [""], 0, 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            while todo:
                depth += 1
                if depth > MAX_DEPTH:
                    raise self._runaway(location, f"more than {MAX_DEPTH} directory levels")
                pages = list(pool.map(lambda d: (d, self._list(root, d)), todo))
                todo = []
                for d, entries in pages:
                    seen += len(entries)
                    if seen > MAX_ENTRIES:
                        raise self._runaway(location, f"more than {MAX_ENTRIES} entries")
                    for e in entries:
                        rel = self._checked(f"{d}/{e['path']}".strip("/"), location)
                        if e.get("is_dir"):
                            todo.append(rel)
                        else:
                            size = e.get("file_size")
                            files.append(RemoteFile(rel, size if isinstance(size, int) else None))
        return sorted(files, key=lambda f: f.path)

    def _runaway(self, location: str, why: str) -> SourceError:
        """A listing too big or too deep to be one model's (or one that never ends)."""
        return SourceError(
            f"{self.base}: artifacts at {location}: {why}; refused, nothing was locked (a"
            " model is not that many files: register a version with fewer artifacts)"
        )

    def _list(self, root: str, sub: str) -> list[dict[str, Any]]:
        path = f"{root}/{sub}" if sub else root
        entries = self.api(ARTIFACTS, f"artifacts at {path}", path=path).get("files") or []
        out = []
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("path"), str):
                raise SourceError(f"{self.base}: artifacts at {path}: an entry with no path")
            name = e["path"].rsplit("/", 1)[-1]  # a name in this directory, never a path
            out.append({**e, "path": name})
        return out

    # --- s3 -----------------------------------------------------------------------------

    def s3(self, location: str) -> Any:
        """The S3 source for an s3:// artifact location, with the client's AWS credentials
        (MLFLOW_S3_ENDPOINT_URL, as mlflow reads it, for S3-compatible stores)."""
        if self._s3 is None:
            from .s3 import S3Source

            bucket, _, prefix = location[len("s3://"):].partition("/")
            opts: dict[str, Any] = {"bucket": bucket, "prefix": prefix}
            endpoint = settings.env_value("MLFLOW_S3_ENDPOINT_URL")
            if endpoint:
                opts["endpoint"] = endpoint
            try:
                opts = S3Source.check_options(opts)
            except ValueError as e:
                raise SourceError(f"{self.base}: artifact location {location}: {e}") from None
            # S3 takes no auth from models.toml: the AWS chain only
            decl = dataclasses.replace(self.decl, source=opts, auth=type(self.decl.auth)())
            self._s3 = S3Source(decl, self.context)
        return self._s3

    @contextmanager
    def _on_s3(self, location: str) -> Iterator[None]:
        """With no endpoint set, S3 means AWS's own: artifacts on MinIO or another
        S3-compatible store then fail as an unknown host or a refused key. The mlflow
        client needs MLFLOW_S3_ENDPOINT_URL there, and so does reconcile: say so."""
        try:
            yield
        except SourceError as e:
            if any(settings.env_value(v) for v in S3_ENDPOINT_VARS):
                raise
            # the S3 source's own hint is kept unless it points at models.toml, where an
            # mlflow model has no endpoint to set
            aws = f"; if they are on AWS: {e.hint}" if e.hint and "models.toml" not in e.hint \
                else ""
            e.hint = (f"the artifacts are at {location.split('?')[0][:200]} and no S3 endpoint"
                      " is set, so AWS's own S3 was asked: for MinIO or another S3-compatible"
                      " store set MLFLOW_S3_ENDPOINT_URL (as the mlflow client does) or"
                      " AWS_ENDPOINT_URL_S3 to its URL" + aws)
            raise

    # --- apply --------------------------------------------------------------------------

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        fp = (file.pin if file is not None else None) or {}
        return fp.get("versionId") or fp.get("etag") or None

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        location = str(pin.get("artifacts", ""))
        if location.startswith("s3://"):
            with self._on_s3(location):
                yield from self.s3(location).open(pin, file, start, end)
            return
        from ..http import check_answer, stream

        root = location[len("mlflow-artifacts:/"):]
        url = f"{self.base}{ARTIFACTS}/{quote(root)}/{quote(file.path)}"
        what = f"{self.base}: artifact {file.path} of model {pin.get('modelName')!r}" \
               f" version {pin.get('version')}"
        length = (file.size if end is None else end) - start if file.size else None
        yield from stream(lambda: self.client, url, start=start, end=end,
                          headers=self.credentials.headers(), length=length,
                          network=self.decl.network,
                          raise_for_status=lambda r: check_answer(
                              r, what, missing="no longer on the server", denied=AUTH_HINT))

    def close(self) -> None:
        super().close()
        if self._s3 is not None:
            self._s3.close()


SOURCE = MlflowSource
