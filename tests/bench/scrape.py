"""What one /metrics scrape and one /healthz cost at N files, in process (no server, no S3).

    PYTHONPATH=daemon:. python -m tests.bench.scrape [--files 100000] [--pending 0] [--runs 50]

Builds a folder's journal with ``--files`` manifest rows (and ``--pending`` open changes),
then times the collector plus the text encoding, and /healthz's evaluation, over ``--runs``
rounds. The first scrape also counts the manifest (cached for MANIFEST_RECOUNT seconds):
it is reported apart.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from syncd import statedir
from syncd.bandwidth import ByteBudget
from syncd.config import FolderConfig
from syncd.folder import FolderRuntime
from syncd.metrics import Collector, health_report


def build(home: Path, files: int, pending: int) -> FolderRuntime:
    tree = home / "tree"
    tree.mkdir()
    statedir.prepare(home / "state")
    folder = FolderConfig(name="main", source=home / "main.yaml", path=tree, bucket="bench")
    runtime = FolderRuntime(folder, home / "state", ByteBudget(1 << 30))
    db = sqlite3.connect(runtime.journal.path, isolation_level=None)
    now = time.time()
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT INTO manifest VALUES (?,?,?,?,?,?)",
                       ((f"d{i // 1000:03d}/f{i:06d}", i, i, i, "0" * 64, "e" * 32) for i in range(files)))
        db.executemany("INSERT INTO pending(path, move_from, first_seen, due) VALUES (?,?,?,?)",
                       ((f"p/{i:06d}", None, now - i % 60, now + 1) for i in range(pending)))
        db.execute("COMMIT")
    db.close()
    return runtime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--pending", type=int, default=0)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runtime = build(Path(tmp), args.files, args.pending)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(lambda: [runtime], lambda: 0))
        t = time.perf_counter()
        body = generate_latest(registry)
        first = time.perf_counter() - t
        scrapes, healths = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            generate_latest(registry)
            scrapes.append(time.perf_counter() - t)
            t = time.perf_counter()
            health_report([runtime], True)
            healths.append(time.perf_counter() - t)
        t = time.perf_counter()
        runtime.journal.manifest_count()
        count = time.perf_counter() - t
        runtime.journal.close()
    print(f"files={args.files} pending={args.pending} body={len(body)} bytes")
    print(f"first scrape (counts the manifest): {first * 1e3:.2f} ms; the COUNT alone: {count * 1e3:.2f} ms")
    print(f"scrape: median {statistics.median(scrapes) * 1e3:.2f} ms, max {max(scrapes) * 1e3:.2f} ms")
    print(f"/healthz: median {statistics.median(healths) * 1e3:.3f} ms, max {max(healths) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
