"""Storage by URL against a real S3 API (moto's server on loopback): the object store, reading sources
header first, the image jobs and reindex through a real worker, errors, and credentials."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

import mediaq
from mediaq.errors import PermanentJobError, TransientJobError
from mediaq.pure import imaging
from mediaq.runtime.storage.objects import HEADER_BYTES, ObjectStore, open_object
from mediaq.runtime.storage.urls import open_store, read_source

DATA = Path(__file__).resolve().parent.parent / "data"


def upload_data(s3, bucket: str, prefix: str = "originals") -> dict[str, bytes]:
    """The sample images under ``s3://bucket/prefix/`` (one in a sub-folder); returns key -> bytes."""
    client, out = s3.boto3(), {}
    images = [p for p in sorted(DATA.glob("*.*")) if p.suffix.lower() in (".jpg", ".png")]
    for i, path in enumerate(images):
        key = f"{prefix}/{'sub/' if i == 0 else ''}{path.name}"
        out[key] = path.read_bytes()
        client.put_object(Bucket=bucket, Key=key, Body=out[key])
    return out


# -- the object store ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3", "memory"])
def test_object_store_round_trip_stays_under_its_prefix(s3, kind):
    bucket = s3.new_bucket() if kind == "s3" else "mem"
    root = f"s3://{bucket}/media" if kind == "s3" else f"memory:///{bucket}-{id(s3)}/media"
    store = open_store(root + "/")
    assert isinstance(store, ObjectStore) and store.root == root
    assert store.write("thumbs/a.jpg", b"one") == f"{root}/thumbs/a.jpg"
    assert store.write("thumbs/a.jpg", b"two") == f"{root}/thumbs/a.jpg"  # replaced whole
    store.write("medium/b.webp", b"three")
    assert store.read("thumbs/a.jpg") == b"two"
    assert sorted((e.key, e.size) for batch in store.list() for e in batch) == [("medium/b.webp", 5),
                                                                                ("thumbs/a.jpg", 3)]
    assert [e.key for batch in store.list("thumbs/") for e in batch] == ["thumbs/a.jpg"]
    if kind == "s3":  # exactly those keys in the bucket: nothing outside the prefix
        listed = s3.boto3().list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"] for o in listed) == ["media/medium/b.webp", "media/thumbs/a.jpg"]
    for bad in ("../x.jpg", "thumbs/../x.jpg", "/etc/passwd", "thumbs/a/b.jpg", "thumbs/.x.jpg", "thumbs/x"):
        with pytest.raises(PermanentJobError, match="bad_argument"):
            store.write(bad, b"no")
    assert store.remove("thumbs/a.jpg") is True and store.remove("thumbs/a.jpg") is False
    with pytest.raises(PermanentJobError, match="missing_file"):
        store.read("thumbs/a.jpg")


def test_a_missing_bucket_or_object_is_missing_file(s3):
    bucket = s3.new_bucket()
    for url in (f"s3://{bucket}/nope.jpg", f"s3://no-such-bucket-{bucket}/x.jpg"):
        with pytest.raises(PermanentJobError) as info:
            read_source(url)
        assert info.value.code == "missing_file" and url in info.value.message


def test_an_unreachable_server_is_transient(s3, monkeypatch):
    from helpers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientJobError) as info:
        read_source("s3://any-bucket/x.jpg")
    assert info.value.code == "storage_io_error"


# -- sources: the header first ----------------------------------------------------------------------
def test_the_bomb_guard_reads_only_the_header(s3):
    bucket = s3.new_bucket()
    bomb = io.BytesIO()
    Image.new("L", (12000, 12000)).save(bomb, "PNG")  # 144 Mpx in 140 kB
    s3.boto3().put_object(Bucket=bucket, Key="bomb.png", Body=bomb.getvalue())
    with open_object(f"s3://{bucket}/bomb.png", max_bytes=10**9) as f:
        with pytest.raises(PermanentJobError) as info:
            imaging.probe(f, max_pixels=89_478_485, name="bomb.png")
        assert info.value.code == "too_large"
        assert f.fetched == HEADER_BYTES < len(bomb.getvalue())  # the rest was never downloaded


def test_a_source_is_read_whole_once_decoded_and_the_size_limit_holds(s3):
    bucket = s3.new_bucket()
    data = (DATA / "hubble_deep_field.jpg").read_bytes()
    empty_key = "empty.jpg"
    s3.boto3().put_object(Bucket=bucket, Key="big.jpg", Body=data)
    s3.boto3().put_object(Bucket=bucket, Key=empty_key, Body=b"")
    assert len(data) > HEADER_BYTES
    with open_object(f"s3://{bucket}/big.jpg", max_bytes=10**9) as f:
        source = imaging.decode(f, [(250, 200)], name="big.jpg")
        assert f.fetched == len(data) and source.bytes == len(data)
    assert read_source(f"s3://{bucket}/big.jpg") == data
    with pytest.raises(PermanentJobError, match="too_large"):
        read_source(f"s3://{bucket}/big.jpg", max_bytes=1000)
    with pytest.raises(PermanentJobError, match="corrupt_image"):
        imaging.probe(read_source(f"s3://{bucket}/{empty_key}"), name=empty_key)


# -- the jobs, through a real worker -----------------------------------------------------------------------
async def test_reindex_over_a_bucket_prefix_writes_to_the_bucket(s3, settings, start_worker, redis_server):
    bucket = s3.new_bucket()
    sources = upload_data(s3, bucket)
    storage = f"s3://{bucket}/media"
    start_worker(storage=storage)
    async with await mediaq.connect(settings=settings.replace(storage=storage)) as client:
        frame = mediaq.image_frame(f"s3://{bucket}/originals/")
        assert sorted(frame.source_path) == sorted(f"s3://{bucket}/{k}" for k in sources)
        assert "sub__astronaut.jpg" in set(frame.image_id)
        batch = await client.reindex(frame)
        counts = await batch.wait(progress=False, timeout=120)
        df = await batch.results()
    assert counts["failed"] == 0 and counts["complete"] == 2 * len(sources), df[["function", "error_message"]]
    reindexed = df[df.function == "reindex_image"]
    thumbs = {r["image_id"]: r["thumbnail"] for _, r in reindexed.iterrows()}
    for image_id, thumb in thumbs.items():
        assert thumb["path"] == f"{storage}/thumbs/{image_id}.jpg" and thumb["key"] == f"thumbs/{image_id}.jpg"
    listed = {o["Key"] for o in s3.boto3().list_objects_v2(Bucket=bucket, Prefix="media/thumbs/")["Contents"]}
    assert listed == {f"media/thumbs/{i}.jpg" for i in thumbs}
    assert set(df[df.function == "add_to_iqdb"].hash.str[:5]) == {"iqdb_"}  # read the thumbnails from S3

    # the same job on a local file gives the same bytes: reading from S3 changes nothing
    ctx = {"settings": settings.replace(storage=str(Path(settings.storage) / "local"))}
    from mediaq.jobs.images import create_image_set

    local = await create_image_set(ctx, "astronaut", str(DATA / "astronaut.jpg"))
    remote = s3.boto3().get_object(Bucket=bucket, Key="media/thumbs/sub__astronaut.jpg.jpg")["Body"].read()
    assert Path(local["thumbnail"]["path"]).read_bytes() == remote

    # the display helpers read the results' URLs
    html = mediaq.thumbnail_grid(reindexed.assign(path=reindexed.thumbnail.str["path"]), columns=4).data
    assert html.count("data:image/jpeg;base64,") == len(thumbs)

    # no credential travelled through Redis: only URLs did
    import redis

    r = redis.Redis.from_url(redis_server.url.rstrip("/") + f"/{settings.queue_db}")
    try:
        values = [r.dump(k) or b"" for k in r.scan_iter(count=1000)]
    finally:
        r.close()
    assert values and not any(b"mediaq-test-secret" in v or b"mediaq-test-key" in v for v in values)


async def test_object_errors_have_stable_codes_through_a_worker(s3, client, start_worker, monkeypatch):
    from helpers import free_port

    bucket = s3.new_bucket()
    s3.boto3().put_object(Bucket=bucket, Key="a.jpg", Body=(DATA / "coffee.jpg").read_bytes())
    worker = start_worker(storage=f"s3://{bucket}/media")
    items = [{"image_id": "gone", "source_path": f"s3://{bucket}/missing.jpg"},
             {"image_id": "nobucket", "source_path": f"s3://no-{bucket}/a.jpg"},
             {"image_id": "ok", "source_path": f"s3://{bucket}/a.jpg"},
             {"image_id": "scheme", "source_path": "ftp://host/a.jpg"}]
    batch = await client.enqueue_many("create_thumbnail", items, job_id="e-{image_id}")
    await batch.wait(progress=False, timeout=60)
    df = (await batch.results()).set_index("image_id")
    assert df.loc["ok", "status"] == "complete"
    assert (df.loc["gone", "error_code"], df.loc["gone", "tries"]) == ("missing_file", 1)  # permanent: no retry
    assert df.loc["nobucket", "error_code"] == "missing_file"
    assert df.loc["scheme", "error_code"] == "bad_argument"

    # a worker that cannot reach the S3 server: transient, retried up to max_tries, then the real error
    worker.stop()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    start_worker(storage=f"s3://{bucket}/media")
    batch = await client.enqueue_many("create_thumbnail", [{"image_id": "x", "source_path": f"s3://{bucket}/a.jpg"}])
    await batch.wait(progress=False, timeout=60)
    row = (await batch.results()).iloc[0]
    assert (row.status, row.error_code, row.tries) == ("failed", "storage_io_error", 3)


# -- access control and credentials (moto checking signatures and IAM policies) ----------------------
@pytest.fixture(scope="module")
def s3_auth():
    """An S3 server that checks every request: a bucket with a source image, and a ``reader`` user whose
    policy allows reading and listing only (the first 5 requests set this up unauthenticated)."""
    import json

    from s3server import S3Server

    server = S3Server(auth=True, setup_actions=5)
    bucket = "guarded"
    server.boto3().create_bucket(Bucket=bucket)
    iam = server.boto3("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    server.reader = (key["AccessKeyId"], key["SecretAccessKey"])
    server.bucket = bucket
    server.boto3(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])  # (no request)
    import boto3  # the setup's 5th request: the source, put with the default (still unchecked) credentials

    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="y").put_object(Bucket=bucket, Key="a.jpg",
                                                       Body=(DATA / "coffee.jpg").read_bytes())
    yield server
    server.stop()


def _use(monkeypatch, server, access_key: str | None, secret_key: str | None) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    for name, value in (("AWS_ACCESS_KEY_ID", access_key), ("AWS_SECRET_ACCESS_KEY", secret_key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_access_denied_is_permanent(s3_auth, monkeypatch, tmp_path):
    _use(monkeypatch, s3_auth, *s3_auth.reader)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    store = open_store(f"s3://{s3_auth.bucket}/media")
    assert read_source(f"s3://{s3_auth.bucket}/a.jpg") == (DATA / "coffee.jpg").read_bytes()  # reading: allowed
    with pytest.raises(PermanentJobError) as info:
        store.write("thumbs/a.jpg", b"x")  # writing: not in the reader's policy
    assert info.value.code == "storage_denied" and "access denied" in info.value.message
    _use(monkeypatch, s3_auth, "AKIAUNKNOWN0000000000", "wrong")
    with pytest.raises(PermanentJobError) as info:
        read_source(f"s3://{s3_auth.bucket}/a.jpg")
    assert info.value.code == "storage_denied"


def test_credentials_from_an_aws_profile_file(s3_auth, monkeypatch, tmp_path):
    """No AWS_* keys in the environment: the ~/.aws/credentials profile is used (through boto3)."""
    pytest.importorskip("boto3")
    _use(monkeypatch, s3_auth, None, None)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    key, secret = s3_auth.reader
    (home / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id = {key}\n"
                                               f"aws_secret_access_key = {secret}\n")
    monkeypatch.setenv("HOME", str(home))
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert read_source(f"s3://{s3_auth.bucket}/a.jpg") == (DATA / "coffee.jpg").read_bytes()
    other = tmp_path / "other-home"  # another user's profile (a process reads its credentials once)
    (other / ".aws").mkdir(parents=True)
    (other / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = x\n")
    monkeypatch.setenv("HOME", str(other))
    with pytest.raises(PermanentJobError, match="storage_denied"):
        read_source(f"s3://{s3_auth.bucket}/a.jpg")


def test_throttling_and_server_errors_are_transient(s3, monkeypatch):
    """An endpoint that answers every request as S3 does when it throttles (503 SlowDown): obstore
    retries, then the job error is transient (the job's own retries come next)."""
    import http.server
    import threading

    calls = []

    class SlowDown(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            calls.append(self.command)
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(TransientJobError) as info:
            read_source("s3://throttled/a.jpg")
        assert info.value.code == "storage_io_error" and "503" in info.value.message
        with pytest.raises(TransientJobError):
            open_store("s3://throttled/media").write("thumbs/a.jpg", b"x")
        assert len(calls) >= 2 * 4  # each request tried 1 + 3 times before giving up
    finally:
        server.shutdown()
