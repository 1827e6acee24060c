"""The documentation is held to the code: every configuration key config.py accepts is
documented, the README stays a front door, and no link or reference points nowhere.

The keys come from config.py's own tables (every module-level ``_*_KEYS``), so a key added
there without documentation fails here. Fast: no server, no daemon.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from syncd import config, paths

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "configuration.md"
ARCHITECTURE_DOC = DOCS / "architecture.md"
BEHAVIOUR_DOC = DOCS / "behaviour.md"
EXAMPLE = ROOT / "config.example.yaml"
README = ROOT / "README.md"
README_MAX_LINES = 160
TOP_LEVEL_TABLES = ("_GLOBAL_KEYS", "_FOLDER_KEYS", "_REQUIRED_FOLDER_KEYS")


def key_tables() -> dict[str, list[str]]:
    """config.py's tables of accepted keys: module-level ``_NAME_KEYS`` collections of strings."""
    tables: dict[str, list[str]] = {}
    for name, value in vars(config).items():
        if re.fullmatch(r"_[A-Z][A-Z_]*_KEYS", name) and isinstance(value, (dict, tuple, list, set, frozenset)):
            keys = list(value)
            if keys and all(isinstance(k, str) for k in keys):
                tables[name] = keys
    return tables


def accepted_keys() -> list[str]:
    """Every key config.py accepts. A table named for a key holds that section's sub-keys,
    which stand for it, dotted (``log`` is documented as ``log.level`` and ``log.format``)."""
    tables = key_tables()
    top = {k for name in TOP_LEVEL_TABLES for k in tables.get(name, [])}
    out: set[str] = set()
    sections: set[str] = set()
    for name, keys in tables.items():
        section = name[1:-len("_KEYS")].lower()
        if name in TOP_LEVEL_TABLES or section not in top:
            out.update(keys)
        else:
            sections.add(section)
            out.update(f"{section}.{k}" for k in keys)
    return sorted(out - sections)


def documented_keys() -> set[str]:
    """Keys named (in backticks) in the first cell of a table row of docs/configuration.md."""
    names: set[str] = set()
    for line in CONFIG_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def in_example(key: str, text: str) -> bool:
    """``key:`` set or shown commented out in config.example.yaml; ``a.b`` as ``a:`` and ``b:``."""
    def setting(name: str) -> str:
        return rf"^\s*#?\s*{re.escape(name)}:"
    *sections, leaf = key.split(".")
    if not all(re.search(setting(s), text, re.MULTILINE) for s in sections):
        return False
    return bool(re.search(setting(leaf), text, re.MULTILINE)
                or any(re.search(rf"{re.escape(s)}:\s*\{{[^}}]*\b{re.escape(leaf)}:", text) for s in sections))


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^#+\s+(.*)$", without_code_blocks(path.read_text(encoding="utf-8")),
                                            re.MULTILINE)]


def test_the_key_tables_of_config_py_are_found() -> None:
    keys = accepted_keys()
    assert {"path", "bucket", "settle", "state_dir", "socket", "defaults", "log.level", "log.format"} <= set(keys)
    assert "log" not in keys and "level" not in keys  # a section is named by its dotted sub-keys


@pytest.mark.parametrize("key", accepted_keys())
def test_every_config_key_is_documented_in_configuration_md(key: str) -> None:
    assert key in documented_keys(), f"config key {key!r} has no row in {CONFIG_DOC.relative_to(ROOT)}"


@pytest.mark.parametrize("key", accepted_keys())
def test_every_config_key_appears_in_config_example_yaml(key: str) -> None:
    assert in_example(key, EXAMPLE.read_text(encoding="utf-8")), f"config key {key!r} is not in config.example.yaml"


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; reference belongs in docs/"


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(doc: Path) -> None:
    text = without_code_blocks(doc.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in {slug(h) for h in headings(path)}:
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_references_to_docs_in_the_code_name_existing_files_and_headings() -> None:
    sources = [*sorted((ROOT / "daemon").rglob("*.py")), ROOT / "pyproject.toml"]
    broken = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for m in re.finditer(r'(docs/[\w./-]*\w\.md)(?:,\s*"([^"]+)")?', text):
            doc = ROOT / m.group(1)
            if not doc.exists():
                broken.append(f"{source.name}: {m.group(1)} does not exist")
            elif m.group(2) and m.group(2) not in headings(doc):
                broken.append(f'{source.name}: {m.group(1)} has no heading "{m.group(2)}"')
    assert not broken, "; ".join(broken)


def test_every_module_is_in_the_module_map() -> None:
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    mapped = {name for line in text.splitlines() if line.startswith("| `")
              for name in re.findall(r"`(\w+)`", line.split("|")[1])}
    modules = {p.stem for p in (ROOT / "daemon" / "syncd").glob("*.py") if p.stem != "__init__"}
    assert modules <= mapped, f"modules missing from the module map in docs/architecture.md: {sorted(modules - mapped)}"


def test_every_builtin_ignore_pattern_is_documented() -> None:
    text = BEHAVIOUR_DOC.read_text(encoding="utf-8")
    missing = [p for p in paths.BUILTIN_IGNORES if f"`{p.replace(chr(92), '')}`" not in text]
    assert not missing, f"built-in ignore patterns missing from docs/behaviour.md: {missing}"
