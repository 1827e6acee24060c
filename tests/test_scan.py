"""The startup scan's two ways of comparing the tree with the manifest: GNU find's listing
in blocks (the fast path) must find exactly what the Python walk finds."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from syncd import scan as scan_module
from syncd import tree
from syncd.changes import Entry
from syncd.journal import Journal
from syncd.paths import IgnoreRules
from syncd.scan import SCAN_RULES, LocalScan, ScanReport

pytestmark = pytest.mark.skipif(not tree.available(), reason="GNU find and sort are not installed")

IGNORE = ("*.tmp", "build/", "/top-only.txt", "!keep.tmp", "!*.o")  # a glob negation: find prunes nothing
IGNORE_PRUNED = ("*.tmp", "build/", "/top-only.txt", "d3/", "s")  # find skips build/, d3/, s/


class Recorder:
    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.moves: dict[str, str] = {}

    def submit(self, path: str, move_from: str | None = None, settle: bool = True, is_dir: bool = False) -> None:
        self.paths.add(path)
        if move_from is not None:
            self.moves[path] = move_from


def scan(root: Path, journal: Journal, ignore: IgnoreRules, fast: bool) -> tuple[Recorder, ScanReport]:
    journal.set_meta(SCAN_RULES, ignore.fingerprint if fast else "other rules")
    sink = Recorder()
    report = LocalScan("t", str(root), ignore, journal, sink).run(threading.Event())
    assert (report.rules == "") == fast, "the scan did not take the path the test asked for"
    return sink, report


def manifest_of(root: Path, journal: Journal, ignore: IgnoreRules | None = None) -> None:
    """Record every regular file under ``root`` as synced, as the uploads would have (which
    skip ignored files: the fast listing relies on that)."""
    entries = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                rel = p.relative_to(root).as_posix()
                try:
                    rel.encode()
                except UnicodeEncodeError:
                    continue
                if ignore is not None and ignore.ignored_with_parents(rel):
                    continue
                entries.append(Entry(rel, st.st_size, st.st_mtime_ns, st.st_ino, None, None))
    journal.adopt(entries)


def fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, script: str) -> None:
    """Put a shell script called ``name`` first on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / name).write_text(f"#!/bin/sh\n{script}\n")
    (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")


def synced_tree(tmp_path: Path, files: int) -> tuple[Path, Journal]:
    """A tree of ``files`` small files, all recorded in a fresh journal's manifest."""
    root = tmp_path / "root"
    for i in range(files):
        write(root, f"f{i}")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    manifest_of(root, journal)
    return root, journal


def write(root: Path, rel: str | bytes, data: bytes = b"x") -> None:
    path = os.path.join(os.fsencode(root), rel if isinstance(rel, bytes) else rel.encode())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def tricky_tree(root: Path, rng: random.Random) -> None:
    """Names whose byte order is easy to get wrong, plus what a walk must skip."""
    names = ["a", "a b", "a.b", "a-b", "a/b", "a/b/c", "a0", "b/x", "b.txt", "ü/é.txt", "line\nbreak",
             "ctl\x01name", "z" * 200, "keep.tmp", "x.tmp", "build/out.o", "src/build/deep/o.o",
             "top-only.txt", "sub/top-only.txt", ".DS_Store", "#autosave#"]
    for i in range(300):
        names.append(f"d{rng.randrange(12)}/{'s/' if rng.random() < 0.3 else ''}f{i}")
    for name in names:
        try:
            write(root, name, os.urandom(rng.randrange(0, 50)))
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            pass  # "a" as a file and as a directory cannot both exist; one of them wins
    write(root, b"latin1-\xe9.txt")
    os.symlink("b.txt", root / "link-to-file")
    os.symlink("d1", root / "link-to-dir")
    os.mkfifo(root / "fifo")
    (root / "empty-dir").mkdir()


def mutate(root: Path, rng: random.Random) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    for p in rng.sample(files, 40):
        action = rng.choice(["append", "touch", "ns", "delete", "rename"])
        if not p.exists():
            continue
        st = p.lstat()
        if action == "append":
            with p.open("ab") as f:
                f.write(b"more")
        elif action == "touch":
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
        elif action == "ns":  # one nanosecond: only an exact comparison sees it
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        elif action == "delete":
            p.unlink()
        else:
            p.rename(p.with_name(p.name + ".renamed"))
    for i in range(20):
        write(root, f"new/{i}.dat")
    write(root, "build/new.o")  # ignored


LISTINGS = {"one find": (1, True), "three finds": (3, True), "find without -files0-from": (3, False)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_rows", [7, 1024])
@pytest.mark.parametrize("patterns", [IGNORE, IGNORE_PRUNED], ids=["negation", "pruned"])
@pytest.mark.parametrize("listing", list(LISTINGS))
def test_the_fast_listing_submits_exactly_what_the_python_walk_submits(tmp_path, monkeypatch, seed, block_rows,
                                                                       patterns, listing):
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", block_rows)  # 7: many equal and unequal blocks
    parts, files0 = LISTINGS[listing]
    monkeypatch.setattr(tree, "PARTS", parts)  # the root's entries listed by this many finds at once
    if not files0:
        monkeypatch.setattr(tree, "files0_from", lambda: False)  # findutils < 4.9: one find of the root
    rng = random.Random(seed)
    root = tmp_path / "root"
    root.mkdir()
    tricky_tree(root, rng)
    journal = Journal(tmp_path / "j.sqlite3", "test")
    ignore = IgnoreRules(patterns)
    manifest_of(root, journal, ignore)
    mutate(root, rng)
    walked, walk_report = scan(root, journal, ignore, fast=False)
    listed, list_report = scan(root, journal, ignore, fast=True)
    assert len(walked.paths) > 40
    assert listed.paths == walked.paths
    assert listed.moves == walked.moves
    assert (list_report.files, list_report.changed, list_report.missing) == (
        walk_report.files, walk_report.changed, walk_report.missing)


def test_an_unchanged_tree_submits_nothing_and_counts_every_file(tmp_path):
    root = tmp_path / "root"
    for i in range(5000):
        write(root, f"d{i % 50}/f{i}", b"abc")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    manifest_of(root, journal)
    sink, report = scan(root, journal, IgnoreRules(()), fast=True)
    assert sink.paths == set()
    assert (report.files, report.changed, report.missing) == (5000, 0, 0)


def test_a_one_nanosecond_mtime_change_is_found_by_the_fast_listing(tmp_path):
    root = tmp_path / "root"
    for i in range(3000):
        write(root, f"f{i:05d}")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    manifest_of(root, journal)
    st = (root / "f01500").lstat()
    os.utime(root / "f01500", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    sink, _ = scan(root, journal, IgnoreRules(()), fast=True)
    assert sink.paths == {"f01500"}


@pytest.mark.parametrize("mtime_ns", [0, 5, 999_999_999, 1_000_000_000, 1_795_937_958_741_396_665, 10**18 + 123,
                                      -1, -500_000_000, -1_000_000_000, -2_500_000_000])
def test_find_prints_a_file_exactly_as_the_journal_prints_its_manifest_row(tmp_path, mtime_ns):
    root = tmp_path / "root"
    write(root, "dir/name with space", b"12345")
    os.utime(root / "dir/name with space", ns=(mtime_ns, mtime_ns))
    journal = Journal(tmp_path / "j.sqlite3", "test")
    manifest_of(root, journal)
    listed = subprocess.run(["find", "dir", "-type", "f", "-printf", tree.FIND_FORMAT], cwd=root,
                            capture_output=True, check=True).stdout
    [(blob, last, count)] = list(journal.manifest_blocks(10))
    assert (blob, last, count) == (listed, b"dir/name with space", 1)


def test_changed_ignore_rules_make_the_next_scan_a_python_walk(tmp_path):
    root = tmp_path / "root"
    write(root, "a.log")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    before, after = IgnoreRules(()), IgnoreRules(("*.log",))
    report = LocalScan("t", str(root), after, journal, Recorder()).run(threading.Event())
    assert report.rules == after.fingerprint  # a walk: what the folder records once journaled
    journal.set_meta(SCAN_RULES, before.fingerprint)
    sink = Recorder()
    report = LocalScan("t", str(root), after, journal, sink).run(threading.Event())
    assert report.rules == after.fingerprint, "rules differ from the last walk's: the scan must walk"
    assert before.fingerprint != after.fingerprint


def test_a_failing_sort_falls_back_to_the_python_walk(tmp_path, monkeypatch):
    root, journal = synced_tree(tmp_path, 50)
    write(root, "f7", b"changed")
    fake_tool(tmp_path, monkeypatch, "sort", "cat >/dev/null\necho 'sort: cannot create temporary file' >&2\nexit 2")
    journal.set_meta(SCAN_RULES, IgnoreRules(()).fingerprint)
    sink = Recorder()
    report = LocalScan("t", str(root), IgnoreRules(()), journal, sink).run(threading.Event())
    assert report.rules != "", "the scan should have fallen back to the walk"
    assert "f7" in sink.paths
    assert report.files == 50


def test_only_plain_directory_names_are_pruned_and_not_those_a_negation_may_bring_back():
    rules = IgnoreRules(("build/", "node_modules", "*.log", "/anchored", "a/b", "\\#x", "we?rd", "trailing "),
                        builtin=False)
    assert rules.pruned_dirs == ("build", "node_modules")
    assert IgnoreRules(("build/", "!keep.txt"), builtin=False).pruned_dirs == ()
    assert IgnoreRules(()).pruned_dirs == (), "built-in junk-file names are not worth a find test per entry"


def test_a_root_named_like_a_pruned_directory_is_still_scanned(tmp_path):
    root = tmp_path / "build"
    write(root, "inside.txt")
    write(root, "build/skipped.txt")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    ignore = IgnoreRules(("build/",))
    assert ignore.pruned_dirs
    sink, report = scan(root, journal, ignore, fast=True)
    assert sink.paths == {"inside.txt"}


def test_a_negation_below_an_ignored_name_keeps_find_from_pruning_it(tmp_path):
    """pathspec lets '!a' match everything below a/, so the walk enters a/X/ although 'X' is
    ignored elsewhere: find must not prune X."""
    root = tmp_path / "root"
    write(root, "plain.txt")
    journal = Journal(tmp_path / "j.sqlite3", "test")
    ignore = IgnoreRules(("X", "!a"))
    manifest_of(root, journal, ignore)
    write(root, "a/X/new.txt")
    write(root, "b/X/ignored.txt")
    walked, _ = scan(root, journal, ignore, fast=False)
    listed, _ = scan(root, journal, ignore, fast=True)
    assert listed.paths == walked.paths == {"a/X/new.txt"}


def test_a_changed_mtime_before_1970_is_found_by_the_fast_listing(tmp_path):
    root = tmp_path / "root"
    write(root, "old", b"same size")
    os.utime(root / "old", ns=(0, -2_500_000_000))
    journal = Journal(tmp_path / "j.sqlite3", "test")
    manifest_of(root, journal)
    unchanged, _ = scan(root, journal, IgnoreRules(()), fast=True)
    os.utime(root / "old", ns=(0, -50_000_000))
    changed, _ = scan(root, journal, IgnoreRules(()), fast=True)
    assert (unchanged.paths, changed.paths) == (set(), {"old"})


def test_stop_interrupts_a_listing_still_being_made_and_submits_nothing(tmp_path, monkeypatch):
    root, journal = synced_tree(tmp_path, 20)
    fake_tool(tmp_path, monkeypatch, "find", "exec sleep 30")  # a tree that takes long to list
    journal.set_meta(SCAN_RULES, IgnoreRules(()).fingerprint)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    sink = Recorder()
    started = time.monotonic()
    LocalScan("t", str(root), IgnoreRules(()), journal, sink).run(stop)
    assert time.monotonic() - started < 3, "the scan should notice the stop while find runs"
    assert sink.paths == set(), "nothing was listed, so nothing may be reported missing"
