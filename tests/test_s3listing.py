"""ListObjectsV2 answers as syncd.s3crt reads them (the CRT listing; the contract tests run it
against SeaweedFS)."""

from __future__ import annotations

import pytest
from syncd.s3crt import CrtFailure, listing_page

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
