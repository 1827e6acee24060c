"""ListObjectsV2 answers as syncd.s3crt reads them (the CRT listing; the contract tests run it
against SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from syncd.config import FolderConfig
from syncd.s3crt import CLIENT_RETRIES
from syncd.s3store import S3Store
from syncd.s3wire import BAD_LISTING, CrtFailure, listing_page
from syncd.store import TRANSIENT, RemoteObject, StoreError

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _answer(*keys: str, encoded: bool = True, token: str | None = None, ns: str = NS) -> bytes:
    items = "".join(f"<Contents><Key>{k}</Key><LastModified>2026-12-01T19:19:29.000Z</LastModified>"
                    f"<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><Size>{i}</Size>"
                    "<StorageClass>STANDARD</StorageClass></Contents>" for i, k in enumerate(keys))
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
            if token else "<IsTruncated>false</IsTruncated>")
    xmlns = f' xmlns="{ns}"' if ns else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult{xmlns}><Name>b</Name><Prefix>p/</Prefix>'
            f'{"<EncodingType>url</EncodingType>" if encoded else ""}<KeyCount>{len(keys)}</KeyCount>'
            f"{more}{items}</ListBucketResult>").encode()


def test_a_page_gives_key_size_etag_and_modification_time() -> None:
    (obj,), token = listing_page(_answer("p/a"))
    assert (obj.key, obj.size, obj.etag, token) == ("p/a", 0, "0123456789abcdef0123456789abcdef", None)
    assert obj.modified == 1796152769.0


def test_url_encoded_keys_are_decoded() -> None:
    page, _ = listing_page(_answer("p/a+b", "p/a%2Bb", "p/100%25", "p/%C3%BC"))
    assert [o.key for o in page] == ["p/a b", "p/a+b", "p/100%", "p/\u00fc"]


def test_keys_are_left_alone_when_the_answer_is_not_encoded() -> None:
    # A store that ignores encoding-type=url says so by leaving out EncodingType.
    page, _ = listing_page(_answer("p/a+b", "p/100%25", encoded=False))
    assert [o.key for o in page] == ["p/a+b", "p/100%25"]


def test_a_truncated_page_gives_the_next_token() -> None:
    _, token = listing_page(_answer("p/a", token="abc+/="))
    assert token == "abc+/="


def test_an_answer_without_a_namespace_is_read_too() -> None:
    page, _ = listing_page(_answer("p/a", ns=""))
    assert [o.key for o in page] == ["p/a"]


def test_a_truncated_page_without_a_token_is_a_failure() -> None:
    body = _answer("p/a").replace(b"<IsTruncated>false", b"<IsTruncated>true")
    with pytest.raises(CrtFailure, match="continuation token"):
        listing_page(body)


def test_an_unreadable_answer_is_a_failure() -> None:
    with pytest.raises(CrtFailure, match="unreadable listing page"):
        listing_page(b"<ListBucketResult><Contents><Key>p/a")


def test_an_error_sent_with_status_200_is_a_server_failure() -> None:
    body = b"<Error><Code>InternalError</Code><Message>We encountered an internal error</Message></Error>"
    with pytest.raises(CrtFailure) as failure:
        listing_page(body)
    assert (failure.value.status, failure.value.code) == (500, "InternalError")


def test_an_answer_that_is_no_listing_is_a_failure() -> None:
    with pytest.raises(CrtFailure, match="not a listing page"):
        listing_page(b"<ListAllMyBucketsResult></ListAllMyBucketsResult>")


class _Pages:
    """Stands in for the CRT: answers each page request with the next of ``answers``."""

    def __init__(self, *answers: CrtFailure | tuple[list[RemoteObject], str | None]):
        self.answers = list(answers)
        self.asked: list[str | None] = []

    def list_page(self, prefix: str, token: str | None) -> tuple[list[RemoteObject], str | None]:
        self.asked.append(token)
        answer = self.answers.pop(0)
        if isinstance(answer, CrtFailure):
            raise answer
        return answer


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pages: _Pages) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    folder = FolderConfig(name="t", source=tmp_path / "t.yaml", path=tmp_path, bucket="b",
                          endpoint_url="http://127.0.0.1:9", region="us-east-1")
    store = S3Store(folder)
    store._crt = pages  # type: ignore[assignment]
    return store


def test_a_page_answered_with_no_usable_listing_is_asked_again(tmp_path, monkeypatch) -> None:
    cut = CrtFailure(None, "", "an unreadable listing page", transport=BAD_LISTING)
    pages = _Pages(([RemoteObject("a", 1, "e")], "t1"), cut, ([RemoteObject("b", 1, "e")], None))
    store = _store(tmp_path, monkeypatch, pages)
    try:
        assert [o.key for page in store.list("") for o in page] == ["a", "b"]
    finally:
        store.close()
    assert pages.asked == [None, "t1", "t1"]


def test_a_page_that_stays_unusable_is_a_transient_error(tmp_path, monkeypatch) -> None:
    cut = CrtFailure(None, "", "an unreadable listing page", transport=BAD_LISTING)
    pages = _Pages(*[cut] * (CLIENT_RETRIES + 1))
    store = _store(tmp_path, monkeypatch, pages)
    try:
        with pytest.raises(StoreError) as failure:
            list(store.list(""))
    finally:
        store.close()
    assert failure.value.scope == TRANSIENT and len(pages.asked) == CLIENT_RETRIES + 1
