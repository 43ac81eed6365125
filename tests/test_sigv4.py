"""reconcile's SigV4 signer gives botocore's signature for every request (property test)."""

from __future__ import annotations

import datetime
import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.sources.sigv4 import sign

botocore = pytest.importorskip("botocore")
from botocore import auth as botocore_auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

segments = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="/"),
                   min_size=1, max_size=12)
keys = st.lists(segments, min_size=1, max_size=4).map("/".join)
query_words = st.text(string.ascii_letters + string.digits + "-_.~ +=/&ü", min_size=0, max_size=10)
header_values = st.text(string.ascii_letters + string.digits + ' "-,:;=/', min_size=1, max_size=30)


def qv(v: str) -> str:
    return quote(v, safe="-_.~")


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD"]),
       host=st.sampled_from(["http://127.0.0.1:9000", "https://s3.us-west-2.amazonaws.com",
                             "https://bucket.s3.amazonaws.com:443", "http://Minio.LAN"]),
       key=keys,
       query=st.lists(st.tuples(st.sampled_from(["versionId", "prefix", "list-type", "a"]),
                                query_words), max_size=3),
       headers=st.dictionaries(st.sampled_from(["If-Match", "x-amz-checksum-mode", "Range",
                                                "User-Agent", "x-amz-meta-a"]), header_values,
                               max_size=3),
       token=st.none() | st.text(string.ascii_letters + string.digits + "/+=", min_size=1,
                                 max_size=40),
       region=st.sampled_from(["us-east-1", "eu-west-1"]))
def test_the_signature_is_botocores(monkeypatch_module, method, host, key, query, headers, token,
                                    region):
    url = host + "/bucket/" + quote(key, safe="/~")
    if query:
        url += "?" + "&".join(f"{k}={qv(v)}" for k, v in query)
    when = datetime.datetime(2026, 12, 2, 1, 2, 3)
    monkeypatch_module.setattr(botocore_auth, "get_current_datetime", lambda: when)
    req = AWSRequest(method=method, url=url, headers=dict(headers))
    botocore_auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key+", token), "s3",
                              region).add_auth(req)
    ours = sign(method, url, headers, access_key="AKIDEXAMPLE", secret_key="secret/key+",
                token=token, region=region, amz_date="20261202T010203Z")
    assert ours["Authorization"] == req.headers["Authorization"]
    assert ours["X-Amz-Date"] == req.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == req.headers.get("X-Amz-Security-Token")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# --- EnvSigner: the boto3-free signer for an S3-compatible endpoint ----------------------

buckets = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(endpoint=st.sampled_from(["http://127.0.0.1:9000", "http://minio.lan:9000",
                                 "https://s3.example.com", "https://s3.example.com:8443"]),
       bucket=buckets, key=keys, operation=st.sampled_from(["get_object", "head_object"]),
       version=st.none() | st.text(string.ascii_letters + string.digits + "._-+/=",
                                   min_size=1, max_size=30),
       region=st.sampled_from(["us-east-1", "eu-west-1"]))
def test_the_env_signers_urls_are_botocores(endpoint, bucket, key, operation, version, region):
    from reconcile.sources import s3

    params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
    boto = s3._boto_signer(None, region, endpoint, False, "path", "m")
    env = s3.EnvSigner(endpoint, region, False, lambda: boto)
    assert env.url(operation, params) == boto.url(operation, params)
    assert env.region == boto.region


def test_the_env_signer_is_chosen_only_when_boto3_would_find_the_same(monkeypatch):
    from reconcile.sources.s3 import _env_signer

    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    ep = "http://127.0.0.1:9000"
    assert _env_signer(None, "eu-west-1", ep, False, "path") == (ep, "eu-west-1")
    assert _env_signer(None, None, ep, False, "path") is None  # region: the config file's
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert _env_signer(None, None, ep, False, "path") == (ep, "us-west-2")
    assert _env_signer("dev", None, ep, False, "path") is None  # a named profile
    assert _env_signer(None, None, ep, False, "virtual") is None  # endpoint rules
    assert _env_signer(None, None, None, False, "path") is None  # AWS itself
    assert _env_signer(None, None, ep + "/s3", False, "path") is None
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert _env_signer(None, None, ep, False, "path") is None
    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert _env_signer(None, None, ep, False, "path") is None  # boto3 looks further
    assert _env_signer(None, None, ep, True, "path") == (ep, "us-west-2")  # anonymous


def test_signing_an_object_request_loads_nothing_of_botocore():
    import subprocess
    import sys

    code = ("import sys; from reconcile.sources import s3;"
            " sg = s3._make_signer(None, 'us-east-1', 'http://127.0.0.1:9', False, 'path', 'm');"
            " url = sg.url('get_object', {'Bucket': 'b', 'Key': 'k', 'VersionId': 'v1'});"
            " h = sg.sign('GET', url, {}, 'b');"
            " print(url, 'Authorization' in h, 'botocore' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
           "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["http://127.0.0.1:9/b/k?versionId=v1", "True", "False"]
