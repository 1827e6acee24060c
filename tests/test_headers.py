"""Object headers: a Content-Type guessed from the name as `aws s3 sync` does, `headers` rules by
pattern (first match wins) on small and multipart objects and through renames, and rclone's
`mtime` metadata on every object."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .support.daemon import Syncd, assert_mirror

MiB = 1024 * 1024
# Small and multipart uploads both: objects over 5 MiB go in 5 MiB parts.
MULTIPART = {"multipart_threshold": "5MiB", "part_size": "5MiB"}
RULES = [
    {"pattern": "*.html", "Cache-Control": "max-age=60"},
    {"pattern": "assets/**", "Cache-Control": "max-age=31536000, immutable", "Content-Language": "en"},
    {"pattern": "downloads/*.tar.gz", "Content-Disposition": "attachment", "Expires": "Wed, 21 Oct 2026 07:28:00 GMT"},
]
# What `aws s3 sync` sends (mimetypes.guess_type(name)[0]); None: no Content-Type at all.
GUESSES = {"index.html": "text/html", "style.css": "text/css", "data.json": "application/json",
           "logo.svg": "image/svg+xml", "photo.png": "image/png", "backup.tar.gz": "application/x-tar",
           "LICENSE": None}


def head(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return s3.head_object(Bucket=bucket, Key=key)  # type: ignore[no-any-return]


# What a server stores for an object sent without Content-Type: S3 says binary/octet-stream;
# SeaweedFS does so for a multipart upload and sniffs a PUT's body (random bytes: application/...).
UNTYPED = {"binary/octet-stream", "application/octet-stream"}


def write(root: Path, rel: str, size: int) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def sent_content_types(proxy: Any, key: str) -> set[str | None]:
    """The Content-Type headers of the requests that wrote ``key`` (None: sent without one)."""
    writes = ("PutObject", "CreateMultipartUpload", "CopyObject")
    return {r.headers.get("content-type") for r in proxy.requests() if r.op in writes and r.path.endswith("/" + key)}


def test_content_type_is_guessed_from_the_name_for_small_and_multipart_objects(proxied_syncd: Syncd, s3_proxy, tree,
                                                                                  s3, bucket):
    for name in GUESSES:
        write(tree, f"small/{name}", 1000)
        write(tree, f"large/{name}", 6 * MiB)
    proxied_syncd.add_folder("site", tree, bucket, **MULTIPART)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    for name, expected in GUESSES.items():
        for where in ("small", "large"):
            key = f"{where}/{name}"
            got = head(s3, bucket, key)
            assert "ContentEncoding" not in got, f"{key}: aws-cli never sends the encoding half of the guess"
            if expected is None:
                # No guess: sent without Content-Type, so the server's default applies.
                assert sent_content_types(s3_proxy, key) == {None}, key
                assert got["ContentType"] in UNTYPED, key
            else:
                assert sent_content_types(s3_proxy, key) == {expected}, key
                assert got["ContentType"] == expected, key
    assert head(s3, bucket, "large/data.json")["ETag"].endswith('-2"')  # it really went multipart


def test_content_type_none_sends_no_guess(proxied_syncd: Syncd, s3_proxy, tree, bucket):
    write(tree, "index.html", 100)
    write(tree, "big.json", 6 * MiB)
    proxied_syncd.add_folder("raw", tree, bucket, content_type="none", **MULTIPART)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)
    assert sent_content_types(s3_proxy, "index.html") == {None}
    assert sent_content_types(s3_proxy, "big.json") == {None}


def test_headers_rules_apply_by_pattern_and_the_first_match_wins(syncd: Syncd, tree, s3, bucket):
    write(tree, "index.html", 100)
    write(tree, "assets/app.css", 100)
    write(tree, "assets/fragment.html", 100)      # matches "*.html" first
    write(tree, "assets/video.json", 6 * MiB)      # multipart
    write(tree, "downloads/release.tar.gz", 6 * MiB)
    write(tree, "notes.txt", 100)                  # no rule
    syncd.add_folder("site", tree, bucket, headers=RULES, **MULTIPART)
    syncd.start()
    syncd.wait_idle(120)

    assert head(s3, bucket, "index.html")["CacheControl"] == "max-age=60"
    fragment = head(s3, bucket, "assets/fragment.html")
    assert fragment["CacheControl"] == "max-age=60" and "ContentLanguage" not in fragment
    for key in ("assets/app.css", "assets/video.json"):
        got = head(s3, bucket, key)
        assert got["CacheControl"] == "max-age=31536000, immutable", key
        assert got["ContentLanguage"] == "en", key
    assert head(s3, bucket, "assets/app.css")["ContentType"] == "text/css"  # the guess stays
    release = head(s3, bucket, "downloads/release.tar.gz")
    assert release["ContentDisposition"] == "attachment"
    assert release["ContentType"] == "application/x-tar"
    assert release["ResponseMetadata"]["HTTPHeaders"]["expires"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert "CacheControl" not in head(s3, bucket, "notes.txt")


def test_a_rule_may_set_the_content_type(syncd: Syncd, tree, s3, bucket):
    write(tree, "feed", 100)
    syncd.add_folder("site", tree, bucket, headers=[{"pattern": "/feed", "content-type": "application/rss+xml"}])
    syncd.start()
    syncd.wait_idle()
    assert head(s3, bucket, "feed")["ContentType"] == "application/rss+xml"


def test_renames_are_copies_that_keep_headers_or_take_the_new_names(proxied_syncd: Syncd, s3_proxy, tree, s3, bucket):
    write(tree, "assets/app.css", 100)
    write(tree, "assets/video.json", 6 * MiB)
    write(tree, "draft.txt", 100)
    proxied_syncd.add_folder("site", tree, bucket, headers=RULES, **MULTIPART)
    proxied_syncd.start()
    proxied_syncd.wait_idle(120)

    s3_proxy.reset_counts()
    (tree / "assets" / "css").mkdir()
    (tree / "assets" / "app.css").rename(tree / "assets" / "css" / "app.css")        # same headers
    (tree / "assets" / "video.json").rename(tree / "assets" / "clip.json")            # same headers
    (tree / "draft.txt").rename(tree / "page.html")                                   # other headers
    proxied_syncd.wait_idle(120)

    assert_mirror(s3, bucket, tree)
    counts = s3_proxy.counts()
    assert counts.get("CopyObject", 0) == 3
    assert counts.get("PutObject", 0) == 0 and counts.get("UploadPart", 0) == 0
    for key, content_type in (("assets/css/app.css", "text/css"), ("assets/clip.json", "application/json")):
        got = head(s3, bucket, key)
        assert got["ContentType"] == content_type, key
        assert got["CacheControl"] == "max-age=31536000, immutable", key
        assert got["ContentLanguage"] == "en", key
    page = head(s3, bucket, "page.html")
    assert page["ContentType"] == "text/html" and page["CacheControl"] == "max-age=60"
    assert page["Metadata"]["syncd-sha256"]  # the REPLACE copy kept syncd's metadata


def test_every_object_carries_rclone_mtime_metadata(syncd: Syncd, tree, s3, bucket):
    small = write(tree, "small.bin", 1000)
    large = write(tree, "large.bin", 6 * MiB)
    os.utime(small, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    syncd.add_folder("main", tree, bucket, **MULTIPART)
    syncd.start()
    syncd.wait_idle(120)
    for path in (small, large):
        value = head(s3, bucket, path.name)["Metadata"]["mtime"]
        # rclone's format: seconds since the epoch, 9 decimals (its s3 backend docs, "Modification times").
        seconds, _, nanos = value.partition(".")
        assert len(nanos) == 9
        assert int(Decimal(value) * 10**9) == path.stat().st_mtime_ns, path.name
    assert datetime.fromtimestamp(float(head(s3, bucket, "small.bin")["Metadata"]["mtime"]), UTC).year == 2023


# ---------------------------------------------------------------------- config errors

def _check(syncd: Syncd) -> tuple[int, str]:
    r = syncd.cli("check-config")
    return r.returncode, r.stderr + r.stdout


def test_an_unknown_header_name_is_a_config_error_naming_file_key_and_fix(syncd: Syncd, tree, bucket):
    file = syncd.add_folder("site", tree, bucket, headers=[{"pattern": "*.html", "Cache-Contrl": "max-age=60"}])
    code, out = _check(syncd)
    assert code == 78
    assert f"{file}: key 'headers'" in out and "'Cache-Contrl'" in out and "did you mean 'Cache-Control'" in out


def test_a_header_outside_the_allowed_set_lists_the_allowed_ones(syncd: Syncd, tree, bucket):
    file = syncd.add_folder("site", tree, bucket, headers=[{"pattern": "*", "x-amz-acl": "public-read"}])
    code, out = _check(syncd)
    assert code == 78
    assert f"{file}: key 'headers'" in out and "'x-amz-acl'" in out and "Cache-Control, Content-Type" in out


def test_bad_header_rules_and_content_type_values_are_reported(syncd: Syncd, tree, bucket):
    file = syncd.add_folder("site", tree, bucket, content_type="guess",
                            headers=[{"Cache-Control": "max-age=60"}])
    other = syncd.add_folder("other", tree, bucket, prefix="other/",
                             headers=[{"pattern": "*.zip", "Expires": "tomorrow"}])
    code, out = _check(syncd)
    assert code == 78
    assert f"{file}: key 'content_type'" in out and "auto, none" in out
    assert f"{file}: key 'headers'" in out and "'pattern' is required" in out
    assert f"{other}: key 'headers'" in out and "HTTP date" in out
