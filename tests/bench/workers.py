"""Work the harness runs in a fresh interpreter, so timing and RSS are not skewed by the harness:

``python -m tests.bench.workers journal EVENTS BATCH DISTINCT DIR`` — Journal.record throughput;
``python -m tests.bench.workers create ROOT COUNT DIRS`` — create empty files as fast as possible;
``python -m tests.bench.workers tree ROOT COUNT DIRS`` — a large tree of tiny files, mtimes an hour back.

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

MAX_DELAY = 30.0


def journal_events(events: int, distinct: int, seed: int = 7) -> list[tuple[str, None, float]]:
    """``events`` raw events over exactly ``distinct`` paths: new paths interleaved with repeats
    of one of the last 1000 seen (an editor saving again, a log growing), as bursts look."""
    rng = random.Random(seed)
    due = time.time() + 0.5
    paths = [f"d{i % 100:03d}/sub{i % 7}/file-{i:07d}.txt" for i in range(distinct)]
    out: list[tuple[str, None, float]] = []
    seen = 0
    for n in range(events):
        new_left = distinct - seen
        # Chance of a new path = new paths left / events left: all `distinct` appear by the end.
        if seen == 0 or (new_left > 0 and rng.random() < new_left / (events - n)):
            path = paths[seen]
            seen += 1
        else:
            path = paths[rng.randrange(max(0, seen - 1000), seen)]
        out.append((path, None, due))
    return out


def journal_bench(events: int, batch: int, distinct: int, workdir: Path) -> dict[str, Any]:
    """Time Journal.record over ``events`` events in calls of ``batch``, as the scheduler makes them."""
    import psutil
    from syncd.journal import Journal

    todo = journal_events(events, distinct)
    proc = psutil.Process()
    db_path = workdir / "journal.sqlite3"
    rss_before = proc.memory_info().rss
    journal = Journal(db_path, "bench")
    rss_open = proc.memory_info().rss
    started = time.perf_counter()
    for i in range(0, len(todo), batch):
        journal.record(todo[i:i + batch], MAX_DELAY)
    seconds = time.perf_counter() - started
    rss_after = proc.memory_info().rss
    rows = journal.counts()["pending"]
    journal.close()
    disk = sum(p.stat().st_size for p in workdir.glob("journal.sqlite3*"))
    return {"events": len(todo), "seconds": seconds, "rows": rows, "distinct": len({p for p, _, _ in todo}),
            "rss_open": rss_open - rss_before, "rss_delta": rss_after - rss_open, "disk_bytes": disk}


def create_files(root: Path, count: int, dirs: int) -> dict[str, Any]:
    """``count`` empty files round-robin over ``dirs`` existing directories."""
    names = [os.path.join(root, f"d{i % dirs:04d}", f"e{i:07d}") for i in range(count)]
    started_at = time.time()  # wall clock, so the harness can line its observations up with ours
    started = time.perf_counter()
    for name in names:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return {"files": count, "started_at": started_at, "seconds": time.perf_counter() - started}


def make_tree(root: Path, count: int, dirs: int) -> dict[str, Any]:
    """``count`` files of 8–40 bytes (content from the name, so reproducible) round-robin over
    ``dirs`` directories, with mtimes an hour back (an existing tree, nothing settling). Raw
    os.open/os.write/futimens: a million files in well under a minute."""
    old = time.time() - 3600
    started = time.perf_counter()
    dir_names = [os.path.join(root, f"d{d:05d}") for d in range(dirs)]
    for d in dir_names:
        os.makedirs(d, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(count):
        fd = os.open(f"{dir_names[i % dirs]}/f{i:07d}", flags, 0o644)
        try:
            os.write(fd, b"syncd-scale %d\n" % i * (1 + i % 3))
            os.utime(fd, (old, old))
        finally:
            os.close(fd)
    for d in dir_names:
        os.utime(d, (old, old))
    return {"files": count, "dirs": dirs, "seconds": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    kind, *args = argv
    if kind == "journal":
        events, batch, distinct, workdir = args
        result = journal_bench(int(events), int(batch), int(distinct), Path(workdir))
    elif kind == "create":
        root, count, dirs = args
        result = create_files(Path(root), int(count), int(dirs))
    elif kind == "tree":
        root, count, dirs = args
        result = make_tree(Path(root), int(count), int(dirs))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
