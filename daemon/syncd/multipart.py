"""Multipart uploads of large files: resumable after kill -9, verified end to end.

One pass over the file: a reader reads each part, feeds the whole-file SHA-256 and hands
the part to a few sender threads; the part's own checksum travels with it and the server
checks it. Every confirmed part is journaled at once (see :mod:`syncd.uploads`), so after
a crash only the parts that were in flight are sent again. The file's stat is checked after
every part and at the end: a file that changed meanwhile aborts the upload, so a torn
object is never published. S3 fixes an object's metadata when the upload is created, so the
content hash is added once the object is complete, by a server-side copy onto itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import structlog

from .bandwidth import Payload, Throttle
from .changes import Entry
from .config import FolderConfig
from .headers import object_headers
from .store import (
    FOLDER,
    KEY,
    META_MTIME,
    META_SHA256,
    TRANSIENT,
    ObjectStore,
    Part,
    StoreError,
    UploadGone,
    multipart_etag,
    object_meta,
)
from .uploads import UploadLog, UploadRecord
from .validators import S3_MAX_PART as MAX_PART
from .validators import S3_MIN_PART as MIN_PART
from .validators import MiB

MAX_PARTS = 10_000                 # S3: at most 10,000 parts per upload, each 5 MiB to 5 GiB
MAX_OBJECT = 5 * 1024 * 1024 * MiB  # S3: objects are at most 5 TiB
PART_ATTEMPTS = 4                  # tries per part in one run, on top of the client's own retries
PART_RETRY_BASE = 0.5


class FileChanged(Exception):
    """The file changed while it was read: the bytes are not one version of it."""


class Interrupted(Exception):
    """The daemon is stopping: the upload keeps its finished parts and resumes next time."""


def part_size_for(size: int, configured: int) -> int:
    """The configured part size, raised (to whole MiB) as far as S3's 10,000-part limit needs."""
    if size > MAX_OBJECT:
        raise ValueError(f"{size} bytes is more than S3's 5 TiB object limit")
    needed = -(-size // MAX_PARTS)
    part = max(configured, needed, MIN_PART)
    return min(MAX_PART, -(-part // MiB) * MiB)


def _read_into(f: io.RawIOBase, view: memoryview) -> int:
    """Fill ``view`` from ``f``; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ino, b.st_ctime_ns)


@dataclass
class Source:
    """The open file being uploaded and its stat when it was opened."""

    path: str
    key: str
    f: io.RawIOBase
    fd: int
    before: os.stat_result

    def check(self) -> None:
        if not same_version(self.before, os.fstat(self.fd)):
            raise FileChanged(f"{self.path} changed during its upload")


class MultipartUploader:
    """Uploads one large file at a time per call; shared by a folder's pool threads."""

    def __init__(self, folder: FolderConfig, store: ObjectStore, uploads: UploadLog, throttle: Throttle | None,
                 stopping: threading.Event, progress: Callable[[int], None]):
        self.folder = folder
        self.store = store
        self.uploads = uploads
        self.throttle = throttle
        self.stopping = stopping
        self.progress = progress
        self._log = structlog.get_logger("syncd.multipart").bind(folder=folder.name)
        self.owner = ""  # the folder's owner id (syncd.owner), set once the prefix is claimed

    # ------------------------------------------------------------------ one file

    def upload(self, src: Source, touch: Callable[[], None]) -> Entry:
        """Upload (or resume) ``src``; returns its manifest entry. Bytes go to ``progress``.

        Raises FileChanged (upload aborted), Interrupted, StoreError or OSError.
        """
        st = src.before
        try:
            part_size = part_size_for(st.st_size, self.folder.part_size)
        except ValueError as exc:
            raise StoreError(f"{src.path}: {exc}; such a file cannot be stored as one object",
                             scope=KEY, code="EntityTooLarge", key=src.key) from None
        rec = self.uploads.get(src.path)
        head = self.store.head(src.key)
        if head is not None and head.meta is not None and head.meta.get(META_SHA256) \
                and head.meta.get(META_MTIME) == str(st.st_mtime_ns) and head.size == st.st_size:
            # This version is already published and hashed: a crash came before the journal
            # recorded it. Nothing to send.
            if rec is not None:
                self.abort(src.path, src.key, rec.upload_id)
            return Entry(src.path, st.st_size, st.st_mtime_ns, st.st_ino, head.meta[META_SHA256], head.etag)
        if rec is not None:
            reason = None
            if not rec.same_file(st.st_size, st.st_mtime_ns, st.st_ino):
                reason = "file changed since the upload began"
            elif rec.checksum != self.folder.checksum:
                # S3 wants every part in the algorithm named when the upload was created.
                reason = "checksum setting changed since the upload began"
            if reason is not None:
                self._log.info("multipart.restart", path=src.path, reason=reason)
                self.abort(src.path, src.key, rec.upload_id)
                rec = None
        done: dict[int, Part] = {}
        if rec is not None:
            resumed = self._resume(src, rec, head.etag if head is not None else None)
            if isinstance(resumed, dict):
                done = resumed
                part_size = rec.part_size
            elif resumed == "published":
                digest = self._read_parts(src, part_count(st.st_size, rec.part_size), rec.part_size, {}, None)
                return self._finish(src, digest)
            else:
                rec = None
        if rec is None:
            upload_id = self.store.create_upload(src.key, object_meta(st.st_mtime_ns, self.owner),
                                                 headers=object_headers(self.folder, src.path))
            self.uploads.begin(src.path, upload_id, st.st_size, st.st_mtime_ns, st.st_ino, part_size,
                               self.folder.checksum)
            self._log.debug("multipart.created", path=src.path, upload_id=upload_id, part_size=part_size,
                            parts=part_count(st.st_size, part_size))
        else:
            upload_id = rec.upload_id
            self._log.info("multipart.resumed", path=src.path, upload_id=upload_id, parts_done=len(done),
                           parts=part_count(st.st_size, part_size))
        try:
            entry = self._send(src, upload_id, part_size, done, touch)
        except FileChanged:
            self.abort(src.path, src.key, upload_id)
            raise
        except StoreError as exc:
            if isinstance(exc, UploadGone):
                # Aborted behind our back (a sweep, a lifecycle rule): start over next time.
                self.uploads.remove(src.path, upload_id)
                raise StoreError(str(exc), scope=TRANSIENT, code=exc.code, key=src.key) from exc
            if not exc.transient and exc.scope != FOLDER:
                self.abort(src.path, src.key, upload_id)  # it cannot succeed: leave nothing behind
            raise
        # After the upload, not before its first part: one request less on the way to the
        # first byte. Until then a stray costs only storage.
        self._abort_strays(src.path, src.key, upload_id)
        return entry

    def _resume(self, src: Source, rec: UploadRecord, head_etag: str | None) -> dict[int, Part] | str | None:
        """Which journaled parts the server still holds; "published" if the upload was
        completed but not yet given its hash; None to start over."""
        if rec.completed is not None and head_etag == rec.completed:
            return "published"
        listed = self.store.list_parts(src.key, rec.upload_id)
        if listed is None:
            expected = part_count(rec.size, rec.part_size)
            if len(rec.parts) == expected and head_etag == multipart_etag(rec.parts):
                return "published"  # completed, but the crash came before it was journaled
            self.uploads.remove(src.path, rec.upload_id)
            return None
        on_server = {p.number: p.etag for p in listed}
        return {p.number: p for p in rec.parts if on_server.get(p.number) == p.etag}

    def _send(self, src: Source, upload_id: str, part_size: int, done: dict[int, Part],
              touch: Callable[[], None]) -> Entry:
        st = src.before
        n_parts = part_count(st.st_size, part_size)
        parts = dict(done)
        lock = threading.Lock()

        def send(number: int, data: bytearray) -> None:
            part = self._send_part(src.key, upload_id, number, data)
            self.uploads.add_part(upload_id, part)  # durable before it counts as done
            with lock:
                parts[number] = part
            self.progress(len(data))
            touch()

        digest = self._read_parts(src, n_parts, part_size, done, send)
        if len(parts) != n_parts:
            raise StoreError(f"{src.key}: only {len(parts)} of {n_parts} parts were sent", scope=TRANSIENT,
                             key=src.key)
        ordered = [parts[n] for n in range(1, n_parts + 1)]
        try:
            # The same metadata and headers as create_upload (Azure sets them only here).
            etag = self.store.complete_upload(src.key, upload_id, ordered, object_meta(st.st_mtime_ns, self.owner),
                                              object_headers(self.folder, src.path))
        except StoreError as exc:
            # A Complete whose response was lost is retried by the client and then finds no
            # upload: the object is there if its ETag is the one those parts make.
            head = self.store.head(src.key) if isinstance(exc, UploadGone) else None
            if head is None or head.etag != multipart_etag(ordered):
                raise
            etag = head.etag
        self.uploads.completed(src.path, etag)
        return self._finish(src, digest)

    def _read_parts(self, src: Source, n_parts: int, part_size: int, skip: dict[int, Part],
                    send: Callable[[int, bytearray], None] | None) -> bytes:
        """Read the file once, in part order, hashing all of it; hand unsent parts to ``send``.

        Parts are read into ``part_concurrency + 1`` reused buffers (one being read, the rest
        in flight): memory is fixed per upload whatever the file size, and the allocator never
        sees part-sized churn. Returns the whole file's SHA-256.
        """
        whole = hashlib.sha256()
        size = src.before.st_size
        src.f.seek(0)
        width = max(1, self.folder.part_concurrency)
        pool_size = width + 1
        free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        made = 0
        futures: list[Future[None]] = []

        def run(number: int, data: bytearray, buf: bytearray) -> None:
            try:
                assert send is not None
                send(number, data)
            finally:
                free.put(buf)

        def take_buffer() -> bytearray | None:
            """A free buffer (a new one while fewer than ``pool_size`` exist); None once a part failed."""
            nonlocal made
            while True:
                try:
                    return free.get(timeout=0.25) if made >= pool_size else free.get_nowait()
                except queue.Empty:
                    if made < pool_size:
                        made += 1
                        return bytearray(part_size)
                    if any(f.done() and f.exception() is not None for f in futures):
                        return None

        error: BaseException | None = None
        with ThreadPoolExecutor(width, thread_name_prefix=f"part-{self.folder.name}") as pool:
            try:
                for number in range(1, n_parts + 1):
                    buf = take_buffer()
                    if buf is None:
                        break  # a part failed for good: stop reading, report it below
                    length = min(part_size, size - (number - 1) * part_size)
                    view = memoryview(buf)[:length]
                    if _read_into(src.f, view) != length:
                        raise FileChanged(f"{src.path} shrank during its upload")
                    whole.update(view)
                    src.check()
                    if number in skip or send is None:
                        free.put(buf)
                        continue
                    if self.stopping.is_set():
                        raise Interrupted()
                    # S3 takes a bytes-like body of exactly the part's length: only the short
                    # last part needs a copy.
                    data = buf if length == part_size else bytearray(view)
                    view.release()
                    futures.append(pool.submit(run, number, data, buf))
                else:
                    if src.f.read(1):
                        raise FileChanged(f"{src.path} grew during its upload")
                    src.check()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the parts settle
                error = exc
            # Parts in flight finish (and are journaled) even when we give up on this run.
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f.exception() for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None or error is not None:
                for f in futures:
                    f.cancel()
        if error is not None:
            raise error
        if failed is not None:
            raise failed
        return whole.digest()

    def _send_part(self, key: str, upload_id: str, number: int, data: bytearray) -> Part:
        payload = Payload(data, self.throttle)
        for attempt in range(PART_ATTEMPTS):
            try:
                return self.store.upload_part(key, upload_id, number, payload)
            except StoreError as exc:
                if not exc.transient or attempt == PART_ATTEMPTS - 1 or self.stopping.is_set():
                    raise
                self._log.debug("multipart.part_retry", key=key, part=number, error=str(exc))
                payload.seek(0)
                self.stopping.wait(PART_RETRY_BASE * 2 ** attempt)
        raise AssertionError("unreachable")

    def _finish(self, src: Source, digest: bytes) -> Entry:
        """Give the complete object its content hash (S3 fixes metadata at creation)."""
        st = src.before
        meta = object_meta(st.st_mtime_ns, self.owner, digest.hex())
        # REPLACE replaces the headers too: they are sent again.
        etag = self.store.set_meta(src.key, meta, st.st_size, headers=object_headers(self.folder, src.path))
        self.uploads.remove(src.path)
        return Entry(src.path, st.st_size, st.st_mtime_ns, st.st_ino, digest.hex(), etag)

    # ------------------------------------------------------------------ cleanup

    def abort(self, path: str, key: str, upload_id: str) -> None:
        """Discard an upload we no longer need; the record goes once S3 has let it go."""
        self.store.abort_upload(key, upload_id)
        self.uploads.remove(path, upload_id)
        self._log.info("multipart.aborted", path=path, upload_id=upload_id)

    def abort_strays(self, path: str, key: str, keep: str | None) -> None:
        """Abort every upload of this very key but ``keep``: they are ours, from a
        CreateMultipartUpload whose response was lost (the client retried it), a crash before
        its upload id was journaled, or a journal lost meanwhile."""
        for up in self.store.list_uploads(key):
            if up.key == key and up.upload_id != keep:
                self.store.abort_upload(key, up.upload_id)
                self._log.info("multipart.stray_aborted", path=path, upload_id=up.upload_id)

    def _abort_strays(self, path: str, key: str, keep: str) -> None:
        """Best effort, after the file is published: a failure here must not fail that
        upload, and the periodic sweep catches what this misses."""
        try:
            self.abort_strays(path, key, keep)
        except StoreError as exc:
            (self._log.debug if exc.transient else self._log.warning)("multipart.stray_check_failed",
                                                                      path=path, error=str(exc))

    def sweep(self, has_pending: Callable[[str], bool]) -> int:
        """Abort uploads nobody will finish: journaled ones whose change is gone, and unknown
        ones under the prefix older than ``stale_upload_age`` (a lost journal, a crash before
        an upload id was recorded, another client). Returns how many were aborted."""
        now = time.time()
        aborted = 0
        for rec in self.uploads.records():
            if not has_pending(rec.path):
                self.abort(rec.path, self.folder.key_for(rec.path), rec.upload_id)
                aborted += 1
        for up in self.store.list_uploads(self.folder.prefix):
            # Asked per upload, not once before listing: one begun meanwhile is ours too.
            ours = self.uploads.upload_id(up.key[len(self.folder.prefix):]) == up.upload_id
            if not ours and now - up.initiated >= self.folder.stale_upload_age:
                self.store.abort_upload(up.key, up.upload_id)
                self._log.info("multipart.stale_aborted", key=up.key, upload_id=up.upload_id,
                               age_s=round(now - up.initiated))
                aborted += 1
        return aborted
