"""Reading beneath a folder's root: every open and lstat that decides what reaches the bucket
resolves its path from a directory fd of the root and never through a symlink.

A path checked with ``lstat`` and then opened by name can be redirected in between, and
``O_NOFOLLOW`` guards only the last component: a parent directory swapped for a symlink
sends the read wherever the daemon may read (issue 16). Here resolution starts at the root's
fd and refuses a symlink in any component: with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6), otherwise component by component
with ``O_NOFOLLOW | O_DIRECTORY``. Either way the file that is read is the file that was
resolved: callers fstat the fd they read from.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as statmod
import threading
from typing import Any, Protocol

# linux/openat2.h
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# The same number on every architecture but alpha (added after the syscall tables were unified);
# passed as a long, as syscall(2) reads it.
_SYS_OPENAT2 = ctypes.c_long(437)

# O_NONBLOCK: a FIFO swapped in after the planner's lstat must not hang a pool thread in open().
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotBeneath(OSError):
    """The path goes through a symlink (or, with ``one_file_system``, onto another
    filesystem): syncd does not follow it, so for the mirror there is no file there."""


class RootUnavailable(FileNotFoundError):
    """The folder root could not be opened; the guard reports why and holds the folder."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HOWS: dict[int, tuple[Any, Any]] = {}


def _how(flags: int) -> tuple[Any, Any]:
    """openat2's (struct open_how *, size) for ``flags``, built once: the kernel only reads it."""
    if flags not in _HOWS:
        how = _OpenHow(flags, 0, _RESOLVE)
        _HOWS[flags] = (ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))  # byref keeps `how` alive
    return _HOWS[flags]


class _Syscall(Protocol):
    def __call__(self, *args: Any) -> int: ...


def _load_openat2() -> _Syscall | None:
    """libc's syscall(2), if openat2 answers through it (no glibc wrapper exists)."""
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fd = fn(_SYS_OPENAT2, -100, b".", *_how(_DIR_FLAGS))  # AT_FDCWD
    if fd < 0:
        return None  # ENOSYS (kernel < 5.6), EPERM (a seccomp filter), ...
    os.close(fd)
    return fn  # type: ignore[no-any-return]


for _flags in (FILE_FLAGS, _PATH_FLAGS, _DIR_FLAGS, LIST_FLAGS):
    _how(_flags)  # built before any thread shares the table
_openat2: _Syscall | None = _load_openat2()


def openat2_available() -> bool:
    return _openat2 is not None


_RENAME_NOREPLACE = 1  # linux/fs.h


def _load_renameat2() -> Any:
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def rename_noreplace(src: str, dst: str, dir_fd: int) -> bool:
    """Rename ``src`` to ``dst`` in ``dir_fd`` only if nothing is at ``dst``, atomically
    (renameat2 RENAME_NOREPLACE): FileExistsError if something is. False if this kernel, libc
    or filesystem cannot do it (nothing renamed): the caller checks and renames another way."""
    if _renameat2 is None:
        return False
    if _renameat2(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # EINVAL: a filesystem without RENAME_NOREPLACE; EPERM: a seccomp filter
    raise OSError(err, os.strerror(err), dst)


def _parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise NotBeneath(errno.EXDEV, "not a path beneath the folder root", rel)
    return parts


class RootDir:
    """A folder root held open by fd; every path of the folder is resolved from it.

    The fd is reused by every thread (one openat chain per open or lstat). :meth:`reopen`
    (the guard accepting a new root) swaps it; an fd still in use by another thread is closed
    only once the last user is done, so its number is never reused under a resolution.
    """

    def __init__(self, path: str, one_file_system: bool = False, use_openat2: bool = True):
        self.path = path
        self.one_file_system = one_file_system
        # one_file_system compares st_dev per component (as find -xdev and rsync -x do),
        # which the component walk does; openat2's RESOLVE_NO_XDEV would also refuse
        # bind mounts of the same filesystem, which the scans enter.
        self._openat2 = _openat2 if use_openat2 and not one_file_system else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._users = 0
        self._retired: list[int] = []
        self.identity: tuple[int, int] | None = None   # (st_dev, st_ino) of the directory held
        self.open_error: str | None = None
        self.reopen()

    # ------------------------------------------------------------------ the root itself

    def reopen(self) -> bool:
        """Open the root by its path, never through a symlink in its last component."""
        try:
            fd = os.open(self.path, LIST_FLAGS)
        except OSError as exc:
            self.open_error = (f"folder root {self.path} cannot be opened as a directory without following "
                               f"a symlink ({exc.strerror})")
            return False
        st = os.fstat(fd)
        with self._lock:
            if self._fd is not None:
                self._retired.append(self._fd)
            self._fd = fd
            self.identity = (st.st_dev, st.st_ino)
            self.open_error = None
            self._close_retired()
        return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._retired.append(self._fd)
            self._fd = None
            self._close_retired()

    def _close_retired(self) -> None:
        if not self._users:
            for fd in self._retired:
                os.close(fd)
            self._retired.clear()

    def _acquire(self) -> int:
        with self._lock:
            if self._fd is None:
                raise RootUnavailable(errno.ENOENT, self.open_error or f"folder root {self.path} is not open")
            self._users += 1
            return self._fd

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._retired:
                self._close_retired()

    def still_there(self) -> bool:
        """The root's path still leads, without a symlink, to the directory held open."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return statmod.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == self.identity

    @property
    def device(self) -> int | None:
        return None if self.identity is None else self.identity[0]

    # ------------------------------------------------------------------ paths beneath it

    def open_file(self, rel: str) -> int:
        """An fd for reading ``rel``; NotBeneath if any component of it is a symlink."""
        parts = _parts(rel)
        root = self._acquire()
        try:
            if self._openat2 is not None:
                return self._resolve2(root, rel, FILE_FLAGS)
            parent = self._parent(root, parts, rel)
            try:
                try:
                    fd = os.open(parts[-1], FILE_FLAGS, dir_fd=parent)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise NotBeneath(errno.ELOOP, "a symlink: not followed", rel) from None
                    raise
                if self.one_file_system and os.fstat(fd).st_dev != self.device:
                    os.close(fd)
                    raise NotBeneath(errno.EXDEV, "on another filesystem (one_file_system)", rel)
                return fd
            finally:
                if parent != root:
                    os.close(parent)
        finally:
            self._release()

    def lstat(self, rel: str) -> os.stat_result:
        """``lstat`` of ``rel`` (a symlink is reported as one); NotBeneath if a parent
        directory is a symlink."""
        parts = _parts(rel)
        root = self._acquire()
        try:
            if self._openat2 is not None:
                fd = self._resolve2(root, rel, _PATH_FLAGS)
                try:
                    return os.fstat(fd)
                finally:
                    os.close(fd)
            parent = self._parent(root, parts, rel)
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            finally:
                if parent != root:
                    os.close(parent)
            if self.one_file_system and st.st_dev != self.device:
                raise NotBeneath(errno.EXDEV, "on another filesystem (one_file_system)", rel)
            return st
        finally:
            self._release()

    def open_dir(self, rel: str) -> int:
        """An fd of directory ``rel`` ("" for the root) to list with ``os.scandir(fd)``."""
        root = self._acquire()
        try:
            if not rel:
                return os.open(".", LIST_FLAGS, dir_fd=root)
            parts = _parts(rel)
            if self._openat2 is not None:
                return self._resolve2(root, rel, LIST_FLAGS)
            parent = self._parent(root, parts + [""], rel)
            if parent == root:
                return os.open(".", LIST_FLAGS, dir_fd=root)
            try:
                return os.open(".", LIST_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
        finally:
            self._release()

    def make_dirs(self, rel: str, made: set[str] | None = None) -> int:
        """An fd of directory ``rel`` ("" for the root), creating missing components (mode
        0777 & ~umask), for writing into it with ``dir_fd=`` (`syncd restore`). Each component
        is opened from its parent's fd with O_NOFOLLOW: NotBeneath if one is a symlink;
        FileExistsError if a file is in the way. The components this call's mkdir created
        (so they were empty then) are added to ``made``."""
        root = self._acquire()
        try:
            fd = os.open(".", LIST_FLAGS, dir_fd=root)
            parts = _parts(rel) if rel else []
            for i, name in enumerate(parts):
                try:
                    nxt = self._enter(fd, name, rel)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                        if made is not None:
                            made.add("/".join(parts[:i + 1]))
                    except FileExistsError:
                        pass  # made by another thread meanwhile
                    except BaseException:
                        os.close(fd)
                        raise
                    nxt = self._enter(fd, name, rel)
                os.close(fd)
                fd = nxt
            return fd
        finally:
            self._release()

    @staticmethod
    def _enter(fd: int, name: str, rel: str) -> int:
        """Open directory ``name`` in ``fd``; closes ``fd`` on any error but a missing name."""
        try:
            return os.open(name, LIST_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            try:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                    if statmod.S_ISLNK(mode):
                        raise NotBeneath(errno.ELOOP, "a directory in the target is a symlink: not followed",
                                         rel) from None
                    raise FileExistsError(errno.EEXIST, "a file is in the way of a directory", rel) from None
                raise
            finally:
                os.close(fd)

    def _resolve2(self, root: int, rel: str, flags: int) -> int:
        assert self._openat2 is not None
        fd = self._openat2(_SYS_OPENAT2, root, os.fsencode(rel), *_how(flags))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err in (errno.ELOOP, errno.EXDEV):
            raise NotBeneath(err, "goes through a symlink: not followed", rel)
        if err == errno.EAGAIN:  # a concurrent rename or mount during resolution: walk instead
            return self._fallback(root, rel, flags)
        if err == errno.ENOTDIR and flags & os.O_DIRECTORY:
            # O_DIRECTORY | O_NOFOLLOW says ENOTDIR for a symlink too: which is it?
            link = self._openat2(_SYS_OPENAT2, root, os.fsencode(rel), *_how(_PATH_FLAGS))
            if link >= 0:
                try:
                    if statmod.S_ISLNK(os.fstat(link).st_mode):
                        raise NotBeneath(errno.ELOOP, "a symlink: not followed", rel)
                finally:
                    os.close(link)
        raise OSError(err, os.strerror(err), rel)

    def _fallback(self, root: int, rel: str, flags: int) -> int:
        parts = _parts(rel)
        parent = self._parent(root, parts, rel)
        try:
            try:
                return os.open(parts[-1], flags, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and statmod.S_ISLNK(
                        os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode):
                    raise NotBeneath(errno.ELOOP, "a symlink: not followed", rel) from None
                raise
        finally:
            if parent != root:
                os.close(parent)

    def _parent(self, root: int, parts: list[str], rel: str) -> int:
        """The fd of the directory holding ``parts[-1]`` (``root`` itself for a top-level name)."""
        fd = root
        try:
            for name in parts[:-1]:
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    # O_DIRECTORY | O_NOFOLLOW says ENOTDIR for a symlink too: which is it?
                    if statmod.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise NotBeneath(errno.ELOOP, "a parent directory is a symlink: not followed", rel) from None
                    raise
                if fd != root:
                    os.close(fd)
                fd = nxt
                if self.one_file_system and os.fstat(fd).st_dev != self.device:
                    raise NotBeneath(errno.EXDEV, "below a mount point (one_file_system)", rel)
            return fd
        except BaseException:
            if fd != root:
                os.close(fd)
            raise


_registry: dict[tuple[str, str, bool], RootDir] = {}
_registry_lock = threading.Lock()


class _Folder(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> Any: ...
    @property
    def one_file_system(self) -> bool: ...


def folder_root(folder: _Folder) -> RootDir:
    """The folder's RootDir, shared by its planner, transfers, scans and guard (each takes
    it when built; the folder runtime closes it with :func:`release`)."""
    key = (folder.name, str(folder.path), folder.one_file_system)
    with _registry_lock:
        root = _registry.get(key)
        if root is None:
            root = _registry[key] = RootDir(str(folder.path), folder.one_file_system)
        return root


def release(folder: _Folder) -> None:
    with _registry_lock:
        root = _registry.pop((folder.name, str(folder.path), folder.one_file_system), None)
    if root is not None:
        root.close()
