"""The ObjectStore contract: what every store must do, run against each implementation.

One suite, many stores (huey's StorageTests pattern): the ``store`` fixture is parametrised by
implementation, so another store is one more entry in STORES and one branch in ``_make``.
Assertions are on returned values and on ``StoreError.scope``, never on a server's error codes.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from syncd.azurestore import AzureBlobStore
from syncd.bandwidth import Payload
from syncd.config import FolderConfig
from syncd.s3store import S3Store
from syncd.store import (
    FOLDER,
    KEY,
    TRANSIENT,
    Changed,
    NotFound,
    ObjectStore,
    Part,
    PutResult,
    RemoteObject,
    StoreError,
    Whole,
    fetch_whole_now,
    multipart_etag,
)

from tests.support.memstore import MemoryStore
from tests.support.s3proxy import S3Proxy, classify_azure

MiB = 1024 * 1024
STORES = ["memory", "s3", "azure"]
# A protocol method -> the S3 requests it makes (for the proxy's fault injection).
S3_OPS = {"put": ["PutObject"], "write": ["PutObject"], "read": ["GetObject"], "head": ["HeadObject"],
          "list": ["ListObjectsV2"], "delete": ["DeleteObjects"], "copy": ["CopyObject"],
          "set_meta": ["CopyObject"], "create_upload": ["CreateMultipartUpload"], "upload_part": ["UploadPart"],
          "complete_upload": ["CompleteMultipartUpload"], "abort_upload": ["AbortMultipartUpload"],
          "list_parts": ["ListParts"], "list_uploads": ["ListMultipartUploads"], "check": ["HeadBucket"]}
# ... and the Blob Storage requests (create_upload makes none: blocks need no upload object).
AZURE_OPS = {"put": ["PutBlob"], "write": ["PutBlob"], "read": ["GetBlob"], "head": ["GetBlobProperties"],
             "list": ["ListBlobs"], "delete": ["BlobBatch"], "copy": ["CopyBlob"],
             "set_meta": ["SetBlobProperties", "SetBlobMetadata"], "upload_part": ["PutBlock"],
             "complete_upload": ["PutBlockList"], "abort_upload": ["DeleteBlob"], "list_parts": ["GetBlockList"],
             "list_uploads": ["ListBlobs", "GetBlockList"], "check": ["GetContainerProperties"]}


def _s3_store(request: pytest.FixtureRequest, tmp_path: Path, bucket: str, endpoint: str | None = None,
              warm: bool = False, **settings: Any) -> S3Store:
    server = request.getfixturevalue("s3_server")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    folder = FolderConfig(name="contract", source=tmp_path / "contract.yaml", path=tmp_path, bucket=bucket,
                          endpoint_url=endpoint or server.endpoint, region=server.region, **settings)
    return S3Store(folder, warm=warm)


def _azure_store(request: pytest.FixtureRequest, tmp_path: Path, container: str, endpoint: str | None = None,
                 retry_total: int = 2, **settings: Any) -> AzureBlobStore:
    server = request.getfixturevalue("azure_server")
    folder = FolderConfig(name="contract", source=tmp_path / "contract.yaml", path=tmp_path, bucket=container,
                          endpoint_url=endpoint or server.endpoint, **settings)
    return AzureBlobStore(folder, retry_total=retry_total, environ=server.env())


def _empty(store: ObjectStore) -> ObjectStore:
    """Empty a bucket shared by the module's tests (a new SeaweedFS bucket costs seconds)."""
    for upload in list(store.list_uploads("")):
        store.abort_upload(upload.key, upload.upload_id)
    keys = [o.key for page in store.list("") for o in page]
    for start in range(0, len(keys), 1000):
        assert store.delete(keys[start:start + 1000]) == {}
    assert all_keys(store) == []
    return store


@pytest.fixture(scope="module")
def shared_bucket(s3_server: Any) -> str:
    name = f"contract-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def shared_container(azure_server: Any) -> str:
    name = f"contract-{uuid.uuid4().hex[:12]}"
    azure_server.create_container(name)
    return name


def _make(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "memory":
        return MemoryStore()
    if kind == "s3":
        return _empty(_s3_store(request, tmp_path, request.getfixturevalue("shared_bucket")))
    if kind == "azure":
        return _empty(_azure_store(request, tmp_path, request.getfixturevalue("shared_container")))
    raise ValueError(kind)


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A store on an empty bucket."""
    made = _make(kind, request, tmp_path)
    yield made
    made.close()


Inject = Callable[..., None]


@pytest.fixture
def faulty(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, Inject]]:
    """A store whose every call of one method can be made to fail: ``inject(method)`` fails it
    before it takes effect, ``inject(method, lost=True)`` lets it take effect and loses the answer."""
    if kind == "memory":
        mem = MemoryStore()

        def inject_memory(method: str, *, lost: bool = False) -> None:
            mem.fail(method, TRANSIENT, times=1000, lost=lost)

        yield mem, inject_memory
        return
    if kind == "s3":
        proxy = request.getfixturevalue("s3_proxy")
        proxy.stall_seconds = 0.2
        shared = request.getfixturevalue("shared_bucket")
        _empty(_s3_store(request, tmp_path, shared)).close()
        s3 = _s3_store(request, tmp_path, shared, proxy.endpoint, request_timeout=5.0)

        def inject_s3(method: str, *, lost: bool = False) -> None:
            proxy.set_faults(1.0, ["lose-response" if lost else "503"], ops=S3_OPS[method])

        yield s3, inject_s3
        s3.close()
        return
    if kind == "azure":
        server = request.getfixturevalue("azure_server")
        shared = request.getfixturevalue("shared_container")
        _empty(_azure_store(request, tmp_path, shared)).close()
        with S3Proxy(server.endpoint.rsplit("/", 1)[0], classifier=classify_azure) as azure_proxy:
            azure_proxy.stall_seconds = 0.2
            # No client-side retries: each would meet the same fault.
            azure = _azure_store(request, tmp_path, shared, f"{azure_proxy.endpoint}/{server.account}",
                                 retry_total=0, request_timeout=5.0)

            def inject_azure(method: str, *, lost: bool = False) -> None:
                azure_proxy.set_faults(1.0, ["lose-response" if lost else "503"], ops=AZURE_OPS[method])

            yield azure, inject_azure
            azure.close()
        return
    raise ValueError(kind)


def put(store: ObjectStore, key: str, body: bytes, meta: dict[str, str] | None = None,
        headers: dict[str, str] | None = None) -> PutResult | StoreError:
    """``put`` waited for: its answer may come on another thread."""
    answers: list[PutResult | StoreError] = []
    answered = threading.Event()

    def done(answer: PutResult | StoreError) -> None:
        answers.append(answer)
        answered.set()

    extra = {"headers": headers} if headers else {}
    store.put(key, Payload(body), meta or {}, hashlib.sha256(body).digest(), done, **extra)
    assert answered.wait(30), f"put {key!r} never answered"
    assert len(answers) == 1, "done must be called exactly once"
    return answers[0]


def put_ok(store: ObjectStore, key: str, body: bytes, meta: dict[str, str] | None = None) -> PutResult:
    answer = put(store, key, body, meta)
    assert isinstance(answer, PutResult), answer
    return answer


def all_keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted(o.key for page in store.list(prefix) for o in page)


def upload_parts(store: ObjectStore, key: str, bodies: list[bytes],
                 meta: dict[str, str] | None = None) -> tuple[str, list[Part]]:
    upload_id = store.create_upload(key, meta or {})
    return upload_id, [store.upload_part(key, upload_id, n, Payload(b)) for n, b in enumerate(bodies, 1)]


# ---------------------------------------------------------------------- the bucket

def test_check_passes_on_a_reachable_bucket(store: ObjectStore) -> None:
    store.check()


def test_check_of_a_missing_bucket_is_a_folder_error(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if kind == "memory":
        gone = MemoryStore("gone")
        gone.exists = False
        missing: ObjectStore = gone
    elif kind == "azure":
        missing = _azure_store(request, tmp_path, "no-such-container-here")
    else:
        missing = _s3_store(request, tmp_path, "no-such-bucket-here")
    with pytest.raises(StoreError) as err:
        missing.check()
    assert err.value.scope == FOLDER


# ---------------------------------------------------------------------- put, head, read

def test_put_returns_the_md5_etag_and_the_bytes_sent(store: ObjectStore) -> None:
    answer = put_ok(store, "a/b.txt", b"hello")
    assert answer.etag == hashlib.md5(b"hello").hexdigest()
    assert answer.bytes_sent == 5


def test_head_gives_size_etag_and_metadata(store: ObjectStore) -> None:
    etag = put_ok(store, "a/b.txt", b"hello", {"syncd-mtime-ns": "123", "syncd-owner": "me"}).etag
    found = store.head("a/b.txt")
    assert found is not None
    assert (found.key, found.size, found.etag) == ("a/b.txt", 5, etag)
    assert dict(found.meta or {}) == {"syncd-mtime-ns": "123", "syncd-owner": "me"}


def test_head_of_an_absent_key_is_none(store: ObjectStore) -> None:
    assert store.head("nothing/here") is None


def test_put_accepts_object_headers(store: ObjectStore) -> None:
    answer = put(store, "page.html", b"<p>", headers={"Content-Type": "text/html", "Cache-Control": "no-cache"})
    assert isinstance(answer, PutResult)
    assert store.head("page.html") is not None


def test_put_of_the_same_bytes_again_gives_the_same_etag(store: ObjectStore) -> None:
    first = put_ok(store, "same", b"content")
    assert put_ok(store, "same", b"content").etag == first.etag
    assert all_keys(store) == ["same"]


def test_put_replaces_the_object(store: ObjectStore) -> None:
    put_ok(store, "k", b"old", {"v": "1"})
    put_ok(store, "k", b"newer", {"v": "2"})
    found = store.head("k")
    assert found is not None and found.size == 5 and dict(found.meta or {}) == {"v": "2"}


def test_put_of_an_empty_body(store: ObjectStore) -> None:
    assert put_ok(store, "empty", b"").etag == hashlib.md5(b"").hexdigest()
    assert store.read("empty") == b""


def test_put_of_a_key_over_1024_bytes_is_a_key_error(store: ObjectStore) -> None:
    answer = put(store, "k" * 1100, b"x")
    assert isinstance(answer, StoreError)
    assert answer.scope == KEY


def test_read_gives_the_bytes_or_none(store: ObjectStore) -> None:
    put_ok(store, "r", b"\x00\x01bytes")
    assert store.read("r") == b"\x00\x01bytes"
    assert store.read("absent") is None


def _fetch(store: ObjectStore, key: str, **kw: Any) -> tuple[RemoteObject, bytes]:
    body = store.get(key, **kw)
    try:
        return body.info, b"".join(body.chunks(64 * 1024))
    finally:
        body.close()


def test_get_gives_the_bytes_size_etag_and_metadata(store: ObjectStore) -> None:
    data = bytes(range(256)) * 1000
    etag = put_ok(store, "g", data, {"syncd-mtime-ns": "7"}).etag
    info, got = _fetch(store, "g")
    assert (got, info.size, info.etag, info.meta.get("syncd-mtime-ns")) == (data, len(data), etag, "7")


def test_get_of_a_range_gives_those_bytes_and_the_whole_size(store: ObjectStore) -> None:
    data = bytes(range(256)) * 100
    put_ok(store, "g", data)
    info, got = _fetch(store, "g", first=1000, last=1999)
    assert (got, info.size) == (data[1000:2000], len(data))


def test_get_of_an_absent_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as caught:
        store.get("absent")
    assert caught.value.scope == KEY


def test_fetch_whole_answers_the_bytes_and_what_the_get_said(store: ObjectStore) -> None:
    data = bytes(range(256)) * 300
    etag = put_ok(store, "w", data, {"syncd-mtime-ns": "9"}).etag
    whole = fetch_whole_now(store, "w", None)
    assert (b"".join(whole.pieces), whole.size) == (data, len(data))
    assert (whole.info.size, whole.info.etag, whole.info.meta and whole.info.meta.get("syncd-mtime-ns")) == (
        len(data), etag, "9")


def test_fetch_whole_of_an_absent_key_answers_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as caught:
        fetch_whole_now(store, "absent", None)
    assert caught.value.scope == KEY


def test_many_fetch_wholes_in_flight_each_answer_once_with_their_own_bytes(store: ObjectStore) -> None:
    bodies = {f"many/{i}": bytes([i]) * (1000 + i) for i in range(40)}
    for key, body in bodies.items():
        put_ok(store, key, body)
    answers: dict[str, list[bytes | StoreError]] = {key: [] for key in bodies}
    lock = threading.Lock()
    all_answered = threading.Event()

    def answered(key: str) -> Callable[[Whole | StoreError], None]:
        def done(got: Whole | StoreError) -> None:
            with lock:
                answers[key].append(got if isinstance(got, StoreError) else b"".join(got.pieces))
                if all(answers.values()):
                    all_answered.set()
        return done

    for key in bodies:  # every request sent before any answer is awaited
        store.fetch_whole(key, None, answered(key))
    assert all_answered.wait(30)
    assert answers == {key: [body] for key, body in bodies.items()}


@pytest.fixture(scope="module")
def versioned_bucket(s3_server: Any) -> str:
    name = f"contract-v-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def test_a_versioned_bucket_keeps_every_version_and_delete_marker(kind: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    store: ObjectStore = (MemoryStore(versioned=True) if kind == "memory" else
                          _s3_store(request, tmp_path, request.getfixturevalue("versioned_bucket")))
    key = f"v-{uuid.uuid4().hex[:8]}"
    put_ok(store, key, b"one")
    put_ok(store, key, b"two")
    assert store.delete([key]) == {}
    assert store.versioning() == "Enabled"
    versions = [v for page in store.list_versions(key) for v in page]
    assert sorted(v.deleted for v in versions) == [False, False, True]
    bodies = {_fetch(store, key, version=v.version_id)[1] for v in versions if not v.deleted}
    assert bodies == {b"one", b"two"}
    assert store.head(key) is None


# ---------------------------------------------------------------------- write (bookkeeping)

def test_write_if_absent_creates_once(store: ObjectStore) -> None:
    assert store.write("marker.json", b'{"id": 1}', if_absent=True) is True
    assert store.write("marker.json", b'{"id": 2}', if_absent=True) is False
    assert store.read("marker.json") == b'{"id": 1}'


def test_write_without_condition_replaces(store: ObjectStore) -> None:
    store.write("state.json", b"1", if_absent=False)
    assert store.write("state.json", b"2", if_absent=False) is True
    assert store.read("state.json") == b"2"


def test_write_if_absent_over_a_put_object_is_refused(store: ObjectStore) -> None:
    put_ok(store, "taken", b"data")
    assert store.write("taken", b"{}", if_absent=True) is False
    assert store.read("taken") == b"data"


# ---------------------------------------------------------------------- list

def test_list_gives_every_key_under_the_prefix(store: ObjectStore) -> None:
    for key in ["p/a", "p/b/c", "p/- x", "p/-/x", "q/a"]:
        put_ok(store, key, b"x")
    assert all_keys(store, "p/") == ["p/- x", "p/-/x", "p/a", "p/b/c"]
    sizes = {o.key: (o.size, o.etag) for page in store.list("p/") for o in page}
    assert sizes["p/a"] == (1, hashlib.md5(b"x").hexdigest())


AWKWARD_KEYS = ["k/a+b", "k/a b", "k/a%2Fb", "k/100%", "k/\u00fc \u00f1/\u20ac", "k/x&y<z>'\"", "k/q?=#;",
                "k/~t", "k/tab\tx", "k/*()!$,@:"]


def test_list_gives_keys_with_awkward_characters_exactly(store: ObjectStore) -> None:
    for key in AWKWARD_KEYS:
        put_ok(store, key, key.encode())
    listed = {o.key: o.size for page in store.list("k/") for o in page}
    assert listed == {key: len(key.encode()) for key in AWKWARD_KEYS}


def test_list_under_a_prefix_with_awkward_characters(store: ObjectStore) -> None:
    for key in ["a b+c%/\u00fc/1", "a b+c%/2", "a b+c%x", "a b+c"]:
        put_ok(store, key, b"x")
    assert all_keys(store, "a b+c%/") == ["a b+c%/2", "a b+c%/\u00fc/1"]


def test_list_gives_each_object_its_modification_time(store: ObjectStore) -> None:
    before = time.time()
    put_ok(store, "m/a", b"x")
    (obj,) = [o for page in store.list("m/") for o in page]
    assert obj.modified is not None and before - 5 <= obj.modified <= time.time() + 5


def test_list_of_an_empty_prefix_gives_no_objects(store: ObjectStore) -> None:
    assert all_keys(store, "none/") == []


def test_list_pages_hold_at_most_1000_keys(store: ObjectStore) -> None:
    keys = [f"many/{i:04d}" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.write(key, b"", if_absent=False), keys))
    pages = list(store.list("many/"))
    assert len(pages) >= 2
    assert all(len(page) <= 1000 for page in pages)
    assert sorted(o.key for page in pages for o in page) == keys


# ---------------------------------------------------------------------- copy, set_meta

def test_copy_keeps_bytes_and_metadata(store: ObjectStore) -> None:
    put_ok(store, "src", b"payload", {"syncd-sha256": "ab", "syncd-owner": "me"})
    etag = store.copy("src", "dst")
    found = store.head("dst")
    assert found is not None and found.etag == etag and found.size == 7
    assert dict(found.meta or {}) == {"syncd-sha256": "ab", "syncd-owner": "me"}
    assert store.read("dst") == b"payload"
    assert store.read("src") == b"payload"


def test_copy_with_headers_keeps_the_metadata(store: ObjectStore) -> None:
    put_ok(store, "src.txt", b"payload", {"syncd-owner": "me"})
    store.copy("src.txt", "dst.html", headers={"Content-Type": "text/html"})
    found = store.head("dst.html")
    assert found is not None and dict(found.meta or {}) == {"syncd-owner": "me"}


def test_copy_of_an_absent_source_is_a_key_error(store: ObjectStore) -> None:
    with pytest.raises(StoreError) as err:
        store.copy("absent", "dst")
    assert err.value.scope == KEY
    assert store.head("dst") is None


def test_copy_if_match_copies_only_that_version_of_the_source(store: ObjectStore) -> None:
    etag = put_ok(store, "src", b"payload").etag
    store.copy("src", "dst", if_match=etag)
    assert store.read("dst") == b"payload"
    put_ok(store, "src", b"replaced")
    with pytest.raises(Changed):
        store.copy("src", "other", if_match=etag)
    assert store.head("other") is None


def test_copy_again_is_harmless(store: ObjectStore) -> None:
    put_ok(store, "src", b"payload")
    assert store.copy("src", "dst") == store.copy("src", "dst")


def test_set_meta_replaces_the_metadata_and_keeps_the_bytes(store: ObjectStore) -> None:
    put_ok(store, "m", b"bytes", {"syncd-mtime-ns": "1"})
    etag = store.set_meta("m", {"syncd-mtime-ns": "2", "syncd-sha256": "cd"}, 5, headers={"Content-Type": "text/plain"})
    found = store.head("m")
    assert found is not None and found.etag == etag
    assert dict(found.meta or {}) == {"syncd-mtime-ns": "2", "syncd-sha256": "cd"}
    assert store.read("m") == b"bytes"


def test_set_meta_of_an_absent_key_is_a_key_error(store: ObjectStore) -> None:
    with pytest.raises(StoreError) as err:
        store.set_meta("absent", {"a": "b"}, 0)
    assert err.value.scope == KEY


# ---------------------------------------------------------------------- delete

def test_delete_removes_the_keys(store: ObjectStore) -> None:
    put_ok(store, "d/1", b"1")
    put_ok(store, "d/2", b"2")
    put_ok(store, "d/3", b"3")
    assert store.delete(["d/1", "d/2"]) == {}
    assert all_keys(store, "d/") == ["d/3"]


def test_delete_of_absent_keys_succeeds(store: ObjectStore) -> None:
    assert store.delete(["never/was", "nor/this"]) == {}
    assert store.delete([]) == {}


def test_delete_takes_at_most_1000_keys(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.delete([f"k{i}" for i in range(1001)])


def test_delete_of_1000_keys_at_once_succeeds(store: ObjectStore) -> None:
    keys = [f"bulk/{i:04d}" for i in range(1000)]
    for key in keys[:20]:
        store.write(key, b"", if_absent=False)
    assert store.delete(keys) == {}
    assert all_keys(store, "bulk/") == []


# ---------------------------------------------------------------------- multipart

def test_multipart_upload_publishes_the_parts_in_order_with_the_multipart_etag(store: ObjectStore) -> None:
    bodies = [b"a" * (5 * MiB), b"b" * 100]
    upload_id, parts = upload_parts(store, "big", bodies, {"syncd-owner": "me"})
    assert [p.number for p in parts] == [1, 2]
    assert [p.etag for p in parts] == [hashlib.md5(b).hexdigest() for b in bodies]
    etag = store.complete_upload("big", upload_id, list(reversed(parts)), {"syncd-owner": "me"})
    assert etag == multipart_etag(parts)
    found = store.head("big")
    assert found is not None and found.etag == etag and found.size == 5 * MiB + 100
    assert dict(found.meta or {}) == {"syncd-owner": "me"}
    assert store.read("big") == b"".join(bodies)
    assert store.list_parts("big", upload_id) is None


def test_list_parts_gives_the_uploaded_parts(store: ObjectStore) -> None:
    upload_id, parts = upload_parts(store, "lp", [b"x" * 10, b"y" * 20])
    assert [(p.number, p.etag, p.size) for p in store.list_parts("lp", upload_id) or []] == \
        [(p.number, p.etag, p.size) for p in parts]


def test_list_parts_of_an_unknown_upload_is_none(store: ObjectStore) -> None:
    upload_id, _ = upload_parts(store, "lp", [])
    store.abort_upload("lp", upload_id)
    assert store.list_parts("lp", upload_id) is None


def test_a_part_sent_again_is_the_one_completed(store: ObjectStore) -> None:
    # Not asserted on list_parts: SeaweedFS lists both copies of a part number sent twice.
    upload_id, _ = upload_parts(store, "again", [b"first"])
    part = store.upload_part("again", upload_id, 1, Payload(b"second"))
    assert store.complete_upload("again", upload_id, [part]) == multipart_etag([part])
    assert store.read("again") == b"second"


def test_list_uploads_finds_incomplete_uploads_under_the_prefix(store: ObjectStore) -> None:
    inside, _ = upload_parts(store, "u/a", [b"x"])
    upload_parts(store, "elsewhere", [b"x"])
    found = list(store.list_uploads("u/"))
    assert [(u.key, u.upload_id) for u in found] == [("u/a", inside)]
    assert found[0].initiated > 0


def test_abort_discards_the_upload(store: ObjectStore) -> None:
    upload_id, _ = upload_parts(store, "ab", [b"x"])
    store.abort_upload("ab", upload_id)
    assert list(store.list_uploads("ab")) == []
    assert store.head("ab") is None


def test_abort_of_an_absent_upload_is_not_an_error(store: ObjectStore) -> None:
    upload_id, _ = upload_parts(store, "ab", [b"x"])
    store.abort_upload("ab", upload_id)
    store.abort_upload("ab", upload_id)


def test_complete_of_an_aborted_upload_is_a_key_error(store: ObjectStore) -> None:
    upload_id, parts = upload_parts(store, "gone", [b"x"])
    store.abort_upload("gone", upload_id)
    with pytest.raises(StoreError) as err:
        store.complete_upload("gone", upload_id, parts)
    assert err.value.scope == KEY
    assert store.head("gone") is None


def test_upload_part_to_an_aborted_upload_is_a_key_error(kind: str, store: ObjectStore) -> None:
    if kind == "azure":
        pytest.skip("Azure has no upload object: Put Block to an aborted upload stages a block; "
                    "complete_upload refuses it (test_complete_of_an_aborted_upload_is_a_key_error)")
    upload_id, _ = upload_parts(store, "gone", [])
    store.abort_upload("gone", upload_id)
    with pytest.raises(StoreError) as err:
        store.upload_part("gone", upload_id, 1, Payload(b"x"))
    assert err.value.scope == KEY


def test_complete_with_a_wrong_part_etag_is_a_key_error(store: ObjectStore) -> None:
    upload_id, parts = upload_parts(store, "bad", [b"x"])
    with pytest.raises(StoreError) as err:
        store.complete_upload("bad", upload_id, [Part(1, "0" * 32, parts[0].checksum, parts[0].size)])
    assert err.value.scope == KEY


def test_complete_with_a_part_under_5_mib_before_the_last_is_a_key_error(store: ObjectStore) -> None:
    upload_id, parts = upload_parts(store, "small", [b"a" * 10, b"b" * 10])
    with pytest.raises(StoreError) as err:
        store.complete_upload("small", upload_id, parts)
    assert err.value.scope == KEY


def test_set_meta_of_a_multipart_object_keeps_its_bytes(store: ObjectStore) -> None:
    upload_id, parts = upload_parts(store, "mp", [b"z" * 100])
    store.complete_upload("mp", upload_id, parts)
    etag = store.set_meta("mp", {"syncd-sha256": "ef"}, 100)
    found = store.head("mp")
    assert found is not None and found.etag == etag and dict(found.meta or {}) == {"syncd-sha256": "ef"}
    assert store.read("mp") == b"z" * 100


# ---------------------------------------------------------------------- transient failures

def test_a_transient_failure_of_put_reaches_done_and_changes_nothing(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    inject("put")
    answer = put(store, "t", b"x")
    assert isinstance(answer, StoreError) and answer.scope == TRANSIENT
    assert store.read("t") is None


@pytest.mark.parametrize("method", ["head", "read", "list", "delete", "write", "check"])
def test_a_transient_failure_of_a_call_raises_a_transient_error(faulty: tuple[ObjectStore, Inject],
                                                                method: str) -> None:
    store, inject = faulty
    calls: dict[str, Callable[[], object]] = {
        "head": lambda: store.head("t"), "read": lambda: store.read("t"), "list": lambda: list(store.list("")),
        "delete": lambda: store.delete(["t"]), "write": lambda: store.write("t", b"{}", if_absent=True),
        "check": store.check}
    inject(method)
    with pytest.raises(StoreError) as err:
        calls[method]()
    assert err.value.scope == TRANSIENT


def test_a_transient_failure_of_a_multipart_call_raises_a_transient_error(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    upload_id, parts = upload_parts(store, "mt", [b"x"])
    inject("complete_upload")
    with pytest.raises(StoreError) as err:
        store.complete_upload("mt", upload_id, parts)
    assert err.value.scope == TRANSIENT


# ---------------------------------------------------------------------- lost answers

def test_a_put_whose_answer_is_lost_took_effect(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    inject("put", lost=True)
    answer = put(store, "lost", b"arrived")
    assert isinstance(answer, StoreError) and answer.scope == TRANSIENT
    found = store.head("lost")
    assert found is not None and found.etag == hashlib.md5(b"arrived").hexdigest()


def test_a_complete_whose_answer_is_lost_is_recognised_by_head(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    upload_id, parts = upload_parts(store, "lostmp", [b"q" * 50])
    inject("complete_upload", lost=True)
    with pytest.raises(StoreError) as err:
        store.complete_upload("lostmp", upload_id, parts)
    assert err.value.scope == TRANSIENT
    found = store.head("lostmp")
    assert found is not None and found.etag == multipart_etag(parts)


def test_a_conditional_write_whose_answer_is_lost_took_effect(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    inject("write", lost=True)
    with pytest.raises(StoreError) as err:
        store.write("owner.json", b'{"id": 7}', if_absent=True)
    assert err.value.scope == TRANSIENT
    assert store.read("owner.json") == b'{"id": 7}'


def test_a_delete_whose_answer_is_lost_took_effect(faulty: tuple[ObjectStore, Inject]) -> None:
    store, inject = faulty
    put_ok(store, "doomed", b"x")
    inject("delete", lost=True)
    with pytest.raises(StoreError) as err:
        store.delete(["doomed"])
    assert err.value.scope == TRANSIENT
    assert store.head("doomed") is None


# ---------------------------------------------------------------------- S3: the probe's two paths
# The probe's requests (HeadBucket, the owner marker's read and conditional write) go through
# the CRT; a folder with a bandwidth limit has no CRT path, so botocore sends them there.

def _paced_s3_store(request: pytest.FixtureRequest, tmp_path: Path, bucket: str) -> S3Store:
    store = _s3_store(request, tmp_path, bucket, bandwidth=100 * MiB)
    assert not store.background_puts  # no CRT: what follows tests botocore's path
    return store


def test_check_without_the_crt_passes_on_a_reachable_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = _empty(_paced_s3_store(request, tmp_path, request.getfixturevalue("shared_bucket")))
    try:
        store.check()
    finally:
        store.close()


def test_check_without_the_crt_names_a_missing_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = _paced_s3_store(request, tmp_path, "no-such-bucket-here")
    with pytest.raises(StoreError) as err:
        store.check()
    assert err.value.scope == FOLDER and err.value.code == "NoSuchBucket" and "no-such-bucket-here" in str(err.value)


def test_check_through_the_crt_names_a_missing_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = _s3_store(request, tmp_path, "no-such-bucket-here")
    assert store.background_puts
    with pytest.raises(StoreError) as err:
        store.check()
    assert err.value.scope == FOLDER and err.value.code == "NoSuchBucket" and "no-such-bucket-here" in str(err.value)


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
def test_reading_from_a_missing_bucket_names_it_rather_than_finding_nothing(
        request: pytest.FixtureRequest, tmp_path: Path, crt: bool) -> None:
    # The owner claim reads its marker: "no marker" on a missing bucket would let it write one.
    store = (_s3_store if crt else _paced_s3_store)(request, tmp_path, "no-such-bucket-here")
    assert store.background_puts is crt
    try:
        with pytest.raises(StoreError) as err:
            store.read("owner.json")
        assert err.value.scope == FOLDER and err.value.code == "NoSuchBucket"
    finally:
        store.close()


def test_write_if_absent_and_read_without_the_crt(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = _empty(_paced_s3_store(request, tmp_path, request.getfixturevalue("shared_bucket")))
    try:
        assert store.read("marker.json") is None
        assert store.write("marker.json", b'{"id": 1}', if_absent=True) is True
        assert store.write("marker.json", b'{"id": 2}', if_absent=True) is False
        assert store.read("marker.json") == b'{"id": 1}'
    finally:
        store.close()


def test_a_store_opened_warm_builds_the_botocore_client_in_the_background(request: pytest.FixtureRequest,
                                                                          tmp_path: Path) -> None:
    # A request timeout no other test uses: a client set of its own, which nothing has built yet.
    store = _s3_store(request, tmp_path, request.getfixturevalue("shared_bucket"), request_timeout=41.0, warm=True)
    try:
        shared = store._shared
        assert shared is not None
        deadline = time.monotonic() + 30
        while shared._client is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shared._client is not None
    finally:
        store.close()


def test_a_probe_alone_builds_no_botocore_client(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # syncd check-config probes through the CRT and exits: building botocore's client is waste.
    store = _s3_store(request, tmp_path, request.getfixturevalue("shared_bucket"), request_timeout=42.0)
    try:
        store.check()
        assert store._shared is not None and store._shared._client is None and not store._shared._warming
    finally:
        store.close()
