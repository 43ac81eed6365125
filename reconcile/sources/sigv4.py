"""AWS Signature Version 4 for S3 requests, in headers.

The algorithm is AWS's (docs: "Signature Version 4 signing process"); this is the
same computation botocore's ``S3SigV4Auth`` makes, without its request objects, header
maps and logging: ~25 µs a request instead of ~150 µs. That matters at lock time,
where a prefix of 5,000 objects is 5,000 HEADs on two cores. A property test checks
every signature against botocore's own for the same request and time.

Credentials come from boto3's chain (``source.s3``); nothing here reads or keeps them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# what botocore leaves out of the signature: hop-by-hop headers and the user agent
UNSIGNED = frozenset({"connection", "expect", "keep-alive", "proxy-authenticate",
                      "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
                      "user-agent", "x-amzn-trace-id"})
_keys: dict[tuple[str, str, str, str], bytes] = {}  # one signing key a day per secret


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    ident = (secret, day, region, service)
    key = _keys.get(ident)
    if key is None:
        key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service),
                    "aws4_request")
        if len(_keys) > 64:
            _keys.clear()
        _keys[ident] = key
    return key


def _host(url: str) -> str:
    """The Host header as botocore signs it: the host name in lower case, [brackets] for
    IPv6, the port unless it is the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def sign(method: str, url: str, headers: dict[str, str], *, access_key: str, secret_key: str,
         token: str | None, region: str, service: str = "s3",
         amz_date: str | None = None, payload: str = EMPTY_SHA256) -> dict[str, str]:
    """``headers`` plus X-Amz-Date, X-Amz-Content-SHA256, any X-Amz-Security-Token and
    the Authorization header. ``payload`` is the body's sha256 (hex; empty body by
    default), which S3 checks against what arrives. ``url`` must already be encoded as it
    will be sent (S3 signs the path and query exactly as given)."""
    amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = {k: v for k, v in headers.items()
           if k.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256",
                                "x-amz-security-token")}
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-SHA256"] = payload
    if token:
        out["X-Amz-Security-Token"] = token
    signed: dict[str, str] = {}
    for name, value in out.items():
        low = name.lower()
        if low not in UNSIGNED:
            value = " ".join(str(value).split())
            signed[low] = f"{signed[low]},{value}" if low in signed else value
    signed.setdefault("host", _host(url))
    names = sorted(signed)
    parts = urlsplit(url)
    pairs = sorted(pair.partition("=")[::2] for pair in parts.query.split("&")) \
        if parts.query else []
    query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical = "\n".join([method.upper(), parts.path or "/", query,
                           "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
                           payload])
    day = amz_date[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(_signing_key(secret_key, day, region, service), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out
