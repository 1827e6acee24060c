"""The test infrastructure itself: the SeaweedFS server, its identities and the S3 proxy."""

from __future__ import annotations

import concurrent.futures
import io
import socket
import time
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from tests.support.s3proxy import OPERATIONS, S3Proxy, classify
from tests.support.seaweed import SeaweedServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
# botocore's ``max_attempts`` counts retries (max_attempts=1 means two tries); this is one try.
ONE_ATTEMPT = {"total_max_attempts": 1}


def proxied(server: SeaweedServer, proxy: S3Proxy, **config: Any) -> S3Client:
    """A client that talks to ``server`` through ``proxy``; ``config`` as for ``client()``."""
    return server.client(endpoint=proxy.endpoint, **config)


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            return False
        raise
    return True


@pytest.mark.parametrize(
    ("method", "target", "headers", "op"),
    [
        ("GET", "/", {}, "ListBuckets"),
        ("PUT", "/b", {}, "CreateBucket"),
        ("HEAD", "/b", {}, "HeadBucket"),
        ("GET", "/b?list-type=2&prefix=a%2F&continuation-token=x", {}, "ListObjectsV2"),
        ("GET", "/b?prefix=a&marker=m", {}, "ListObjects"),
        ("GET", "/b?uploads", {}, "ListMultipartUploads"),
        ("GET", "/b?location", {}, "Other"),
        ("POST", "/b?delete", {}, "DeleteObjects"),
        ("PUT", "/b/k/with/slashes", {}, "PutObject"),
        ("PUT", "/b/k", {"x-amz-copy-source": "/b/src"}, "CopyObject"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {}, "UploadPart"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {"x-amz-copy-source": "/b/src"}, "UploadPartCopy"),
        ("PUT", "/b/k?tagging", {}, "Other"),
        ("POST", "/b/k?uploads", {}, "CreateMultipartUpload"),
        ("POST", "/b/k?uploadId=u", {}, "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", {}, "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u", {}, "ListParts"),
        ("DELETE", "/b/k", {}, "DeleteObject"),
        ("GET", "/b/k?versionId=v&response-content-type=text%2Fplain", {}, "GetObject"),
        ("HEAD", "/b/k", {}, "HeadObject"),
    ],
)
def test_classify(method: str, target: str, headers: dict[str, str], op: str) -> None:
    assert op in OPERATIONS
    assert classify(method, target, headers) == op


@pytest.mark.parametrize("bad", [{"kinds": ["404"]}, {"kinds": []}, {"rate": 2.0}, {"ops": ["PutObjects"]}])
def test_fault_spec_is_validated(bad: dict[str, Any]) -> None:
    spec: dict[str, Any] = {"rate": 1.0, "kinds": ["503"], **bad}
    with pytest.raises(ValueError):
        S3Proxy("http://127.0.0.1:9").set_faults(**spec)


def test_proxy_counts_operations_and_body_bytes(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy)
    own = f"{bucket}-via-proxy"
    s3.create_bucket(Bucket=own)
    s3.head_bucket(Bucket=own)
    sizes = {"a.txt": 1000, "dir/b.bin": 70_000, "dir/c.bin": 300_000}
    for key, size in sizes.items():
        s3.put_object(Bucket=own, Key=key, Body=b"x" * size)
    s3.copy_object(Bucket=own, Key="copy.bin", CopySource={"Bucket": own, "Key": "dir/b.bin"})
    listed = s3.list_objects_v2(Bucket=own, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/b.bin", "dir/c.bin"]
    assert s3.get_object(Bucket=own, Key="copy.bin")["Body"].read() == b"x" * 70_000
    s3.head_object(Bucket=own, Key="a.txt")
    s3.delete_objects(Bucket=own, Delete={"Objects": [{"Key": "a.txt"}, {"Key": "dir/b.bin"}]})
    s3.delete_object(Bucket=own, Key="copy.bin")
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} >= {bucket, own}

    assert s3_proxy.counts() == {
        "CreateBucket": 1,
        "HeadBucket": 1,
        "PutObject": 3,
        "CopyObject": 1,
        "ListObjectsV2": 1,
        "GetObject": 1,
        "HeadObject": 1,
        "DeleteObjects": 1,
        "DeleteObject": 1,
        "ListBuckets": 1,
    }
    sent = s3_proxy.body_bytes()
    assert sent["PutObject"] == sum(sizes.values())  # Content-Length bodies over plain HTTP
    assert sent["CopyObject"] == 0
    assert 0 < sent["DeleteObjects"] < 1000
    assert all(set(c) <= {200, 204} for c in s3_proxy.statuses().values()), s3_proxy.statuses()
    assert s3_proxy.injected() == {}

    s3_proxy.reset_counts()
    s3.list_objects_v2(Bucket=own)
    assert s3_proxy.counts() == {"ListObjectsV2": 1}


def test_multipart_upload_through_proxy(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy)
    parts = [b"a" * (5 * MiB), b"b" * 1234]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    etags = [
        s3.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n, Body=body)["ETag"]
        for n, body in enumerate(parts, 1)
    ]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="big", UploadId=upload)["Parts"]] == [1, 2]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    abandoned = s3.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=abandoned)

    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == b"".join(parts)
    counts = s3_proxy.counts()
    assert counts == {
        "CreateMultipartUpload": 2,
        "UploadPart": 2,
        "ListParts": 1,
        "ListMultipartUploads": 1,
        "CompleteMultipartUpload": 1,
        "AbortMultipartUpload": 1,
        "GetObject": 1,
    }
    assert s3_proxy.body_bytes()["UploadPart"] == sum(map(len, parts))


def test_concurrent_transfer_through_proxy(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    """boto3's transfer manager (parallel UploadPart on pooled keep-alive connections)."""
    s3 = proxied(s3_server, s3_proxy, max_pool_connections=16)
    data = bytes(range(256)) * (24 * MiB // 256)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=8)
    s3.upload_fileobj(io.BytesIO(data), bucket, "parallel", Config=config)
    assert s3.get_object(Bucket=bucket, Key="parallel")["Body"].read() == data
    assert s3_proxy.counts()["UploadPart"] == 5
    assert s3_proxy.body_bytes()["UploadPart"] == len(data)


def test_many_concurrent_connections(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    """40 requests held for 0.5 s each finish together, so the proxy serves them in parallel."""
    width = 40
    s3 = proxied(s3_server, s3_proxy, max_pool_connections=width)
    s3.head_bucket(Bucket=bucket)  # resolve the client's lazy setup outside the timing
    s3_proxy.set_delay(0.5)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(width) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=f"k{n}", Body=b"v"), range(width)))
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"{width} delayed requests took {elapsed:.1f}s: not served concurrently"
    s3_proxy.set_delay(0)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == width
    assert s3_proxy.counts()["PutObject"] == width


def test_aws_chunked_trailer_body_is_forwarded(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    """boto3 streams aws-chunked bodies with a checksum trailer inside Transfer-Encoding: chunked,
    but only over HTTPS; force that mode over HTTP to prove the proxy forwards it intact."""

    def trailer_checksum(params: dict[str, Any], **_: Any) -> None:
        params["context"]["checksum"]["request_algorithm"]["in"] = "trailer"

    s3 = proxied(s3_server, s3_proxy, request_checksum_calculation="when_supported")
    s3.meta.events.register("before-call.s3.PutObject", trailer_checksum)
    seen: list[dict[str, Any]] = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: seen.append(dict(request.headers)))
    data = bytes(range(256)) * 5000
    s3.put_object(Bucket=bucket, Key="chunked", Body=data)

    assert seen[0]["Transfer-Encoding"] == b"chunked"
    assert seen[0]["Content-Encoding"] == b"aws-chunked"
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data
    assert s3_proxy.statuses()["PutObject"] == {200: 1}
    assert len(data) < s3_proxy.body_bytes()["PutObject"] < len(data) + 1000  # chunk framing


@pytest.mark.parametrize(("kind", "code", "status"), [("503", "SlowDown", 503), ("500", "InternalError", 500)])
def test_error_fault_is_an_s3_error(
    s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str, kind: str, code: str, status: int
) -> None:
    s3 = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)
    s3.head_bucket(Bucket=bucket)  # open a keep-alive connection first
    s3_proxy.set_faults(1.0, [kind], ops=["PutObject"])
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="k", Body=b"z" * 200_000)
    assert error_code(raised.value) == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    s3.head_bucket(Bucket=bucket)  # other operations pass; the drained connection is still usable
    assert not exists(s3, bucket, "k")
    assert s3_proxy.injected() == {"PutObject": {kind: 1}}
    assert "PutObject" not in s3_proxy.counts()

    s3_proxy.clear_faults()
    s3.put_object(Bucket=bucket, Key="k", Body=b"z")
    assert s3_proxy.counts()["PutObject"] == 1


def test_fault_rate_is_reproducible_with_a_seed(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)

    def outcomes() -> list[bool]:
        s3_proxy.set_faults(0.5, ["503", "500"], ops=["HeadBucket"], seed=7)
        results = []
        for _ in range(30):
            try:
                s3.head_bucket(Bucket=bucket)
                results.append(True)
            except botocore.exceptions.ClientError:
                results.append(False)
        return results

    first = outcomes()
    assert 5 < first.count(False) < 25
    assert s3_proxy.counts() == {"HeadBucket": first.count(True)}
    assert sum(s3_proxy.injected()["HeadBucket"].values()) == first.count(False)
    assert outcomes() == first


@pytest.mark.parametrize(("kind", "applied"), [("reset-request", False), ("reset-response", True)])
def test_reset_is_a_connection_error(
    s3_server: SeaweedServer, s3_proxy: S3Proxy, s3: S3Client, bucket: str, kind: str, applied: bool
) -> None:
    """A reset mid-request leaves nothing behind; a reset mid-response hides a write that happened."""
    client = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)
    s3_proxy.set_faults(1.0, [kind], ops=["PutObject"])
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="k", Body=b"r" * 300_000)
    assert exists(s3, bucket, "k") is applied
    assert s3_proxy.injected() == {"PutObject": {kind: 1}}
    client.head_bucket(Bucket=bucket)  # the client reconnects; other operations are unaffected


def test_reset_in_the_middle_of_a_download(
    s3_server: SeaweedServer, s3_proxy: S3Proxy, s3: S3Client, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"d" * 100_000)
    client = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)
    s3_proxy.set_faults(1.0, ["reset-response"], ops=["GetObject"])
    body = client.get_object(Bucket=bucket, Key="k")["Body"]  # the head arrived intact
    with pytest.raises(botocore.exceptions.ResponseStreamingError):
        body.read()


def test_stall_triggers_read_timeout(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT, read_timeout=1)
    s3_proxy.stall_seconds = 5
    s3_proxy.set_faults(1.0, ["stall"], ops=["HeadBucket"])
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        s3.head_bucket(Bucket=bucket)
    assert time.monotonic() - started < 4
    assert s3_proxy.injected() == {"HeadBucket": {"stall": 1}}
    s3.list_objects_v2(Bucket=bucket)


def test_refuse_then_serve_again_on_the_same_port(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)
    s3.head_bucket(Bucket=bucket)  # leaves a pooled keep-alive connection that refuse() must drop
    endpoint = s3_proxy.endpoint

    s3_proxy.refuse(True)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.head_bucket(Bucket=bucket)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s3_proxy.port), timeout=2).close()

    s3_proxy.refuse(False)
    assert s3_proxy.endpoint == endpoint
    s3.head_bucket(Bucket=bucket)
    assert s3_proxy.counts()["HeadBucket"] == 2


def test_refuse_drops_a_request_in_flight(s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str) -> None:
    s3 = proxied(s3_server, s3_proxy, retries=ONE_ATTEMPT)
    s3_proxy.stall_seconds = 30
    s3_proxy.set_faults(1.0, ["stall"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(s3.head_bucket, Bucket=bucket)
        _await(lambda: s3_proxy.injected(), "the stalled request")
        s3_proxy.refuse(True)
        with pytest.raises(botocore.exceptions.ConnectionClosedError):
            pending.result(timeout=5)


def test_wrong_credentials_are_rejected(s3_server: SeaweedServer, s3: S3Client, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    wrong_secret = s3_server.client(secret_key="not-the-secret", retries=ONE_ATTEMPT)
    unknown_key = s3_server.client(access_key="AKIDUNKNOWN", retries=ONE_ATTEMPT)
    for client, code in ((wrong_secret, "SignatureDoesNotMatch"), (unknown_key, "InvalidAccessKeyId")):
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client.get_object(Bucket=bucket, Key="k")
        assert error_code(raised.value) == code
        with pytest.raises(botocore.exceptions.ClientError):
            client.put_object(Bucket=bucket, Key="k", Body=b"overwritten")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"secret"


def test_proxy_keeps_signatures_valid_and_errors_intact(
    s3_server: SeaweedServer, s3_proxy: S3Proxy, bucket: str
) -> None:
    """Host and body reach the server unchanged (SigV4 checks both), and server errors pass through."""
    s3 = proxied(s3_server, s3_proxy, secret_key="wrong", retries=ONE_ATTEMPT)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="k", Body=b"v" * 100_000)
    assert error_code(raised.value) == "SignatureDoesNotMatch"
    assert s3_proxy.statuses()["PutObject"] == {403: 1}


def _await(predicate: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
