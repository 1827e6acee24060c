"""The commands that need no daemon, `syncd verify` and `syncd restore`: config (or bucket
and prefix alone), store, output and exit code around :mod:`syncd.verify` and :mod:`syncd.restore`."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .choices import DeleteMode
from .config import Config, ConfigError, FolderConfig, load_config
from .exitcodes import ExitCode
from .store import ObjectStore, StoreError, open_store
from .validators import parse_bucket, parse_prefix

if TYPE_CHECKING:
    from .restore import Result as RestoreResult
    from .snapshot import Source

VERSIONING_HINT = ("enable versioning to restore earlier states (only changes made after that can be "
                   "restored): aws s3api put-bucket-versioning --bucket {bucket} "
                   "--versioning-configuration Status=Enabled; or, on any store, set 'delete: trash' "
                   "in the folder's config to keep deleted and overwritten objects for trash_retain")
TRASH_HINT = ("set 'delete: trash' in the folder's config: syncd then keeps every deleted or overwritten "
              "object under .syncd-trash/ for trash_retain (only changes made after that can be restored)")


def main(args: argparse.Namespace) -> int:
    from . import logs

    logs.setup("warning", "auto")  # stderr: stdout carries the report
    if args.command == "verify":
        return _verify(args)
    return _restore(args)


def _config(args: argparse.Namespace, roots_must_exist: bool) -> Config | None:
    try:
        return load_config(args.config, roots_must_exist=roots_must_exist)
    except ConfigError as exc:
        print("syncd: invalid configuration:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return None


def _folder(config: Config, name: str) -> FolderConfig | None:
    for f in config.folders:
        if f.name == name:
            return f
    known = ", ".join(f.name for f in config.folders) or "none"
    print(f"syncd: no folder named {name!r} in {config.folders_dir} (configured: {known})", file=sys.stderr)
    return None


def _verify(args: argparse.Namespace) -> int:
    from .verify import Mark, Verifier, render, report

    config = _config(args, roots_must_exist=True)
    if config is None:
        return ExitCode.CONFIG
    folder = _folder(config, args.folder)
    if folder is None:
        return ExitCode.USAGE
    try:
        store = open_store(folder)
        verifier = Verifier(folder, store, config.state_dir, args.full)
        differences = verifier.run()
    except StoreError as exc:
        _failed(args, folder, f"verify {folder.name}: {exc}")
        return ExitCode.ERRORS
    if args.json:
        print(json.dumps(report(folder, verifier, differences), indent=2))
    elif differences:
        print(render(differences))
    errors = sum(1 for d in differences if d.mark is Mark.ERROR)
    print(f"verify {folder.name}: {verifier.local_files} files, {verifier.objects} objects: "
          + (f"{len(differences) - errors} differences, {errors} errors" if differences else "exact"),
          file=sys.stderr)
    if errors:
        return ExitCode.ERRORS
    return ExitCode.DIFFERENCES if differences else ExitCode.OK


def _source(args: argparse.Namespace) -> FolderConfig | int:
    """The folder to restore: from the config, or from the bucket and prefix alone."""
    target = Path(args.to).absolute()
    spot = args.folder or ""
    if spot.startswith("s3://") or args.bucket:
        if spot.startswith("s3://"):
            url = urlsplit(spot)
            bucket, prefix = url.netloc, url.path
        else:
            bucket, prefix = args.bucket, args.prefix or ""
        try:
            return FolderConfig(name=bucket, source=Path("<command line>"), path=target, bucket=parse_bucket(bucket),
                                prefix=parse_prefix(prefix), endpoint_url=args.endpoint_url, region=args.region,
                                profile=args.profile)
        except ValueError as exc:
            print(f"syncd: restore: {exc}", file=sys.stderr)
            return ExitCode.USAGE
    if not spot:
        print("syncd: restore needs a FOLDER from the config, an s3://BUCKET/PREFIX URL or --bucket", file=sys.stderr)
        return ExitCode.USAGE
    config = _config(args, roots_must_exist=False)
    if config is None:
        return ExitCode.CONFIG
    folder = _folder(config, spot)
    return ExitCode.USAGE if folder is None else folder


def _failed(args: argparse.Namespace, folder: FolderConfig, message: str) -> None:
    """A failure of the whole command: on stderr, and with --json as ``{"error": ...}`` on stdout."""
    print(f"syncd: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"folder": folder.name, "bucket": folder.bucket, "prefix": folder.prefix, "ok": False,
                          "error": message}, indent=2))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: temp files removed, nothing partial in place


def _source_of(args: argparse.Namespace, folder: FolderConfig, store: ObjectStore, at: float | None) -> Source | None:
    """Where the items come from: versions where the bucket keeps them, else the trash
    (configured, or found under the prefix: a restore from a bare s3:// URL); None (after
    saying why and how to fix it) when earlier states are kept nowhere."""
    from .snapshot import Source
    from .trash import has_entries

    if at is None and not args.deleted:
        return Source.CURRENT
    versioning = store.versioning() if at is not None else ""
    if versioning == "Enabled":
        return Source.VERSIONS
    if folder.delete == DeleteMode.TRASH or has_entries(store, folder.prefix):
        return Source.TRASH if at is not None else Source.DELETED
    if versioning:  # Suspended: the versions kept before the suspension
        return Source.VERSIONS
    if args.deleted:
        _failed(args, folder, f"restore --deleted: s3://{folder.bucket}/{folder.prefix} has no trash, so deleted "
                "files are not kept; " + TRASH_HINT)
    else:
        _failed(args, folder, f"restore --at: bucket {folder.bucket!r} is not versioned and "
                f"s3://{folder.bucket}/{folder.prefix} has no trash, so earlier states are not kept; "
                + VERSIONING_HINT.format(bucket=folder.bucket))
    return None


def _restore(args: argparse.Namespace) -> int:
    gc.disable()  # until the downloads start: see gc.freeze() below
    from .restore import Restorer
    from .snapshot import parse_time

    folder = _source(args)
    if isinstance(folder, int):
        return folder
    try:
        at = None if args.at is None else parse_time(args.at)
    except ValueError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if at is not None and args.deleted:
        print("syncd: restore: --at and --deleted do not go together: --at TIME restores the whole tree as it "
              "was then (deleted files included), --deleted the files deleted since", file=sys.stderr)
        return ExitCode.USAGE
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        # Two pools of `workers` threads may each have a GET open: whole files, and ranged parts.
        store = open_store(folder, connections=2 * (args.workers or folder.workers) + 4)
        # The SDKs' import and client set-up leave a large heap of objects that live as long
        # as the process (collecting while they are built finds nothing to free); frozen, the
        # collector's full passes during the many downloads (their callbacks allocate on every
        # answer) no longer walk them again and again.
        gc.freeze()
        gc.enable()
        source = _source_of(args, folder, store, at)
        if source is None:
            return ExitCode.FAILURE
        restorer = Restorer(folder, store, str(Path(args.to).absolute()), at=at, patterns=tuple(args.paths),
                            force=args.force, workers=args.workers,
                            progress=sys.stderr.isatty() and not args.json, source=source)
        result = restorer.run()
    except StoreError as exc:
        _failed(args, folder, f"restore {folder.name}: {exc}")
        return ExitCode.FAILURE
    except OSError as exc:
        _failed(args, folder, f"restore into {args.to}: {exc.strerror or exc}")
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        print("syncd: restore interrupted; files not yet in place were not written (run it again to finish)",
              file=sys.stderr)
        return ExitCode.INTERRUPTED
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps(restore_report(folder, restorer.target, at, result, seconds), indent=2))
    elif (lines := restore_render(result)):
        print(lines)
    print(f"restore {folder.name}: {len(result.restored)} restored, {len(result.already)} already correct, "
          f"{len(result.kept)} kept, {len(result.failed)} failed, {len(result.refused)} refused "
          f"({seconds:.1f}s)", file=sys.stderr)
    return ExitCode.OK if result.ok else ExitCode.DIFFERENCES


PROBE_SECONDS = 30.0  # how long check-config waits for the stores' answers


def probe(folders: tuple[FolderConfig, ...], timeout: float = PROBE_SECONDS) -> dict[str, str]:
    """Check every folder's bucket or container at once; ``{folder name: problem}`` for those
    that cannot work. A store that does not answer in time is reported, not waited for (the
    threads are daemons: a hung endpoint does not hold the exit)."""
    answers: dict[str, str | None] = {}
    lock = threading.Lock()

    def check(folder: FolderConfig) -> None:
        problem: str | None = None
        try:
            store = open_store(folder)
            try:
                store.check()
            finally:
                store.close()
        except StoreError as exc:
            problem = str(exc)
        with lock:
            answers[folder.name] = problem

    threads = [threading.Thread(target=check, args=(f,), name=f"probe-{f.name}", daemon=True) for f in folders]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        done = dict(answers)
    failed = {f.name: problem for f in folders if (problem := done.get(f.name, "")) is not None}
    for name, problem in failed.items():
        if not problem:
            failed[name] = f"no answer from the store within {timeout:.0f}s"
    return failed


# ---------------------------------------------------------------------- restore's output

def restore_report(folder: FolderConfig, target: str, at: float | None, result: RestoreResult,
                   seconds: float) -> dict[str, object]:
    """The --json document (stable; documented in docs/operations.md)."""
    return {"folder": folder.name, "bucket": folder.bucket, "prefix": folder.prefix, "to": target,
            "at": None if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
            "ok": result.ok, "restored": len(result.restored), "already_correct": len(result.already),
            "bytes": result.bytes, "gets": result.gets, "heads": result.heads, "seconds": round(seconds, 3),
            "kept": [{"path": p, "reason": r} for p, r in sorted(result.kept)],
            "failed": [{"path": p, "reason": r} for p, r in sorted(result.failed)],
            "refused": [{"key": k, "reason": r} for k, r in sorted(result.refused)]}


def restore_render(result: RestoreResult) -> str:
    lines = [f"! {p}  ({r})" for p, r in sorted(result.failed)]
    lines += [f"= {p}  (kept: {r})" for p, r in sorted(result.kept)]
    lines += [f"! {k!r}  (refused: {r})" for k, r in sorted(result.refused)]
    return "\n".join(lines)
