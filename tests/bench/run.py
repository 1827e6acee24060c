"""Benchmark entry point: ``python -m tests.bench.run [--scenarios a,b] [--reps N] [--quick]``.

Starts one SeaweedFS on loopback, runs the selected scenarios for syncd and every working
peer, writes the report (results.md and charts; by default the current report,
docs/benchmarks/full/) and prints the results table. Every
process it starts (weed, syncd, peers, proxies) is stopped on exit, Ctrl-C or SIGTERM.
Exit status: 0 if every run verified, 1 if any failed, 130 on interrupt.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from tests.support.seaweed import start_seaweed

from . import azure as _azure  # noqa: F401  (registers the scenarios)
from . import live as _live  # noqa: F401
from . import restores as _restores  # noqa: F401
from . import scale as _scale  # noqa: F401
from . import scenarios as _scenarios  # noqa: F401
from .core import REGISTRY, REPO, SYNCD, Bench, Options, Sample, on_exit
from .peers import PEERS, Peer, discover, ensure_harness_packages
from .report import console, machine_facts, main_table, write_report

# Every scenario, in the order of the current report (docs/benchmarks/full/).
DEFAULT_SCENARIOS = ("initial", "delay", "burst", "large", "nochange", "rebuild", "takeover", "ingest", "latency",
                     "idle", "folders", "scale")
REPORT_DIR = REPO / "docs" / "benchmarks" / "full"   # the current report, which docs/benchmarks/README.md cites
QUICK_DIR = REPO / "build" / "bench-quick"           # smoke tests never replace it (build/ is ignored by git)
WEED_STOP_GRACE = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.run",
                                description="Benchmark syncd against aws s3 sync, rclone and s5cmd on a local "
                                            "SeaweedFS; write a report (results.md and charts).")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated, from: {', '.join(REGISTRY)} (default: %(default)s)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per tool (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="1 repetition and small datasets: a smoke test")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every dataset size by this (e.g. --quick --scale 0.3 while developing)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers to compare (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=32,
                   help="parallel requests of the equal-concurrency rows: 'syncd (workers C)', aws "
                        "max_concurrent_requests, rclone --transfers/--checkers, s5cmd --numworkers; the "
                        "'syncd' row runs at its defaults, best rows at their own (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"report directory (default: {REPORT_DIR.relative_to(REPO)}; --quick: "
                        f"{QUICK_DIR.relative_to(REPO)})")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where to create the scratch directory (default: $TMPDIR); it needs room for the datasets")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory afterwards")
    p.add_argument("--no-install", action="store_true", help="do not pip-install missing peers")
    args = p.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in args.scenarios if s not in REGISTRY]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(REGISTRY)}")
    args.peers = [s for s in args.peers.split(",") if s]
    if bad := [s for s in args.peers if s not in PEERS]:
        p.error(f"unknown peer(s) {bad}; known: {', '.join(PEERS)}")
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.out is None:
        args.out = QUICK_DIR if args.quick else REPORT_DIR
    if args.reps < 1 or args.concurrency < 1 or args.scale <= 0:
        p.error("--reps and --concurrency must be >= 1, --scale > 0")
    return args


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every cleanup callback, like Ctrl-C


def tool_settings(peers: dict[str, Peer], concurrency: int) -> dict[str, str]:
    """The report's "how each tool was run", one entry per row label."""
    syncd = ("`syncd run` at its defaults (`workers: 32`, `settle: 0.5s`, `settle_closed: 20ms`), log level "
             "warning; timed from launching `syncd run` until `syncd wait` exits 0. That includes both "
             "processes' start-up; `syncd wait` is launched as soon as the control socket exists, so "
             "the 0.6 s it gives in-flight events overlaps the sync. Every ratio is taken against this row.")
    out = {SYNCD: syncd,
           f"syncd (workers {concurrency})": f"as `syncd`, with `workers: {concurrency}` (the peers' concurrency)"}
    for name, peer in peers.items():
        out[name] = peer.settings.format(c=concurrency)
        for best in peer.best():
            level = "its default" if best.level is None else best.level
            out[best.label] = peer.best_settings.format(c=level)
    return out


def run(args: argparse.Namespace) -> int:
    ensure_harness_packages(install=not args.no_install)
    # The checkout is installed in editable mode, and PYTHONDONTWRITEBYTECODE may be set: then
    # every `syncd run` compiled its own modules from source, a cost paid on every launch. A real
    # install has its bytecode compiled, as the peers' Python packages have.
    compileall.compile_dir(REPO / "daemon" / "syncd", quiet=1)
    peers, problems = discover(args.peers, install=not args.no_install)
    for name, problem in problems.items():
        print(f"bench: peer {name} unavailable: {problem}", file=sys.stderr)
    facts = machine_facts(peers, problems)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # Always a new directory of our own, so removing it afterwards never touches anything else.
    workdir = Path(tempfile.mkdtemp(prefix="syncd-bench-", dir=args.workdir))
    options = Options(args.reps, args.quick, args.scale, args.concurrency)
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            server = start_seaweed(workdir / "weed")
            # Its data is thrown away, so there is no point waiting out weed's slow SIGTERM handling.
            on_exit(stack, "seaweedfs", lambda: server.stop(grace=WEED_STOP_GRACE))
            bench = Bench(options, workdir, server, peers, stack)
            samples = bench.samples
            for name in args.scenarios:
                print(f"bench: scenario {name}: {REGISTRY[name].summary}", flush=True)
                try:
                    REGISTRY[name].run(bench)
                except KeyboardInterrupt:
                    # A long run (scale takes hours) cut short with Ctrl-C keeps what it measured:
                    # the report is written, with the interruption as a failed row.
                    bench.add(Sample(name, "scenario", "-", SYNCD, 0, None, False, "interrupted (Ctrl-C or SIGTERM)"))
                    break
                except Exception as exc:  # one broken scenario must not cost the others' results
                    traceback.print_exc()
                    bench.add(Sample(name, "scenario", "-", SYNCD, 0, None, False, f"crashed: {exc!r}"[:300]))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load average (1/5/15 min) at end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["harness wall time"] = f"{time.monotonic() - started:.0f} s"
    path, rows = write_report(samples, facts, tool_settings(peers, args.concurrency), args.out, args.quick)
    print()
    print(console(main_table(rows)))
    print(f"\nbench: report written to {path}")
    return 0 if samples and all(s.ok for s in samples) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
