"""The shared botocore clients (syncd.s3clients): S3's "200 with an error inside" answers are
still caught and retried, with the listing's check done without a second XML parse; what
boto3 alone brings (its managed copy) still serves the copies over CopyObject's limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError
from syncd import s3store
from syncd.config import FolderConfig
from syncd.s3clients import _cheap_listing_check
from syncd.s3store import S3Store

LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false"
           b"</IsTruncated><Contents><Key>k</Key><ETag>&quot;e&quot;</ETag><Size>3</Size></Contents>"
           b"</ListBucketResult>\n")
ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
         b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, *_: Any, **__: Any) -> Any:
        yield self._body


def _client(answers: list[bytes]) -> tuple[Any, list[str]]:
    """A client whose requests are answered 200 with ``answers`` in turn (the last repeats)."""
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="a", aws_secret_access_key="s",
                          config=Config(retries={"mode": "standard", "max_attempts": 3}))
    _cheap_listing_check(client)
    sent: list[str] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        body = answers[min(len(sent), len(answers) - 1)]
        sent.append(request.url)
        return AWSResponse(request.url, 200, {}, _Raw(body))  # type: ignore[arg-type]

    client.meta.events.register("before-send.s3", answer)
    return client, sent


def test_a_complete_listing_is_parsed_as_usual() -> None:
    client, sent = _client([LISTING])
    page = client.list_objects_v2(Bucket="b")
    assert [(o["Key"], o["Size"]) for o in page["Contents"]] == [("k", 3)] and len(sent) == 1


@pytest.mark.parametrize("bad", [ERROR, LISTING[:150]], ids=["error-document", "cut-short"])
def test_a_listing_answered_200_with_an_error_or_cut_short_is_retried(bad: bytes) -> None:
    client, sent = _client([bad, LISTING])
    assert client.list_objects_v2(Bucket="b")["KeyCount"] == 1
    assert len(sent) == 2


def _attempts(call: str, **params: Any) -> int:
    client, sent = _client([ERROR])
    with pytest.raises(ClientError, match="InternalError"):
        getattr(client, call)(**params)
    return len(sent)


def test_a_listing_that_stays_broken_fails_after_as_many_attempts_as_botocores_own_check_gives() -> None:
    copies = _attempts("copy_object", Bucket="b", Key="k", CopySource={"Bucket": "b", "Key": "src"})
    assert copies > 1  # botocore's check still runs for the other operations
    assert _attempts("list_objects_v2", Bucket="b") == copies


def test_a_listing_body_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.handlers

    second_parses: list[int] = []
    looks = botocore.handlers._looks_like_special_case_error
    monkeypatch.setattr(botocore.handlers, "_looks_like_special_case_error",
                        lambda *a: second_parses.append(1) or looks(*a))
    client, _ = _client([LISTING])
    client.list_objects_v2(Bucket="b")
    assert second_parses == []


def test_an_object_over_copyobjects_limit_gets_new_metadata_by_a_copy_part_by_part(
        s3_server: Any, s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setattr(s3store, "S3_MAX_COPY", 1024)  # stands in for 5 GiB: the object is "larger"
    s3.put_object(Bucket=bucket, Key="big", Body=b"x" * 4096, Metadata={"mtime": "1"})
    store = S3Store(FolderConfig(name="copy", source=tmp_path / "copy.yaml", path=tmp_path, bucket=bucket,
                                 endpoint_url=s3_server.endpoint, region=s3_server.region))
    try:
        etag = store.set_meta("big", {"mtime": "2"}, 4096)
    finally:
        store.close()
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["Metadata"] == {"mtime": "2"} and head["ContentLength"] == 4096
    assert head["ETag"].strip('"') == etag and etag.endswith("-1")  # one UploadPartCopy, not a CopyObject
