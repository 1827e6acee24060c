"""What a local path means for the mirror: ignored or not, and which object key it becomes."""

from __future__ import annotations

import hashlib
import os
import re

import pathspec

# Editors' and OSes' scratch files. Never worth mirroring, and some (vim's .swp, emacs'
# .#lock symlinks, MS Office's ~$ owner files) exist only while a file is being edited.
BUILTIN_IGNORES: tuple[str, ...] = (
    # A line starting with '#' is a comment in gitignore: emacs' #autosave# needs the escape.
    "*.swp", "*.swo", "*.swx", "*~", ".#*", "\\#*#", "~$*", ".~lock.*#",
    ".DS_Store", "Thumbs.db", "desktop.ini", "._*",
    ".*.sw?", "*.crdownload", ".goutputstream-*", ".syncd-*",
)

# Top-level names under a folder's prefix that hold syncd's own bookkeeping (the owner
# marker, the trash): never mirror content, and never uploaded over from a local file.
RESERVED_NAMES = frozenset({".syncd", ".syncd-trash"})


def reserved(rel: str) -> bool:
    """True if ``rel`` (a folder-relative path or key) lies in syncd's bookkeeping namespace."""
    return rel.partition("/")[0] in RESERVED_NAMES


# S3 keys are at most 1024 bytes of UTF-8. XML 1.0 (the listing format) cannot carry most
# C0 control characters, so such keys can be written but never listed back correctly.
MAX_KEY_BYTES = 1024
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")  # union of patterns: names would clash
_ANY_LEVEL = "^(?:.+/)?"  # how pathspec starts the regex of a pattern that matches at any depth
# A pattern that is only a name (no glob, escape or slash but a trailing one) excludes every
# directory of that name at any depth, with everything in it.
_PLAIN_NAME = re.compile(r"([^/*?\[\]\\!#][^/*?\[\]\\]*?)/?")


class IgnoreRules:
    """gitignore-style rules (config patterns plus built-in junk patterns)."""

    def __init__(self, patterns: tuple[str, ...] | list[str], builtin: bool = True):
        lines = list(BUILTIN_IGNORES if builtin else ()) + list(patterns)
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        # What decides every verdict: equal fingerprints, equal answers (see LocalScan).
        self.fingerprint = hashlib.sha256(
            "\0".join([f"pathspec {pathspec.__version__}", *lines]).encode("utf-8", "surrogateescape")).hexdigest()
        # Only the configured patterns: the built-in ones name junk files, and each name costs
        # find a match per entry.
        self.pruned_dirs = _pruned_dirs(list(patterns), lines)
        # pathspec tries every pattern in turn (most of a large scan's time). Most paths match
        # none, which one search over the union of pathspec's own compiled patterns proves;
        # only a possible match goes to pathspec for the exact (negation, order) verdict.
        # The regexes that start with _ANY_LEVEL share one "at the start or after a '/'"
        # (much faster over a large walk than trying each one's own backtracking prefix).
        # That accepts a little more than the originals ('.' stops at a newline), which is
        # safe: a possible match is only the cue to ask pathspec.
        regexes = [_NAMED_GROUP.sub("(?:", regex.pattern) for p in self._spec.patterns
                   if getattr(p, "include", None) is True and (regex := getattr(p, "regex", None)) is not None]
        any_level = [r[len(_ANY_LEVEL):] for r in regexes if r.startswith(_ANY_LEVEL)]
        alternatives = [r for r in regexes if not r.startswith(_ANY_LEVEL)]
        if any_level:
            alternatives.append("(?:^|/)(?:" + "|".join(any_level) + ")")
        self._maybe = re.compile("|".join(f"(?:{r})" for r in alternatives)) if alternatives else None

    def _match(self, path: str) -> bool:
        if self._maybe is None or self._maybe.search(path) is None:
            return False
        return bool(self._spec.match_file(path))

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """True if ``relpath`` (``/``-separated, relative to the root) is excluded."""
        return self._match(relpath + "/" if is_dir else relpath)

    def ignored_with_parents(self, relpath: str) -> bool:
        """For event paths: a file is also excluded when any parent directory is."""
        parent, _, _ = relpath.rpartition("/")
        return (bool(parent) and self.dir_ignored(parent)) or self._match(relpath)

    def dir_ignored(self, reldir: str) -> bool:
        """The directory or any directory above it is excluded (a walk would not enter it)."""
        parts = reldir.split("/")
        return any(self._match("/".join(parts[:i]) + "/") for i in range(1, len(parts) + 1))


def _pruned_dirs(candidates: list[str], lines: list[str]) -> tuple[str, ...]:
    """Directory names among ``candidates`` that the walk never enters, wherever they are
    (GNU find prunes them; see syncd.tree). With any negation, none: pathspec lets '!a'
    match everything below ``a`` too, so it can bring back a directory of any name there."""
    if any(line.startswith("!") for line in lines):
        return ()
    return tuple(sorted({m.group(1) for line in candidates
                         if line == line.strip() and (m := _PLAIN_NAME.fullmatch(line))}))


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an S3 object key, or None if it can."""
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8; rename the file so its name is UTF-8"
    if len(encoded) > MAX_KEY_BYTES:
        return f"the key is {len(encoded)} bytes; S3 allows at most {MAX_KEY_BYTES}: shorten the path"
    if _XML_UNSAFE.search(key):
        return "the name contains control characters S3 listings cannot represent; rename the file"
    return None


def relpath_of(root: str, abspath: str) -> str | None:
    """``abspath`` relative to ``root`` with ``/`` separators, or None if outside or the root itself."""
    if not abspath.startswith(root) or len(abspath) <= len(root) or abspath[len(root)] != os.sep:
        return None
    rel = abspath[len(root) + 1:]
    return rel.replace(os.sep, "/") if os.sep != "/" else rel
