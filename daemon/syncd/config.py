"""Configuration: one global YAML file plus one YAML file per watched folder.

Everything is parsed and validated here, once, into frozen dataclasses; no other module
reads YAML. Every problem is reported with the file, the key and what was expected, and all
problems in a file are reported together so a user fixes them in one go.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .choices import AddressingStyle, Checksum, ContentTypeMode, DeleteMode, StoreKind
from .configfile import DEFAULT_CONFIG, DEFAULT_SOCKET, resolve
from .units import parse_duration, parse_size
from .validators import (
    HeaderRule,
    MiB,
    Parser,
    azure_problems,
    parse_bool,
    parse_bucket,
    parse_choice,
    parse_endpoint,
    parse_group,
    parse_headers,
    parse_int_range,
    parse_listen,
    parse_max_delete,
    parse_opt,
    parse_part_size,
    parse_positive_duration,
    parse_positive_rate,
    parse_prefix,
    parse_role_arn,
    parse_role_duration,
    parse_role_external_id,
    parse_role_session_name,
    parse_str,
    parse_str_list,
    parse_url,
)

MIN_DELETE_WAVE = 1000




class ConfigError(Exception):
    """One or more configuration problems, each naming file and key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FolderConfig:
    """Settings for one watched folder (one ``folders.d/NAME.yaml``)."""

    name: str
    source: Path
    path: Path
    bucket: str
    prefix: str = ""
    delete: DeleteMode = DeleteMode.MIRROR
    ignore: tuple[str, ...] = ()
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str = "syncd"
    role_external_id: str | None = None
    role_duration: int = 3600
    sts_endpoint_url: str | None = None   # None: AWS_ENDPOINT_URL_STS, else AWS's own
    content_type: ContentTypeMode = ContentTypeMode.AUTO
    headers: tuple[HeaderRule, ...] = ()
    addressing_style: AddressingStyle = AddressingStyle.AUTO
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    checksum: Checksum = Checksum.CRC32C
    settle: float = 0.5
    settle_closed: float = 0.02         # quiet period of a finished write (closed or renamed into place)
    hot_window: float = 2.0             # a path finished again within this is hot: it waits `settle`
    max_delay: float = 30.0
    workers: int = 32
    multipart_threshold: int = 64 * MiB
    part_size: int = 16 * MiB
    part_concurrency: int = 2           # parts of one file in flight at once
    stale_upload_age: float = 86400.0   # unknown incomplete uploads older than this are aborted
    bandwidth: int | None = None
    reconcile_interval: float = 3600.0
    request_timeout: float = 60.0
    delete_foreign: bool = False
    max_delete: str = "50%"
    trash_retain: float = 30 * 86400.0  # delete: trash: entries older than this are purged
    one_file_system: bool = False       # true: mount points inside the folder are not crossed
    max_lag: float = 300.0              # /healthz: 503 once the oldest unsynced change is older
    store: StoreKind = StoreKind.S3     # azure: bucket = container, endpoint_url = the blob endpoint

    def delete_limit(self, objects: int) -> int:
        """How many deletions one wave may make before the folder pauses for confirmation.

        A percentage applies to the objects syncd holds for the folder, but never holds back
        a wave of MIN_DELETE_WAVE deletions or fewer; a count is exact."""
        if self.max_delete.endswith("%"):
            return max(MIN_DELETE_WAVE, int(objects * float(self.max_delete[:-1]) / 100))
        return int(self.max_delete)

    def key_for(self, relpath: str) -> str:
        """The object key for a path relative to the folder root (``/``-separated)."""
        return self.prefix + relpath


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:``: where /metrics and /healthz are served; None = off (the default)."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class HeartbeatConfig:
    """``heartbeat:``: GET ``url`` every ``interval`` while every folder is provably in sync."""

    url: str | None = None
    interval: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    source: Path
    state_dir: Path
    socket: Path
    folders_dir: Path
    log: LogConfig = LogConfig()
    max_inflight_bytes: int = 256 * MiB
    max_workers: int | None = None   # transfer threads shared by all folders; None: the largest `workers`
    shutdown_timeout: float = 20.0
    socket_group: int | None = None  # gid allowed to use the socket (mode 0660) besides our uid
    metrics: MetricsConfig = MetricsConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    folders: tuple[FolderConfig, ...] = field(default_factory=tuple)

    def transfer_threads(self) -> int:
        """The shared transfer pool's size: ``max_workers``, or else the largest folder
        ``workers`` (one folder alone then runs as wide as it is allowed to)."""
        if self.max_workers is not None:
            return self.max_workers
        return max((f.workers for f in self.folders), default=FolderConfig.workers)


# --------------------------------------------------------------------------- value parsers



# Every folder setting; all but `path` may be defaulted in the global file's `defaults`.
_FOLDER_KEYS: dict[str, Parser] = {
    "path": parse_str,
    "bucket": parse_bucket,
    "prefix": parse_prefix,
    "delete": parse_choice(*DeleteMode, kind=DeleteMode),
    "ignore": parse_str_list,
    "endpoint_url": parse_opt(parse_endpoint),
    "region": parse_opt(parse_str),
    "profile": parse_opt(parse_str),
    "role_arn": parse_opt(parse_role_arn),
    "role_session_name": parse_role_session_name,
    "role_external_id": parse_opt(parse_role_external_id),
    "role_duration": parse_role_duration,
    "sts_endpoint_url": parse_opt(parse_endpoint),
    "content_type": parse_choice(*ContentTypeMode, kind=ContentTypeMode),
    "headers": parse_headers,
    "addressing_style": parse_choice(*AddressingStyle, kind=AddressingStyle),
    "storage_class": parse_opt(parse_str),
    "sse": parse_opt(parse_choice("AES256", "aws:kms")),
    "sse_kms_key_id": parse_opt(parse_str),
    "checksum": parse_choice(*Checksum, kind=Checksum),
    "settle": parse_duration,
    "settle_closed": parse_duration,
    "hot_window": parse_duration,
    "max_delay": parse_positive_duration,
    "workers": parse_int_range(1, 256),
    "multipart_threshold": parse_part_size,
    "part_size": parse_part_size,
    "part_concurrency": parse_int_range(1, 32),
    "stale_upload_age": parse_positive_duration,
    "bandwidth": parse_opt(parse_positive_rate),
    "reconcile_interval": parse_positive_duration,
    "request_timeout": parse_positive_duration,
    "delete_foreign": parse_bool,
    "max_delete": parse_max_delete,
    "trash_retain": parse_positive_duration,
    "one_file_system": parse_bool,
    "max_lag": parse_positive_duration,
    "store": parse_choice(*StoreKind, kind=StoreKind),
}
_REQUIRED_FOLDER_KEYS = ("path", "bucket")
_GLOBAL_KEYS = ("state_dir", "socket", "socket_group", "folders_dir", "log", "defaults", "max_inflight_bytes",
                "max_workers", "shutdown_timeout", "metrics", "heartbeat")
_LOG_KEYS: dict[str, Parser] = {
    "level": parse_choice("debug", "info", "warning", "error"),
    "format": parse_choice("auto", "console", "journald", "json", "logfmt"),
}
_METRICS_KEYS: dict[str, Parser] = {"listen": parse_opt(parse_listen)}
_HEARTBEAT_KEYS: dict[str, Parser] = {"url": parse_url, "interval": parse_positive_duration}


def _hint(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"


class _Problems:
    """Collects problems for one file so all of them are reported at once."""

    def __init__(self, source: Path):
        self.source = source
        self.items: list[str] = []

    def add(self, key: str | None, message: str) -> None:
        where = f"{self.source}: key '{key}'" if key else f"{self.source}"
        self.items.append(f"{where}: {message}")

    def parse(self, raw: Mapping[str, Any], table: Mapping[str, Parser], context: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{context}{key}"
            if key not in table:
                self.add(dotted, "unknown setting" + _hint(str(key), list(table)))
                continue
            try:
                out[key] = table[key](value)
            except ValueError as exc:
                self.add(dotted, str(exc))
        return out


def _load_yaml(path: Path, problems: _Problems) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.add(None, f"cannot read file: {exc.strerror}")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.add(None, f"not valid YAML: {exc}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.add(None, f"expected a mapping of settings at the top level, got {type(data).__name__}")
        return {}
    return data


def load_config(path: Path | str | None = None, roots_must_exist: bool = True) -> Config:
    """Read and validate the global file and every ``folders_dir/*.yaml``; raises ConfigError.

    ``roots_must_exist=False``: `syncd restore` reads the config of a folder whose disk died."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    source = source.absolute()
    problems = _Problems(source)
    raw = _load_yaml(source, problems)
    base = source.parent
    for key in raw:
        if key not in _GLOBAL_KEYS:
            problems.add(str(key), "unknown setting" + _hint(str(key), list(_GLOBAL_KEYS)))

    def path_setting(key: str, default: str) -> Path:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            problems.add(key, f"expected a path, got {value!r}")
            value = default
        return resolve(base, value)

    state_dir = path_setting("state_dir", "/var/lib/syncd")
    socket = path_setting("socket", str(DEFAULT_SOCKET))
    folders_dir = path_setting("folders_dir", "folders.d")

    log_raw = raw.get("log") or {}
    log = LogConfig()
    if not isinstance(log_raw, dict):
        problems.add("log", "expected a mapping such as {level: info, format: auto}")
    else:
        log = LogConfig(**problems.parse(log_raw, _LOG_KEYS, "log."))

    extra: dict[str, Any] = {}
    metrics_raw = raw.get("metrics") or {}
    if not isinstance(metrics_raw, dict):
        problems.add("metrics", "expected a mapping such as {listen: 127.0.0.1:9108}")
    else:
        extra["metrics"] = MetricsConfig(**problems.parse(metrics_raw, _METRICS_KEYS, "metrics."))
    heartbeat_raw = raw.get("heartbeat") or {}
    if not isinstance(heartbeat_raw, dict):
        problems.add("heartbeat", "expected a mapping such as {url: https://hc-ping.com/UUID, interval: 60s}")
    else:
        heartbeat = problems.parse(heartbeat_raw, _HEARTBEAT_KEYS, "heartbeat.")
        if heartbeat_raw and "url" not in heartbeat_raw:
            problems.add("heartbeat.url", "required setting is missing (the URL to ping while in sync)")
        extra["heartbeat"] = HeartbeatConfig(**heartbeat)
    for key, parser in (("max_inflight_bytes", parse_size), ("shutdown_timeout", parse_positive_duration),
                        ("socket_group", parse_group), ("max_workers", parse_opt(parse_int_range(1, 1024)))):
        if key in raw:
            try:
                extra[key] = parser(raw[key])
            except ValueError as exc:
                problems.add(key, str(exc))

    defaults_raw = raw.get("defaults") or {}
    defaults: dict[str, Any] = {}
    if not isinstance(defaults_raw, dict):
        problems.add("defaults", "expected a mapping of folder settings")
    else:
        table = {k: v for k, v in _FOLDER_KEYS.items() if k != "path"}
        defaults = problems.parse(defaults_raw, table, "defaults.")

    all_problems = list(problems.items)
    folders: list[FolderConfig] = []
    if not folders_dir.is_dir():
        all_problems.append(f"{source}: key 'folders_dir': directory {folders_dir} does not exist")
    else:
        for file in sorted(folders_dir.iterdir()):
            if file.suffix not in (".yaml", ".yml") or file.name.startswith("."):
                continue
            folder, folder_problems = load_folder(file, defaults, roots_must_exist)
            all_problems.extend(folder_problems)
            if folder is not None:
                folders.append(folder)
    all_problems.extend(_overlaps(folders))
    if all_problems:
        raise ConfigError(all_problems)
    return Config(source=source, state_dir=state_dir, socket=socket, folders_dir=folders_dir, log=log,
                  folders=tuple(folders), **extra)


def load_folder(file: Path, defaults: Mapping[str, Any],
                roots_must_exist: bool = True) -> tuple[FolderConfig | None, list[str]]:
    """Parse one folder file on top of the global defaults."""
    problems = _Problems(file)
    name = file.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        problems.add(None, "the file name is the folder's name: use letters, digits, '.', '-', '_'")
    raw = _load_yaml(file, problems)
    values = dict(defaults)
    values.update(problems.parse(raw, _FOLDER_KEYS))
    for key in _REQUIRED_FOLDER_KEYS:
        if key not in values and not any(key in p for p in problems.items):
            problems.add(key, "required setting is missing" + (" (the local folder to mirror)" if key == "path"
                                                              else " (the bucket or container to mirror into)"))
    if "path" in values:
        root = resolve(file.parent, values["path"])
        if not root.is_dir() and not (roots_must_exist or root.exists()):
            pass  # restore: the folder root is what is being brought back
        elif not root.is_dir():
            problems.add("path", f"expected an existing directory, {root} "
                         + ("is not a directory" if root.exists() else "does not exist"))
        elif (real := os.path.realpath(root)) != os.path.normpath(root):
            # syncd never reads through a symlink; one in the root's path could be swapped
            # for another while the daemon is stopped, redirecting the whole folder.
            problems.add("path", f"{root} goes through a symlink (it leads to {real}); syncd never "
                         f"reads through symlinks: set path to {real}")
        values["path"] = Path(os.path.normpath(root)) if root.is_dir() or not root.exists() else root
    if values.get("store") == StoreKind.AZURE:
        for key, problem in azure_problems(values, {str(k) for k in raw}):
            problems.add(key, problem)
    if problems.items:
        return None, problems.items
    known = {f.name for f in fields(FolderConfig)}
    return FolderConfig(name=name, source=file, **{k: v for k, v in values.items() if k in known}), []


def _overlaps(folders: list[FolderConfig]) -> list[str]:
    """Two folders writing under the same bucket prefix would delete each other's objects."""
    out = []
    for i, a in enumerate(folders):
        for b in folders[i + 1:]:
            if (a.endpoint_url, a.bucket) == (b.endpoint_url, b.bucket) and (
                    a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix)):
                out.append(f"{b.source}: key 'prefix': bucket {b.bucket!r} prefix {b.prefix!r} overlaps folder "
                           f"{a.name!r} ({a.source}) prefix {a.prefix!r}; each folder needs its own prefix")
    return out
