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
