"""`syncd verify`: is the bucket an exact mirror of the local tree? No daemon needed.

Without ``--full`` only metadata is compared (no object is downloaded): the local walk's
lstat against the listing's size and ETag and the journal's manifest (read-only, if there
is one: it knows which ETag syncd wrote for which size and mtime). A path the manifest does
not know (no journal, or a file synced by another machine) costs one HEAD for the object's
``syncd-mtime-ns``. With ``--full`` every local file is read and hashed and compared with the
object's ``syncd-sha256`` from a HEAD: the bucket's own record, not our bookkeeping, since
verify exists to catch what our bookkeeping missed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from . import statedir
from .beneath import NotBeneath, RootDir, folder_root
from .config import FolderConfig
from .paths import IgnoreRules, reserved
from .scan import walk
from .store import META_MTIME, ObjectStore, RemoteObject, StoreError, expected_digest

READ_CHUNK = 1 << 20


class Mark(StrEnum):
    MISSING = "+"    # on disk, not in the bucket
    EXTRA = "-"      # in the bucket, not on disk
    DIFFERS = "*"    # both, content differs
    ERROR = "!"      # could not be compared


@dataclass(frozen=True, slots=True)
class Difference:
    mark: Mark
    path: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ManifestRow:
    size: int
    mtime_ns: int
    sha256: str | None
    etag: str | None


def read_manifest(state_dir: Path, folder: FolderConfig) -> dict[str, ManifestRow]:
    """The folder's manifest, read-only; empty when there is no journal (it is not required)."""
    path = state_dir / statedir.FOLDERS / f"{folder.name}.sqlite3"
    if not path.is_file():
        return {}
    identity = f"{folder.endpoint_url or 'aws'}|{folder.bucket}|{folder.prefix}"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("identity") != identity:
                return {}  # a journal of another bucket or prefix says nothing about this one
            return {p: ManifestRow(s, m, h, e) for p, s, m, h, e in
                    db.execute("SELECT path, size, mtime_ns, sha256, etag FROM manifest")}
        finally:
            db.close()
    except sqlite3.Error:
        return {}  # unreadable (no permission, corrupt): compare with the bucket alone


def remote_objects(store: ObjectStore, folder: FolderConfig, ignore: IgnoreRules) -> Iterator[tuple[str, RemoteObject]]:
    """(relative path, object) of every mirror object under the prefix: syncd's bookkeeping
    keys, directory markers and ignored paths left out."""
    for page in store.list(folder.prefix):
        for obj in page:
            rel = obj.key[len(folder.prefix):]
            if not rel or rel.endswith("/") or reserved(rel) or ignore.ignored_with_parents(rel):
                continue
            yield rel, obj


def hash_fd(fd: int, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    while piece := os.read(fd, READ_CHUNK):
        digest.update(piece)
    return digest.hexdigest()


class Verifier:
    def __init__(self, folder: FolderConfig, store: ObjectStore, state_dir: Path, full: bool):
        self.folder = folder
        self.store = store
        self.full = full
        self.ignore = IgnoreRules(folder.ignore)
        self.manifest = read_manifest(state_dir, folder)
        self.local_files = 0
        self.objects = 0
        self.heads = 0

    def run(self) -> list[Difference]:
        root = folder_root(self.folder)
        if root.open_error:
            return [Difference(Mark.ERROR, ".", root.open_error)]
        local = {rel: (st.st_size, st.st_mtime_ns) for rel, st in walk(root, self.ignore) if not reserved(rel)}
        remote = dict(remote_objects(self.store, self.folder, self.ignore))
        self.local_files, self.objects = len(local), len(remote)
        out = [Difference(Mark.MISSING, p) for p in local.keys() - remote.keys()]
        out += [Difference(Mark.EXTRA, p) for p in remote.keys() - local.keys()]
        both = sorted(local.keys() & remote.keys())
        with ThreadPoolExecutor(max(1, min(self.folder.workers, 32))) as pool:
            for found in pool.map(lambda p: self._compare(root, p, local[p], remote[p]), both):
                if found is not None:
                    out.append(found)
        return sorted(out, key=lambda d: d.path)

    def _compare(self, root: RootDir, path: str, stat: tuple[int, int], obj: RemoteObject) -> Difference | None:
        size, mtime_ns = stat
        if size != obj.size:
            return Difference(Mark.DIFFERS, path, f"size: {size} on disk, {obj.size} in the bucket")
        row = self.manifest.get(path)
        try:
            if row is not None and row.etag and row.etag.strip('"') != obj.etag:
                return Difference(Mark.DIFFERS, path, "the object was replaced in the bucket behind syncd's back "
                                  f"(ETag {obj.etag}, syncd wrote {row.etag})")
            if row is not None and (row.size, row.mtime_ns) == (size, mtime_ns) and not self.full:
                return None
            head = self.store.head(obj.key)
            self.heads += 1
            if head is None:
                return Difference(Mark.MISSING, path, "deleted from the bucket meanwhile")
            if not self.full:
                remote_mtime = (head.meta or {}).get(META_MTIME)
                if remote_mtime is not None and int(remote_mtime) != mtime_ns:
                    return Difference(Mark.DIFFERS, path, f"mtime: {mtime_ns} ns on disk, {remote_mtime} in the "
                                      "object's syncd-mtime-ns")
                return None
            expected = expected_digest(head)
            if expected is None:
                return Difference(Mark.ERROR, path, "cannot verify: the object has no syncd-sha256 and a multipart "
                                  "ETag (written by another client)")
            fd = root.open_file(path)
            try:
                actual = hash_fd(fd, expected[0])
            finally:
                os.close(fd)
            if actual != expected[1]:
                return Difference(Mark.DIFFERS, path, f"content: {expected[0]} {actual} on disk, "
                                  f"{expected[1]} in the bucket")
            return None
        except NotBeneath as exc:
            return Difference(Mark.ERROR, path, f"not read: {exc.strerror}")
        except OSError as exc:
            return Difference(Mark.ERROR, path, f"cannot read the local file: {exc.strerror}")
        except StoreError as exc:
            return Difference(Mark.ERROR, path, str(exc))


def render(differences: list[Difference]) -> str:
    """One line per difference (DESIGN.md): ``X path``, the reason after two spaces."""
    return "\n".join(f"{d.mark} {d.path}" + (f"  ({d.reason})" if d.reason else "") for d in differences)


def report(folder: FolderConfig, verifier: Verifier, differences: list[Difference]) -> dict[str, object]:
    """The --json document (stable; documented in docs/operations.md)."""
    counts = {m.name.lower(): sum(1 for d in differences if d.mark is m) for m in Mark}
    return {"folder": folder.name, "bucket": folder.bucket, "prefix": folder.prefix, "full": verifier.full,
            "exact": not differences, "local_files": verifier.local_files, "objects": verifier.objects,
            "journal": bool(verifier.manifest), "heads": verifier.heads, "counts": counts,
            "differences": [asdict(d) | {"mark": str(d.mark)} for d in differences]}
