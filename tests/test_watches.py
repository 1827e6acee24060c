"""The recursive watches of a folder root: listed by find, every directory watched."""

from __future__ import annotations

import os
import threading

import pytest
from syncd import watches
from syncd.paths import IgnoreRules
from syncd.watcher import Watcher
from syncd.watches import directories

from tests.support.daemon import await_condition


class Seen:
    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.lock = threading.Lock()

    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        with self.lock:
            self.paths.add(path)

    def finished(self, path: str, move_from: str | None = None) -> None:
        self.submit(path, move_from)

    def attributes_changed(self, path: str) -> None:
        self.submit(path)


def test_the_listing_holds_every_directory_parents_first_and_no_symlink(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "a" / "file").write_text("x")
    os.symlink(tmp_path / "d", tmp_path / "a" / "link")
    found = directories(os.fsencode(tmp_path))
    assert found is not None
    rel = [os.fsdecode(p)[len(str(tmp_path)) + 1:] for p in found]
    assert sorted(rel) == ["a", "a/b", "a/b/c", "d"]
    assert rel.index("a") < rel.index("a/b") < rel.index("a/b/c")


def test_counting_subdirectories_by_st_nlink_lists_the_directories_find_lists(tmp_path):
    for rel in ("a/b/c/d", "a/e", "f", "g/h", "g/i/j", "k"):
        (tmp_path / rel).mkdir(parents=True)
    for i in range(50):
        (tmp_path / "a" / "e" / f"file{i}").write_text("x")
    (tmp_path / "g" / "file").write_text("x")
    os.symlink(tmp_path / "a", tmp_path / "g" / "link-to-dir")
    os.symlink(tmp_path / "g" / "file", tmp_path / "k" / "link-to-file")
    root = os.fsencode(tmp_path)
    if watches.fs_type(root) not in watches.NLINK_COUNTS_SUBDIRS:
        pytest.skip("the tmp dir is not on ext4, xfs or tmpfs")
    by_nlink, by_find = watches._by_nlink(root), watches._by_find(root)
    assert by_find is not None
    assert sorted(by_nlink) == sorted(by_find)
    assert len(by_nlink) == 11


def test_a_filesystem_that_does_not_count_subdirectories_is_listed_by_find(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.setattr(watches, "NLINK_COUNTS_SUBDIRS", frozenset())
    monkeypatch.setattr(watches, "_by_nlink", None)  # must not be used
    found = directories(os.fsencode(tmp_path))
    assert found is not None and sorted(found) == [os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "a" / "b")]


def test_a_write_in_a_deep_directory_that_existed_before_the_watch_is_seen(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    seen = Seen()
    watcher = Watcher()
    watcher.start()
    try:
        watcher.add("w", str(tmp_path), IgnoreRules(()), seen)
        (deep / "new.txt").write_text("hello")
        await_condition(lambda: "a/b/c/new.txt" in seen.paths, 10, "the event from a/b/c")
    finally:
        watcher.stop()


def test_a_directory_made_while_watching_is_watched_too(tmp_path):
    seen = Seen()
    watcher = Watcher()
    watcher.start()
    try:
        watcher.add("w", str(tmp_path), IgnoreRules(()), seen)
        (tmp_path / "x" / "y").mkdir(parents=True)
        # The watch on x/y is added when its creation event is handled: write until one arrives.
        def written() -> bool:
            (tmp_path / "x" / "y" / "f.txt").write_text("1")
            return "x/y/f.txt" in seen.paths
        await_condition(written, 10, "the event from the new directory x/y", interval=0.1)
    finally:
        watcher.stop()
