"""Small pure pieces: durations, sizes, ignore rules, key limits, walk order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from syncd.paths import IgnoreRules, key_problem
from syncd.scan import walk
from syncd.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("2s", 2), ("5m", 300), ("1h", 3600), (1.5, 1.5),
                                                ("0.25s", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-1s", True, "5 parsecs"])
def test_bad_durations_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "n"), [("64MiB", 64 << 20), ("5MB", 5_000_000), (1024, 1024), ("1GiB", 1 << 30)])
def test_sizes(text, n):
    assert parse_size(text) == n


def test_rates():
    assert parse_rate("20MiB/s") == 20 << 20


def test_builtin_junk_patterns_and_config_patterns():
    rules = IgnoreRules(["*.log", "build/", "!important.log"])
    for junk in ["a.swp", "x~", ".#x", "~$doc.docx", ".DS_Store", "sub/.DS_Store", "debug.log", "build/out.o"]:
        assert rules.ignored_with_parents(junk), junk
    for kept in ["a.txt", "important.log", "builder/x", "src/build.py"]:
        assert not rules.ignored_with_parents(kept), kept


def test_key_problems_name_the_limit():
    assert key_problem("ok/key.txt") is None
    assert "1024" in (key_problem("x" * 1025) or "")
    assert "control" in (key_problem("bad\x01name") or "")
    assert "UTF-8" in (key_problem("bad\udcffname") or "")


names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
                min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(names, min_size=1, max_size=3), min_size=1, max_size=25))
def test_walk_yields_paths_in_the_byte_order_sqlite_and_s3_use(tmp_path_factory, paths):
    """The merge join with the manifest relies on this order."""
    root = tmp_path_factory.mktemp("walk")
    created = set()
    for parts in paths:
        target = root.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_text("x")
        except (OSError, ValueError):
            continue
        created = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    walked = [rel for rel, _ in walk(str(root), IgnoreRules([], builtin=False))]
    assert walked == sorted(created, key=lambda s: s.encode("utf-8"))
    assert set(walked) == created


def test_walk_skips_symlinks_and_special_files(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    os.symlink("f", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "dlink")
    assert [rel for rel, _ in walk(str(tmp_path), IgnoreRules([]))] == ["f"]


segments = st.sampled_from(["a", "b", "build", "x.log", "keep.log", ".DS_Store", "n~", "c.swp", "dir", "日本",
                            "#n#", "a\nb.swp", "x\n"])
pattern_lines = st.sampled_from(["*.log", "!keep.log", "build/", "/a", "a/**/b", "dir/*", "[ab]", "?", "**/x.log",
                                 "!dir/b", "*~", "日本/", "\\#x"])


def test_builtin_rules_ignore_editor_scratch_files_at_any_depth():
    rules = IgnoreRules([])
    for scratch in ("#notes.txt#", "d/#notes.txt#", "d/.notes.txt.swp", ".#notes.txt", "e/~$report.docx",
                    "backup~", ".~lock.sheet.ods#"):
        assert rules.ignored(scratch), scratch
    for kept in ("notes.txt", "d/#notes.txt", "a#b#", "d/report.docx"):
        assert not rules.ignored(kept), kept


@settings(max_examples=200, deadline=None)
@given(st.lists(pattern_lines, max_size=6), st.lists(st.lists(segments, min_size=1, max_size=4), max_size=20))
def test_ignore_fast_path_agrees_with_pathspec(patterns, paths):
    """The union-regex shortcut must never change pathspec's verdict."""
    import pathspec
    from syncd.paths import BUILTIN_IGNORES

    rules = IgnoreRules(patterns)
    spec = pathspec.GitIgnoreSpec.from_lines(list(BUILTIN_IGNORES) + patterns)
    for parts in paths:
        rel = "/".join(parts)
        for is_dir in (False, True):
            assert rules.ignored(rel, is_dir) == spec.match_file(rel + "/" if is_dir else rel), (patterns, rel)
