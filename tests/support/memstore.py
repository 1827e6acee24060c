"""An in-memory :class:`syncd.store.ObjectStore` that keeps S3's semantics, for fast tests.

What it keeps from S3, because the pipeline depends on it: ETags (the MD5 of a single PUT,
``md5-of-part-md5s-N`` for a completed multipart upload), multipart uploads with their parts,
S3's part limits, copies that keep metadata, batch deletes of at most 1000 keys with per-key
errors, listing pages of at most 1000 keys in no particular order, and ``If-None-Match: *``.

Failures are injected per operation (the protocol's method names): ``fail("put", TRANSIENT)``
makes the next put fail before it takes effect; ``lost=True`` lets the operation take effect
and then raises StoreError(TRANSIENT), as an answer lost on the way back does. ``hook`` sees
every operation first and may raise a StoreError of its own. tests/test_store_contract.py holds
it to the same contract as the real stores.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from syncd.bandwidth import Payload
from syncd.store import (
    FOLDER,
    KEY,
    NO_HEADERS,
    TRANSIENT,
    Changed,
    Fetched,
    NotFound,
    Part,
    PutResult,
    RemoteObject,
    StoreError,
    Upload,
    UploadGone,
    Version,
    Whole,
    fetch_whole_by_fetch,
    multipart_etag,
)

MiB = 1024 * 1024
MAX_KEY_BYTES = 1024          # S3: a key is at most 1024 bytes of UTF-8
MAX_SINGLE_PUT = 5 * 1024**3  # S3: PutObject and CopyObject stop at 5 GiB
MIN_PART = 5 * MiB            # S3: every part but the last is at least 5 MiB
MAX_PART_NUMBER = 10_000      # S3: part numbers 1..10000
MAX_DELETE = 1000             # S3: DeleteObjects takes at most 1000 keys
PAGE_SIZE = 1000              # S3: ListObjectsV2 returns at most 1000 keys a page

Hook = Callable[[str, "str | None"], None]


@dataclass
class StoredObject:
    body: bytes
    etag: str
    meta: dict[str, str]
    headers: dict[str, str]
    modified: float = field(default_factory=time.time)  # LastModified


@dataclass
class _Upload:
    key: str
    initiated: float
    meta: dict[str, str]
    headers: dict[str, str]
    parts: dict[int, tuple[Part, bytes]] = field(default_factory=dict)


@dataclass
class Fault:
    """An injected failure: the next ``times`` calls of ``op`` (on ``key``, if given) fail."""

    op: str
    scope: str
    times: int
    lost: bool
    key: str | None
    code: str


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _read(body: Payload) -> bytes:
    """The payload's bytes, read through it when it is paced (a bandwidth limit)."""
    if body.plain:
        return bytes(body.data)
    body.seek(0)
    chunks = []
    while chunk := body.read(MiB):
        chunks.append(chunk)
    return b"".join(chunks)


class _Fetched:
    """A body being read (syncd.store.Fetched), from bytes already held."""

    def __init__(self, info: RemoteObject, body: bytes) -> None:
        self.info = info
        self._body = body

    def chunks(self, size: int) -> Iterator[bytes]:
        for start in range(0, len(self._body), size):
            yield self._body[start:start + size]

    def close(self) -> None:
        pass


class MemoryStore:
    """A bucket in a dict; thread-safe (one lock), every answer given before the call returns."""

    def __init__(self, bucket: str = "memory", *, seed: int = 0, page_size: int = PAGE_SIZE,
                 clock: Callable[[], float] = time.time, versioned: bool = False, sorted_listing: bool = False) -> None:
        self.bucket = bucket
        self.sorted_listing = sorted_listing        # list in key order, as S3 does (default: shuffled)
        self.background_puts = False  # put answers before it returns (and a fault hook may hold it)
        self.parallel_fetch = False   # fetch hands over one object's pieces from one "GET"
        self.background_fetch = False  # fetch_whole answers before it returns
        self.objects: dict[str, StoredObject] = {}  # tests may look at headers here
        self.versioned = versioned                  # keep every version and delete marker, as S3 does
        self._history: dict[str, list[tuple[str, float, StoredObject | None]]] = {}
        self.exists = True                          # False: the bucket is gone (FOLDER errors)
        self.hook: Hook | None = None
        self.calls: Counter[str] = Counter()        # operations attempted, by method name
        self._uploads: dict[str, _Upload] = {}
        self._faults: list[Fault] = []
        self._random = random.Random(seed)
        self._page_size = page_size
        self._clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ failure injection

    def fail(self, op: str, scope: str = TRANSIENT, *, times: int = 1, lost: bool = False,
             key: str | None = None, code: str = "") -> None:
        """Make the next ``times`` calls of ``op`` fail with ``scope``. ``lost``: the call takes
        effect first, then raises TRANSIENT (the answer never came). For ``delete`` with a
        ``key``, that key is reported in the returned errors instead."""
        if not hasattr(self, op):
            raise ValueError(f"no such operation: {op}")
        default = {TRANSIENT: "SlowDown", FOLDER: "AccessDenied", KEY: "InvalidArgument"}[scope]
        with self._lock:
            self._faults.append(Fault(op, TRANSIENT if lost else scope, times, lost, key, code or default))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, op: str, key: str | None, *, lost: bool) -> Fault | None:
        for fault in self._faults:
            if fault.op == op and fault.lost == lost and (fault.key is None or fault.key == key):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _error(self, fault: Fault, key: str | None) -> StoreError:
        what = "answer lost after the operation took effect" if fault.lost else "injected failure"
        code = "RequestTimeout" if fault.lost else fault.code
        return StoreError(f"memory://{self.bucket}/{key or ''}: {code}: {what}", scope=fault.scope, code=code, key=key)

    def _before(self, op: str, key: str | None = None) -> None:
        """Count the call, run the hook and any injected failure (nothing has happened yet)."""
        self.calls[op] += 1
        if self.hook is not None:
            self.hook(op, key)
        if not self.exists and op != "close":
            raise StoreError(f"bucket {self.bucket!r}: NoSuchBucket: the bucket does not exist",
                             scope=FOLDER, code="NoSuchBucket", key=key)
        fault = self._take(op, key, lost=False)
        if fault is not None:
            raise self._error(fault, key)

    def _after(self, op: str, key: str | None = None) -> None:
        """The operation took effect: raise if its answer is to be lost."""
        fault = self._take(op, key, lost=True)
        if fault is not None:
            raise self._error(fault, key)

    def _check_key(self, key: str) -> None:
        if not key or len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
            raise StoreError(f"memory://{self.bucket}/{key[:80]}: KeyTooLongError: a key is 1 to "
                             f"{MAX_KEY_BYTES} bytes", scope=KEY, code="KeyTooLongError", key=key)

    def _missing(self, key: str, code: str = "NoSuchKey") -> StoreError:
        return NotFound(f"memory://{self.bucket}/{key}: {code}: the key does not exist", scope=KEY, code=code,
                          key=key)

    def _store(self, key: str, obj: StoredObject) -> None:
        self.objects[key] = obj
        if self.versioned:
            self._history.setdefault(key, []).append((f"v{next(self._ids)}", self._clock(), obj))

    def _remove(self, key: str) -> None:
        if self.objects.pop(key, None) is not None and self.versioned:
            self._history[key].append((f"v{next(self._ids)}", self._clock(), None))  # a delete marker

    def _version(self, key: str, version: str | None) -> StoredObject | None:
        if version is None:
            return self.objects.get(key)
        return next((obj for vid, _, obj in self._history.get(key, []) if vid == version), None)

    def _upload(self, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise UploadGone(f"memory://{self.bucket}/{key}: NoSuchUpload: upload {upload_id!r} does not exist",
                             scope=KEY, code="NoSuchUpload", key=key)
        return upload

    # ------------------------------------------------------------------ the protocol

    def check(self) -> None:
        with self._lock:
            self._before("check")

    def put(self, key: str, body: Payload, meta: Mapping[str, str], sha256: bytes,
            done: Callable[[PutResult | StoreError], None], headers: Mapping[str, str] = NO_HEADERS) -> None:
        data = _read(body)
        try:
            with self._lock:
                self._before("put", key)
                self._check_key(key)
                if len(data) > MAX_SINGLE_PUT:
                    raise StoreError(f"memory://{self.bucket}/{key}: EntityTooLarge: one PUT is at most 5 GiB",
                                     scope=KEY, code="EntityTooLarge", key=key)
                if hashlib.sha256(data).digest() != sha256:
                    raise StoreError(f"memory://{self.bucket}/{key}: BadDigest: the body does not match its "
                                     "checksum", scope=TRANSIENT, code="BadDigest", key=key)
                etag = _md5(data)
                self._store(key, StoredObject(data, etag, dict(meta), dict(headers)))
                self._after("put", key)
        except StoreError as exc:
            done(exc)
            return
        done(PutResult(etag=etag, bytes_sent=len(data)))

    def create_upload(self, key: str, meta: Mapping[str, str], headers: Mapping[str, str] = NO_HEADERS) -> str:
        with self._lock:
            self._before("create_upload", key)
            self._check_key(key)
            upload_id = f"upload-{next(self._ids)}"
            self._uploads[upload_id] = _Upload(key, self._clock(), dict(meta), dict(headers))
            self._after("create_upload", key)
            return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, body: Payload) -> Part:
        data = _read(body)
        with self._lock:
            self._before("upload_part", key)
            upload = self._upload(key, upload_id)
            if not 1 <= number <= MAX_PART_NUMBER:
                raise StoreError(f"memory://{self.bucket}/{key}: InvalidArgument: part number {number} is not "
                                 f"in 1..{MAX_PART_NUMBER}", scope=KEY, code="InvalidArgument", key=key)
            part = Part(number, _md5(data), "", len(data))
            upload.parts[number] = (part, data)
            self._after("upload_part", key)
            return part

    def complete_upload(self, key: str, upload_id: str, parts: list[Part], meta: Mapping[str, str] | None = None,
                        headers: Mapping[str, str] = NO_HEADERS) -> str:
        # meta and headers: fixed at create_upload, as on S3.
        with self._lock:
            self._before("complete_upload", key)
            upload = self._upload(key, upload_id)
            ordered = sorted(parts, key=lambda p: p.number)
            chunks = []
            for i, p in enumerate(ordered):
                held = upload.parts.get(p.number)
                if held is None or held[0].etag != p.etag:
                    raise StoreError(f"memory://{self.bucket}/{key}: InvalidPart: part {p.number} was not "
                                     "uploaded with that ETag", scope=KEY, code="InvalidPart", key=key)
                if i < len(ordered) - 1 and len(held[1]) < MIN_PART:
                    raise StoreError(f"memory://{self.bucket}/{key}: EntityTooSmall: part {p.number} is under "
                                     "5 MiB", scope=KEY, code="EntityTooSmall", key=key)
                chunks.append(held[1])
            etag: str = multipart_etag([upload.parts[p.number][0] for p in ordered])
            self._store(key, StoredObject(b"".join(chunks), etag, upload.meta, upload.headers))
            del self._uploads[upload_id]
            self._after("complete_upload", key)
            return etag

    def abort_upload(self, key: str, upload_id: str) -> None:
        with self._lock:
            self._before("abort_upload", key)
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]
            self._after("abort_upload", key)

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        with self._lock:
            self._before("list_parts", key)
            upload = self._uploads.get(upload_id)
            if upload is None or upload.key != key:
                return None
            return [upload.parts[n][0] for n in sorted(upload.parts)]

    def list_uploads(self, prefix: str) -> Iterator[Upload]:
        with self._lock:
            self._before("list_uploads")
            found = [Upload(u.key, upload_id, u.initiated) for upload_id, u in self._uploads.items()
                     if u.key.startswith(prefix)]
        yield from found

    def set_meta(self, key: str, meta: Mapping[str, str], size: int, headers: Mapping[str, str] = NO_HEADERS) -> str:
        with self._lock:
            self._before("set_meta", key)
            obj = self.objects.get(key)
            if obj is None:
                raise self._missing(key)
            # A copy onto itself: S3 gives the result the MD5 of its bytes, multipart or not.
            etag = _md5(obj.body)
            self._store(key, StoredObject(obj.body, etag, dict(meta), dict(headers)))
            self._after("set_meta", key)
            return etag

    def copy(self, src_key: str, dst_key: str, headers: Mapping[str, str] | None = None,
             if_match: str | None = None) -> str:
        with self._lock:
            self._before("copy", dst_key)
            self._check_key(dst_key)
            src = self.objects.get(src_key)
            if src is None:
                raise self._missing(src_key)
            if if_match is not None and src.etag != if_match:
                raise Changed(f"memory://{self.bucket}/{src_key}: PreconditionFailed: the ETag is not {if_match}",
                              scope=KEY, code="PreconditionFailed", key=src_key)
            kept = dict(src.headers) if headers is None else dict(headers)
            self._store(dst_key, StoredObject(src.body, _md5(src.body), dict(src.meta), kept))
            self._after("copy", dst_key)
            return self.objects[dst_key].etag

    def delete(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        if len(keys) > MAX_DELETE:
            raise ValueError("DeleteObjects takes at most 1000 keys")  # S3 API limit
        with self._lock:
            self._before("delete")
            errors: dict[str, str] = {}
            for key in keys:
                fault = next((f for f in self._faults if f.op == "delete" and f.key == key), None)
                if fault is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    errors[key] = f"{fault.code}: injected failure"
                else:
                    self._remove(key)  # deleting an absent key succeeds, as on S3
            self._after("delete")
            return errors

    def read(self, key: str) -> bytes | None:
        with self._lock:
            self._before("read", key)
            obj = self.objects.get(key)
            return None if obj is None else obj.body

    def write(self, key: str, body: bytes, *, if_absent: bool) -> bool:
        with self._lock:
            self._before("write", key)
            self._check_key(key)
            if if_absent and key in self.objects:
                return False
            self._store(key, StoredObject(bytes(body), _md5(body), {}, {"Content-Type": "application/json"}))
            self._after("write", key)
            return True

    def fetch(self, key: str, version: str | None,
              start: Callable[[RemoteObject], Callable[[bytes], None]], part_size: int = 0) -> RemoteObject:
        with self._lock:
            self._before("fetch", key)
            obj = self._version(key, version)
            if obj is None:
                raise self._missing(key)
            info = RemoteObject(key, len(obj.body), obj.etag, dict(obj.meta), obj.modified)
            body = obj.body
        consume = start(info)
        for at in range(0, len(body), 64 * 1024):
            consume(body[at:at + 64 * 1024])
        return info

    def fetch_whole(self, key: str, version: str | None, done: Callable[[Whole | StoreError], None]) -> None:
        fetch_whole_by_fetch(self, key, version, done)

    def versioning(self) -> str:
        return "Enabled" if self.versioned else ""

    def list_versions(self, prefix: str) -> Iterator[list[Version]]:
        with self._lock:
            self._before("list_versions")
            found = [Version(key, vid, when, obj is None, 0 if obj is None else len(obj.body),
                             "" if obj is None else obj.etag)
                     for key, history in self._history.items() if key.startswith(prefix)
                     for vid, when, obj in history]
        for start in range(0, len(found), self._page_size):
            yield found[start:start + self._page_size]
        if not found:
            yield []

    def head(self, key: str, version: str | None = None) -> RemoteObject | None:
        with self._lock:
            self._before("head", key)
            obj = self._version(key, version)
            return None if obj is None else RemoteObject(key, len(obj.body), obj.etag, dict(obj.meta))

    def get(self, key: str, version: str | None = None, first: int = 0, last: int | None = None) -> Fetched:
        with self._lock:
            self._before("get", key)
            obj = self._version(key, version)
            if obj is None:
                raise NotFound(f"memory://{self.bucket}/{key}: NoSuchKey: no such object", scope=KEY,
                               code="NoSuchKey", key=key)
            body = obj.body[first:None if last is None else last + 1]
            # The size is the whole object's, as a ranged GET's Content-Range gives it.
            return _Fetched(RemoteObject(key, len(obj.body), obj.etag, dict(obj.meta)), body)

    def list(self, prefix: str) -> Iterator[list[RemoteObject]]:
        with self._lock:
            self._before("list")
            found = [RemoteObject(k, len(o.body), o.etag, modified=o.modified)
                     for k, o in self.objects.items() if k.startswith(prefix)]
            if self.sorted_listing:
                found.sort(key=lambda o: o.key)  # S3: ascending UTF-8 byte order (= code point order)
            else:
                self._random.shuffle(found)  # no order is promised (SeaweedFS walks its tree)
        for start in range(0, len(found), self._page_size):
            yield found[start:start + self._page_size]
        if not found:
            yield []  # S3 answers an empty listing with one empty page

    def close(self) -> None:
        pass
