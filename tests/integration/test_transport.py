"""One transport for every source: TLS trust, proxies, credentials, safe resume, Ctrl-C.

Real servers on 127.0.0.1: nginx with a CA the test makes (a company's CA), Debian's
tinyproxy, and a small Range server for what nginx cannot be told to do (no ETag,
content that changes, connections that drop, a token that expires midway).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.servers import RangeServer, access_log, make_ca, nginx, nginx_binary, tinyproxy

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(nginx_binary() is None, reason="needs nginx-light")]

SMALL = os.urandom(1024)
BIG = os.urandom(64 << 20)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory):
    """nginx over https with a certificate from a private CA; (url, ca.pem, work dir)."""
    tmp = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca(tmp / "pki")
    root = tmp / "site"
    root.mkdir()
    (root / "small.bin").write_bytes(SMALL)
    (root / "big.bin").write_bytes(BIG)
    with nginx(root, tmp / "nginx", tls=(cert, key)) as url:
        yield url, ca, tmp / "nginx"


def decl(url: str, name: str, data: bytes, extra: str = "") -> str:
    return (f'[models.{name.split(".")[0]}]\nsource.url = {{ url = "{url}/{name}",'
            f' sha256 = "{sha(data)}" }}\nvalidation.preset = "none"\n{extra}')


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "caBundle"])
def test_a_company_ca_is_trusted_by_both_implementations(project, tls_site, monkeypatch, how):
    """The 1 KiB file goes through httpx, the 64 MiB one through the http.client fast
    path; both must trust the same CA, given either way."""
    url, ca, _ = tls_site
    extra = ""
    if how == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    else:
        shutil.copy(ca, project.dir / "company-ca.pem")
        extra = 'network.caBundle = "company-ca.pem"\n'
    project.write(decl(url, "small.bin", SMALL, extra) + "\n"
                  + decl(url, "big.bin", BIG, extra.replace("[", "")))
    r = project.run("apply")
    assert r.code == 0, r.err
    assert Path(project.run("path", "big").out.strip(), "big.bin").read_bytes() == BIG
    assert Path(project.run("path", "small").out.strip(), "small.bin").read_bytes() == SMALL


@pytest.mark.parametrize("transport", ["httpx", "direct"])
def test_an_untrusted_certificate_is_one_clear_error_and_not_retried(project, tls_site,
                                                                      monkeypatch, transport):
    url, _ca, work = tls_site
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if transport == "direct" else str(1 << 62))
    project.write(decl(url, "small.bin", SMALL))
    before = len(access_log(work))
    r = project.run("apply")
    assert r.code == 1
    assert "127.0.0.1: TLS certificate not trusted" in r.err
    assert "SSL_CERT_FILE" in r.err and "network.caBundle" in r.err
    assert "giving up after" not in r.err and "Traceback" not in r.err
    assert len(access_log(work)) == before  # no request ever got through


def test_https_through_a_proxy_uses_connect_in_the_fast_path(project, tls_site, tmp_path,
                                                              monkeypatch):
    url, ca, _ = tls_site
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with tinyproxy(tmp_path / "tp") as (proxy, log):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        project.write(decl(url, "big.bin", BIG))
        r = project.run("apply")
        assert r.code == 0, r.err
        text = log.read_text()
    port = url.rsplit(":", 1)[1]
    # http.client's tunnel speaks HTTP/1.0 (httpx, for the HEAD, 1.1): the 64 MiB body
    # really went through the proxy on the fast path
    assert f"CONNECT 127.0.0.1:{port} HTTP/1.0" in text, text[-2000:]
    assert Path(project.run("path", "big").out.strip(), "big.bin").read_bytes() == BIG


def test_a_url_with_credentials_is_refused_before_anything_is_written(project):
    project.write('[models.w]\nsource.url = { url = "https://bob:hunter2@example.invalid/w.bin" }\n')
    r = project.run("lock")
    assert r.code == 2 and "models.w.source.url.url" in r.err and "auth" in r.err
    assert "hunter2" not in r.err + r.out
    assert not project.lock.exists()


def test_a_token_that_expires_mid_download_is_renewed_once(project, tmp_path):
    """A sidecar rotates the token file; the server refuses the old token midway. The
    transfer reads the file again once and finishes, verified."""
    data = os.urandom(6 << 20)
    token_file = tmp_path / "token"
    token_file.write_text("tok-1")
    srv = RangeServer({"/w.bin": data}, etag=True)
    srv.token, srv.next_token, srv.rotate_after = "tok-1", "tok-2", 2 << 20
    srv.on_rotate = lambda: token_file.write_text("tok-2")
    with srv as url:
        project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin", sha256 = "{sha(data)}" }}\n'
                      f'auth.tokenFile = "{token_file}"\nvalidation.preset = "none"\n'
                      'network.retry = { baseDelay = 0.01 }\n'
                      'network.bandwidth = { limit = "8M" }\n')  # throttled: ~0.75 s
        r = project.run("apply")
    assert r.code == 0, r.err
    gets = [e for e in srv.log if e[0] == "GET"]
    assert [e[3] for e in gets] == [200, 401, 206], gets  # resumed, not restarted
    assert gets[-1][2] == f"bytes={2 << 20}-"
    assert Path(project.run("path", "w").out.strip(), "w.bin").read_bytes() == data


def test_no_etag_and_a_file_that_changes_between_attempts_is_never_spliced(project):
    """Without ETag or Last-Modified nothing tells a resumed prefix from new bytes: at
    lock time (the bytes become the truth) a retry starts over, and so does the next run."""
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    srv = RangeServer({"/w.bin": old})
    with srv as url:
        project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin" }}\n'
                      'validation.preset = "none"\nnetwork.retry = { maxAttempts = 1 }\n')
        srv.drop_after = 1
        assert project.run("lock").code == 1  # dropped midway, one attempt allowed
        srv.files["/w.bin"] = new
        r = project.run("lock")
        assert r.code == 0, r.err
        assert read_lock(project.lock).models["w"].files[0].sha256 == sha(new)
        # within one run too: the file changes after a drop, the retry starts over
        project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin" }}\n'
                      'validation.preset = "none"\nnetwork.retry = { baseDelay = 0.01 }\n')
        srv.drop_after = 1
        srv.files["/w.bin"] = old
        newer = os.urandom(3 << 20)
        real_log = srv.log

        class Swap(list):
            def append(self, item):  # the file changes right after the first GET
                super().append(item)
                if item[0] == "GET":
                    srv.files["/w.bin"] = newer

        srv.log = Swap(real_log)
        r = project.run("lock", "--upgrade")
        assert r.code == 0, r.err
    assert read_lock(project.lock).models["w"].files[0].sha256 == sha(newer)
    assert all(e[2] is None for e in srv.log if e[0] == "GET")  # never a Range


def test_basic_auth_secrets_stay_out_of_lock_store_output_and_validators(project, tmp_path,
                                                                          monkeypatch):
    import base64

    data = os.urandom(100_000)
    monkeypatch.setenv("CORP_USER", "alice")
    monkeypatch.setenv("CORP_PW", "s3cret-pa55word")
    srv = RangeServer({"/w.bin": data}, etag=True)
    srv.token = None
    with srv as url:
        project.write(
            f'[models.w]\nsource.url = {{ url = "{url}/w.bin" }}\n'
            'auth = { usernameEnvVar = "CORP_USER", passwordEnvVar = "CORP_PW" }\n'
            'validation = { skipDefaults = true, validators = ["env-check"] }\n'
            '[validators.env-check]\ncommand = \'env | grep -q s3cret && exit 1 || exit 0\'\n')
        r = project.run("apply")
    assert r.code == 0, r.err
    expected = "Basic " + base64.b64encode(b"alice:s3cret-pa55word").decode()
    assert srv.seen_auth and all(a == expected for a in srv.seen_auth)
    assert "s3cret" not in r.out + r.err + project.lock.read_text()
    for p in project.store.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert b"s3cret" not in p.read_bytes(), p


def test_a_validator_does_not_see_variables_models_toml_names_for_secrets(project, monkeypatch):
    monkeypatch.setenv("MY_REGISTRY_PW", "very-private")
    monkeypatch.setenv("PLAIN_SETTING", "visible")
    project.write(
        '[models.m]\nsource.mock = { org = "acme", model = "m", files = ["config.json"] }\n'
        'auth = { usernameEnvVar = "PLAIN_USER", passwordEnvVar = "MY_REGISTRY_PW" }\n'
        'validation = { skipDefaults = true, validators = ["env-check"] }\n'
        '[validators.env-check]\n'
        'env = ["PLAIN_SETTING", "MY_REGISTRY_PW"]\n'  # a secret's variable passes never
        'command = \'test -z "${MY_REGISTRY_PW:-}" && test "$PLAIN_SETTING" = visible\'\n')
    monkeypatch.setenv("PLAIN_USER", "bob")
    r = project.run("apply")
    assert r.code == 0, r.err


@pytest.fixture
def slow_site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    data = os.urandom(48 << 20)
    (root / "w.bin").write_bytes(data)
    with nginx(root, tmp_path / "ng", extra="location / { limit_rate 2m; }") as url:
        yield url, data, tmp_path / "ng"


@pytest.mark.parametrize("mode", ["stream", "ranges"])
def test_ctrl_c_stops_a_download_within_a_second_and_the_next_apply_resumes(
        project, slow_site, monkeypatch, mode):
    import pty
    import signal
    import subprocess
    import sys

    url, data, work = slow_site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin", sha256 = "{sha(data)}" }}\n'
                  'validation.preset = "none"\n')
    env = {**os.environ, "RECONCILE_DIRECT_MIN": "0"}
    if mode == "ranges":
        env["RECONCILE_PARALLEL_MIN"] = str(1 << 20)
    master, slave = pty.openpty()  # a terminal, as a person pressing Ctrl-C has
    p = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(project.manifest),
                          "apply", "--jobs", "4"], stdin=slave, stdout=slave, stderr=slave,
                         env=env, start_new_session=True)
    os.close(slave)
    tmp = project.store / "tmp"

    def arrived() -> int:
        """Bytes on disk so far: the stream's partial, or what the ranges recorded."""
        import json

        total = sum(f.stat().st_size for f in tmp.glob("*.part")) if tmp.exists() else 0
        for f in tmp.glob("*.ranges.json") if tmp.exists() else ():
            try:
                doc = json.loads(f.read_text())
            except ValueError:
                continue
            total += sum(d - b for d, (b, _) in zip(doc["done"], doc["bounds"], strict=True))
        return total

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and arrived() < (4 << 20):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # what the terminal sends to the foreground group
    sent = time.monotonic()
    p.wait(timeout=10)
    stopped = time.monotonic() - sent
    out = b""
    try:
        while chunk := os.read(master, 65536):
            out += chunk
    except OSError:
        pass
    os.close(master)
    text = out.decode("utf-8", "replace")
    assert p.returncode == 130, text
    assert stopped < 1.5, stopped
    assert "Traceback" not in text and "partial download kept" in text, text
    assert list(tmp.glob("*.part*")), "the partial is kept"
    log_before = len(access_log(work))
    r = project.sh("apply", "--jobs", "4")
    assert r.code == 0, r.err
    second = access_log(work)[log_before:]
    sent = sum(int(line.split('"')[2].split()[1]) for line in second)
    assert 0 < sent <= len(data) - (2 << 20), "the next apply resumes, it does not start over"
    assert all(" 206 " in line for line in second)
    assert Path(project.run("path", "w").out.strip(), "w.bin").read_bytes() == data


@pytest.mark.parametrize("transport", ["httpx", "direct"])
def test_credentials_never_follow_a_redirect_to_another_origin(project, monkeypatch, transport):
    """Both implementations follow redirects by one rule: the token reaches the origin
    it was given for, never the CDN or bucket a redirect points to."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if transport == "direct" else str(1 << 62))
    monkeypatch.setenv("CORP_TOKEN", "tok-secret")
    data = os.urandom(200_000)
    cdn = RangeServer({"/blob": data}, etag=True)
    origin = RangeServer({}, etag=True)
    with cdn as cdn_url, origin as origin_url:
        origin.redirects["/w.bin"] = f"{cdn_url}/blob"
        project.write(f'[models.w]\nsource.url = {{ url = "{origin_url}/w.bin", sha256 ='
                      f' "{sha(data)}" }}\nauth.tokenEnvVar = "CORP_TOKEN"\n'
                      'validation.preset = "none"\n')
        r = project.run("apply")
    assert r.code == 0, r.err
    assert origin.seen_auth and all(a == "Bearer tok-secret" for a in origin.seen_auth)
    assert cdn.seen_auth and not any(cdn.seen_auth), cdn.seen_auth


def test_every_request_follows_the_one_retry_policy(project):
    """The url source's HEAD at lock time is retried like a transfer, Retry-After and all;
    a 404 is not retried."""
    data = os.urandom(1000)
    srv = RangeServer({"/w.bin": data}, etag=True)
    with srv as url:
        srv.fail_next = [(503, {"Retry-After": "0"}), (429, {}), (500, {})]
        project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin" }}\n'
                      'validation.preset = "none"\n'
                      'network.retry = { maxAttempts = 4, baseDelay = 0.01, maxDelay = 0.05 }\n')
        r = project.run("lock")
        assert r.code == 0, r.err
        assert [e[3] for e in srv.log[:4]] == [503, 429, 500, 200]
        assert srv.log[0][0] == "HEAD"
        srv.log.clear()
        project.write(f'[models.x]\nsource.url = {{ url = "{url}/nothing.bin" }}\n')
        r = project.run("lock")
    assert r.code == 1 and "404" in r.err and len(srv.log) == 1


def test_retry_policy_waits_grow_with_jitter_are_capped_and_honour_retry_after():
    from reconcile.transport import RetryPolicy

    p = RetryPolicy(attempts=5, base_delay=1.0, max_delay=3.0)
    assert all(0.5 <= p.delay(1) <= 1.0 for _ in range(50))
    assert all(1.0 <= p.delay(2) <= 2.0 for _ in range(50))
    assert p.delay(6) == 3.0  # capped
    assert p.delay(1, retry_after=7) == 7  # the server's word wins when longer
    waits = []
    calls = iter([1, 2, 3])

    def flaky():
        from reconcile.sources.base import Transient

        if next(calls) < 3:
            raise Transient("reset")
        return "ok"

    assert p.run(flaky, sleep=waits.append) == "ok" and len(waits) == 2


@pytest.mark.parametrize("transport", ["httpx", "direct"])
def test_a_signed_url_that_expires_between_attempts_is_asked_for_again(project, monkeypatch,
                                                                        transport):
    """The origin redirects to a bucket URL signed for 0.3 s; the first stream
    drops midway and the retry comes (0.6 s or more later) after the signature expired: the transfer asks the
    origin again (a fresh request per attempt) and resumes from where it stopped."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if transport == "direct" else str(1 << 62))
    data = os.urandom(3 << 20)
    bucket = RangeServer({"/blob": data}, etag=True)
    bucket.signed = True
    origin = RangeServer({}, etag=True)
    with bucket as bucket_url, origin as origin_url:
        origin.redirects["/w.bin"] = lambda: f"{bucket_url}/blob?expires={time.time() + 0.3:.3f}"
        bucket.drop_after = 1
        project.write(f'[models.w]\nsource.url = {{ url = "{origin_url}/w.bin", sha256 ='
                      f' "{sha(data)}" }}\nvalidation.preset = "none"\n'
                      'network.retry = { baseDelay = 1.2, maxDelay = 1.5 }\n')
        r = project.run("apply")
    assert r.code == 0, r.err
    gets = [e for e in bucket.log if e[0] == "GET"]
    assert [e[3] for e in gets] == [200, 206], gets  # never a 403: each try signed anew
    assert gets[1][2] == f"bytes={1 << 20}-"
    assert len([e for e in origin.log if e[0] == "GET"]) == 2
    assert Path(project.run("path", "w").out.strip(), "w.bin").read_bytes() == data


def test_ctrl_c_does_not_wait_for_a_server_that_went_silent(project):
    """A server that stops sending without closing would hold a reader for its whole
    read timeout (300 s): Ctrl-C must not wait for it."""
    import pty
    import signal
    import subprocess
    import sys

    data = os.urandom(8 << 20)
    srv = RangeServer({"/w.bin": data}, etag=True)
    srv.stall_after = 1 << 20
    with srv as url:
        project.write(f'[models.w]\nsource.url = {{ url = "{url}/w.bin", sha256 = "{sha(data)}" }}\n'
                      'validation.preset = "none"\n')
        master, slave = pty.openpty()
        p = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(project.manifest),
                              "apply"], stdin=slave, stdout=slave, stderr=slave,
                             start_new_session=True)
        os.close(slave)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                srv.log and list((project.store / "tmp").glob("*.part"))):
            time.sleep(0.05)
        time.sleep(0.5)  # the reader is now blocked on the silent socket
        os.killpg(p.pid, signal.SIGINT)
        sent = time.monotonic()
        p.wait(timeout=20)
        stopped = time.monotonic() - sent
        os.close(master)
    assert p.returncode == 130
    assert stopped < 2.0, stopped


@pytest.mark.parametrize("transport", ["httpx", "direct"])
def test_https_to_a_plain_http_server_and_an_unknown_host_fail_at_once(project, monkeypatch,
                                                                         transport):
    """Neither is transient: no retries (no 'giving up after'), and each says what to do."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if transport == "direct" else str(1 << 62))
    srv = RangeServer({"/small.bin": SMALL})
    with srv as url:
        tls = url.replace("http://", "https://")
        project.write(decl(tls, "small.bin", SMALL))
        r = project.run("apply")
    assert r.code == 1
    assert "giving up after" not in r.err and "Traceback" not in r.err, r.err
    assert "speaks plain HTTP" in r.err and f"use {url}" in r.err, r.err
    project.write(decl("https://no-such-host.invalid", "small.bin", SMALL))
    r = project.run("apply")
    assert r.code == 1
    assert "giving up after" not in r.err and "Traceback" not in r.err, r.err
    assert "no-such-host.invalid: the host name does not resolve" in r.err, r.err
