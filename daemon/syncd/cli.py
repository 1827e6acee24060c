"""The ``syncd`` command line. ``run`` starts the daemon; the rest talk to it.

Exit codes (:class:`~syncd.exitcodes.ExitCode`): 0 success; 1 failure or ``wait`` timeout;
2 ``wait``: idle but some changes failed permanently; 3 no daemon answered (``wait``: within
its timeout); 4 rejected request (e.g. unknown folder); 5 ``wait``: a folder is held by a guard;
13 permission denied on the socket; 64 usage error; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import STARTED_AT, __version__
from .configfile import DEFAULT_CONFIG, socket_path
from .control import CONNECT_POLL, ControlError, DaemonGone, connect, exchange, request
from .exitcodes import ExitCode
from .units import format_duration, format_size

if TYPE_CHECKING:
    from .config import Config

# `syncd wait` without --timeout waits this long for a daemon to answer (one starting, or
# systemd restarting one after a crash: RestartSec=5s) before it exits 3; with --timeout it
# waits for the daemon within that timeout.
CONNECT_WAIT = 30.0
# While `syncd run` starts, the collector's young generation is collected only after this many
# new objects instead of CPython's 700: start-up builds hundreds of thousands of objects that
# live as long as the daemon (modules, the SDK's service models), and every collection walked
# them again. Bounded all the same; the daemon restores the thresholds once it is up.
STARTUP_GC_YOUNG = 100_000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", default=None,
                        help=f"global config file (default: $SYNCD_CONFIG or {DEFAULT_CONFIG})")
    common.add_argument("--socket", default=None, help="control socket path (default: from the config)")
    parser = _Parser(prog="syncd", description="Keep S3 prefixes an exact, live mirror of local folders.")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p = sub.add_parser("check-config", parents=[common],
                       help="validate the configuration, check each folder's bucket or container, and exit")
    p.add_argument("--offline", action="store_true", help="validate only: do not contact the stores")
    p = sub.add_parser("status", parents=[common], help="show each folder's state")
    p.add_argument("folder", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output (stable, versioned)")
    p = sub.add_parser("wait", parents=[common], help="block until every folder is idle")
    p.add_argument("folder", nargs="?")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up after this many seconds (exit 1; exit 3 if no daemon answered by then). "
                        f"Without it: wait up to {CONNECT_WAIT:.0f}s for a daemon, then as long as it takes")
    for name, text in (("pause", "stop transfers (changes are still journaled)"),
                       ("retry", "requeue permanently failed changes")):
        sub.add_parser(name, parents=[common], help=text).add_argument("folder", nargs="?")
    p = sub.add_parser("resume", parents=[common], help="restart transfers; confirm what a guard held")
    p.add_argument("folder", nargs="?")
    p.add_argument("--take-over", action="store_true",
                   help="claim the folder's prefix although another syncd owns it (needs FOLDER)")
    p = sub.add_parser("reconcile", parents=[common], help="compare the folder with the journal now")
    p.add_argument("folder", nargs="?")
    p.add_argument("--wait", action="store_true", help="wait until the folder is idle afterwards")
    p.add_argument("--timeout", type=float, default=None)
    sub.add_parser("reload", parents=[common], help="re-read the configuration (same as SIGHUP)")
    p = sub.add_parser("verify", parents=[common], help="compare a folder with its bucket (no daemon needed)")
    p.add_argument("folder")
    p.add_argument("--full", action="store_true", help="re-hash every local file and compare with syncd-sha256")
    p.add_argument("--json", action="store_true", help="machine-readable output (stable)")
    p = sub.add_parser("restore", parents=[common], help="download a folder's mirror into a directory "
                       "(no daemon needed)")
    p.add_argument("folder", nargs="?", help="a configured folder, or s3://BUCKET/PREFIX")
    p.add_argument("--to", required=True, help="the directory to restore into (created if missing)")
    p.add_argument("--at", default=None,
                   help="ISO 8601 time: the tree as it was then (versioned bucket, or delete: trash)")
    p.add_argument("--deleted", action="store_true",
                   help="restore deleted files from the trash (delete: trash), each as it was when deleted")
    p.add_argument("--path", action="append", default=[], dest="paths", metavar="PATTERN",
                   help="restore only paths matching this gitignore-style pattern (repeatable)")
    p.add_argument("--force", action="store_true", help="replace local files whose content differs")
    p.add_argument("--json", action="store_true", help="machine-readable output (stable)")
    p.add_argument("--workers", type=int, default=None, help="parallel downloads (default: the folder's workers)")
    for flag, text in (("--bucket", "the bucket, without a config"), ("--prefix", "the key prefix"),
                       ("--endpoint-url", "an S3-compatible endpoint"), ("--region", "the bucket's region"),
                       ("--profile", "an AWS profile")):
        p.add_argument(flag, default=None, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config, args.offline)
    if args.command == "run":
        return _run(args.config)
    if args.command in ("verify", "restore"):
        from . import offline

        return offline.main(args)
    sock = Path(args.socket) if args.socket else socket_path(args.config)
    try:
        return _client(args, sock)
    except ControlError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return exc.code


def _load(path: str | None) -> Config | None:
    """The validated config, or None after printing every problem (exit with ExitCode.CONFIG).
    Imported here, not at the top: the client commands (`syncd wait`, started while the daemon
    starts) need only the socket's path and should not pay for the config's validators."""
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print("syncd: invalid configuration:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return None


def _check_config(path: str | None, offline: bool) -> int:
    """Exit 78 for an invalid configuration; 1 when a folder's store cannot be used (each such
    folder named, with the fix; the others are reported as they are)."""
    config = _load(path)
    if config is None:
        return ExitCode.CONFIG
    print(f"{config.source}: OK, {len(config.folders)} folder(s)")
    if offline:
        failed: dict[str, str] = {}
    else:
        from .offline import probe

        failed = probe(config.folders)
    for f in config.folders:
        state = "" if offline else f": error: {failed[f.name]}" if f.name in failed else ": reachable"
        print(f"  {f.name}: {f.path} -> {f.store}://{f.bucket}/{f.prefix}{state}")
    for name, message in failed.items():
        print(f"syncd: folder {name!r}: {message}", file=sys.stderr)
    return ExitCode.FAILURE if failed else ExitCode.OK


def _run(path: str | None) -> int:
    thresholds = gc.get_threshold()
    gc.set_threshold(STARTUP_GC_YOUNG, *thresholds[1:])
    import logging  # here, not at the top: the client commands log nothing

    from . import logs

    config = _load(path)
    if config is None:
        return ExitCode.CONFIG
    logs.setup(config.log.level, config.log.format)
    from . import service  # after logs.setup: warnings raised while importing libraries are logged too

    try:
        code = service.Daemon(config, gc_thresholds=thresholds).run()
    except ControlError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return exc.code
    # The journal is closed and everything recorded. A transfer still stuck in a dead
    # endpoint's timeout must not hold the exit: concurrent.futures joins its worker
    # threads at interpreter exit, which could take minutes.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _client(args: argparse.Namespace, sock: Path) -> int:
    folder = getattr(args, "folder", None)
    if args.command == "status":
        reply = request(sock, "status", folder=folder)
        if args.json:
            reply.pop("ok", None)
            print(json.dumps(reply, indent=2))
        else:
            print(render_status(reply))
        return ExitCode.OK
    if args.command == "wait":
        return _idle_exit(_wait(sock, folder, args.timeout), args.timeout)
    if args.command == "reconcile":
        timeout = args.timeout
        io_timeout = (timeout + 10) if timeout else (None if args.wait else 10.0)
        reply = request(sock, "reconcile", io_timeout=io_timeout, folder=folder, wait=args.wait, timeout=timeout)
        if not args.wait:
            print(f"reconcile started: {', '.join(reply['started']) or 'already running'}")
            return ExitCode.OK
        return _idle_exit(reply, timeout)
    if args.command == "reload":
        reply = request(sock, "reload", io_timeout=120)
        print(f"reloaded: added {reply['added'] or 'none'}, removed {reply['removed'] or 'none'}")
        return ExitCode.OK
    if args.command == "resume" and args.take_over:
        if folder is None:
            print("syncd: resume --take-over needs the FOLDER whose prefix to claim", file=sys.stderr)
            return ExitCode.USAGE
        reply = request(sock, "resume", folder=folder, take_over=True)
        print(f"resumed: {folder}; taking over its prefix")
        return ExitCode.OK
    reply = request(sock, args.command, folder=folder)
    if args.command == "retry":
        print(f"requeued {reply['requeued']} change(s)")
    else:
        print(f"{args.command}d: {', '.join(reply['folders'])}")
    return ExitCode.OK


def _wait(sock: Path, folder: str | None, timeout: float | None) -> dict[str, Any]:
    """`syncd wait`: the daemon's answer, waiting for a daemon to listen first (and again if
    it goes away mid-wait, e.g. a crash and systemd's restart), all within ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        within = CONNECT_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
        conn = connect(sock, within)
        # Asked with what is left: a daemon that took 10 s to come up has 10 s less to get idle.
        left = None if deadline is None else max(0.05, deadline - time.monotonic())
        conn.settimeout(None if left is None else left + 10)
        try:
            return exchange(conn, "wait", folder=folder, timeout=left, asked_at=STARTED_AT)
        except DaemonGone:
            time.sleep(CONNECT_POLL)  # it died (or restarts): wait for the next one


def _idle_exit(reply: dict[str, Any], timeout: float | None) -> int:
    """The exit code of a `wait` (or `reconcile --wait`) reply, its reasons on stderr."""
    if reply.get("held"):
        for held in reply["held"]:
            print(f"syncd: {held['folder']} is held: {held['reason']}", file=sys.stderr)
        return ExitCode.HELD
    if not reply["idle"]:
        print(f"syncd: not idle after {timeout}s: {', '.join(reply.get('busy', []))}", file=sys.stderr)
        return ExitCode.FAILURE
    if reply["failed"]:
        print(f"syncd: idle, but {reply['failed']} change(s) failed permanently "
              "(see 'syncd status'; 'syncd retry' requeues them)", file=sys.stderr)
        return ExitCode.FAILED_CHANGES
    return ExitCode.OK


def render_status(reply: dict[str, Any]) -> str:
    d = reply["daemon"]
    lines = [f"syncd {d['version']} (pid {d['pid']}, up {format_duration(d['uptime_s'])})"]
    for f in reply["folders"]:
        eta = format_duration(f["eta_s"]) if f["eta_s"] is not None else "-"
        scan = f["last_scan"]
        lines += [
            f"{f['name']}: {f['state']}   {f['path']} -> s3://{f['bucket']}/{f['prefix']}",
            f"  pending {f['pending']} (settling {f['settling']})   in flight {f['in_flight']}   "
            f"failed {f['failed']}   objects {f['objects']}   lag {format_duration(f.get('lag_s') or 0)}   "
            + "versioned " + {True: "yes", False: "no"}.get(f.get("versioned"), "?"),
            f"  done {f['files_done']} files, {format_size(f['bytes_done'])}   "
            f"rate {f['rate_files_per_s']:.1f} files/s, {format_size(f['rate_bytes_per_s'])}/s   ETA {eta}",
            "  last scan " + (f"{scan['at']} ({scan['seconds']:.1f}s, {scan['files']} files, "
                              f"{scan['changed'] + scan['missing']} differences)" if scan else "-"),
        ]
        remote = f.get("last_reconcile")
        if remote:
            lines.append(f"  last reconcile {remote['at']} ({remote['seconds']:.1f}s, {remote['objects']} objects, "
                         f"{remote['lists']} LIST + {remote['heads']} HEAD, {remote['drift']} drifted, "
                         f"{remote['adopted']} adopted, {format_size(remote.get('bytes_read', 0))} read "
                         f"in {remote.get('files_read', 0)} files to prove them)")
        if f.get("foreign"):
            lines.append(f"  foreign keys: {f['foreign']} (e.g. {', '.join(f['foreign_examples'])}); kept unless "
                         "delete_foreign: true")
        if f["last_error"]:
            lines.append(f"  last error: {f['last_error']}")
        for failure in f["failures"]:
            lines.append(f"  failed: {failure['path']}: {failure['error']}")
    return "\n".join(lines)
