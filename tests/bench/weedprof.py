"""Where SeaweedFS spends its CPU while one tool uploads one large file.

On this 2-core machine the large-file scenario is bound by the server, which shares the cores
with the client. Whether a different client could be faster comes down to whether the server
does less work for it, so this profiles the server, once per tool, on the same file:

    .venv/bin/python -m tests.bench.weedprof --tool syncd --tool s5cmd [--size-mib 1024]

Each tool gets its own ``weed server -cpuprofile=FILE`` (Go writes the profile when the server
exits). The profile is read here without a Go toolchain: pprof's format is a gzipped protobuf
of samples, each a list of location ids and values; a location lists the functions inlined at
one address. Printed per tool: the server's CPU seconds, the top functions by own time (flat)
and SeaweedFS's own functions by time including callees (cumulative). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.seaweed import start_seaweed

from .core import PREFIX, SYNCD, Dataset, PeerRunner, Runner, SyncdRunner, verify_bucket
from .peers import PEERS, Target, discover
from .scenarios import MiB, make_large_file

SEAWEED_PACKAGE = "github.com/seaweedfs/seaweedfs/weed/"
Profile = tuple[float, collections.Counter[str], collections.Counter[str]]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message; varints as int, the rest as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by pprof")
        yield key >> 3, value


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field: packed (bytes) or one varint."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        n, i = _varint(value, i)
        out.append(n)
    return out


def read_profile(path: Path) -> Profile:
    """(CPU seconds, flat and cumulative nanoseconds per function) of a Go CPU profile."""
    strings: list[str] = []
    samples: list[tuple[list[int], int]] = []
    locations: dict[int, list[int]] = {}
    functions: dict[int, int] = {}
    # profile.proto: 2 sample {1 location_id, 2 value}, 4 location {1 id, 4 line {1 function_id}},
    # 5 function {1 id, 2 name}, 6 string_table. The last sample value is CPU nanoseconds.
    for number, value in _fields(gzip.decompress(path.read_bytes())):
        if number == 6 and isinstance(value, bytes):
            strings.append(value.decode(errors="replace"))
        elif number == 2 and isinstance(value, bytes):
            ids: list[int] = []
            values: list[int] = []
            for n, v in _fields(value):
                if n == 1:
                    ids += _ints(v)
                elif n == 2:
                    values += _ints(v)
            samples.append((ids, values[-1]))
        elif number == 4 and isinstance(value, bytes):
            lid, funcs = 0, []
            for n, v in _fields(value):
                if n == 1 and isinstance(v, int):
                    lid = v
                elif n == 4 and isinstance(v, bytes):
                    funcs += [f for m, f in _fields(v) if m == 1 and isinstance(f, int)]
            locations[lid] = funcs
        elif number == 5 and isinstance(value, bytes):
            fields = dict(_fields(value))
            functions[int(fields.get(1, 0))] = int(fields.get(2, 0))
    flat: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for ids, nanos in samples:
        total += nanos
        names = [strings[functions[f]] for loc in ids for f in locations.get(loc, [])]
        if names:
            flat[names[0]] += nanos
        for name in set(names):
            cumulative[name] += nanos
    return total / 1e9, flat, cumulative


def profile_upload(tool: str, data: Dataset, work: Path, timeout: float) -> Path:
    """Upload ``data`` with ``tool`` to a fresh SeaweedFS that profiles itself; the profile's path."""
    out = work / f"weed-{tool}.pprof"
    server = start_seaweed(work / f"weed-{tool}", extra_args=[f"-cpuprofile={out}"])
    try:
        server.client().create_bucket(Bucket="bench")
        scratch = work / f"run-{tool}"
        scratch.mkdir()
        target = Target(server.endpoint, "bench", PREFIX, server.access_key, server.secret_key, 32, scratch)
        runner: Runner
        if tool == SYNCD:
            runner = SyncdRunner(scratch / "home", data.root, target, server)
        else:
            peers, problems = discover([tool], install=False)
            if tool not in peers:
                raise SystemExit(f"{tool}: {problems[tool]}")
            runner = PeerRunner(peers[tool], data.root, target)
        result = runner.run(timeout)
        problem = result.error or verify_bucket(server.client(), "bench", PREFIX, data)
        if problem:
            raise SystemExit(f"{tool}: {problem}")
        print(f"{tool}: {result.seconds:.2f} s for {data.total_bytes / MiB:.0f} MiB", flush=True)
    finally:
        server.stop(grace=60)  # SIGTERM: weed writes the profile as it exits
    return out


def report(tool: str, profile: Profile, top: int) -> None:
    seconds, flat, cumulative = profile
    total = seconds * 1e9 or 1
    print(f"\n== SeaweedFS CPU while {tool} uploaded: {seconds:.2f} s")
    # Cumulative: SeaweedFS's own functions only (the HTTP server's frames are in every sample).
    ours = collections.Counter({k: v for k, v in cumulative.items() if k.startswith(SEAWEED_PACKAGE)})
    for title, counter in (("flat", flat), ("cumulative, SeaweedFS functions", ours)):
        print(f"-- {title}")
        for name, nanos in counter.most_common(top):
            print(f"{nanos / total * 100:6.1f}%  {name.removeprefix(SEAWEED_PACKAGE)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", action="append", choices=[SYNCD, *PEERS], help="repeatable (default: syncd, s5cmd)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncd-weedprof-"))
    try:
        (work / "data").mkdir()
        data = make_large_file(work / "data", args.size_mib * MiB)
        for tool in args.tool or [SYNCD, "s5cmd"]:
            os.sync()  # as the harness does before every timed run
            report(tool, read_profile(profile_upload(tool, data, work, timeout=600)), args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
