"""Metrics, /healthz, lag and the heartbeat (issue 20), against the real daemon and SeaweedFS;
"endpoint down" is the proxy refusing connections. The scrape is checked by Prometheus's own
`promtool check metrics` (Debian's `prometheus` package, installed here when missing)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Syncd, await_condition
from tests.test_operations import NotifyListener

PROCESS_WIDE = {"syncd_inotify_watches", "syncd_inotify_overflows_total", "syncd_build_info"}


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's checker; installed from Debian's `prometheus` package when we are root."""
    found = shutil.which("promtool")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed and could not be (needs root and apt-get: "
                    "apt-get install prometheus)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrapes:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        status, body = get(self.base + "/metrics")
        assert status == 200, body
        return body

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(self.text())
                for s in fam.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for n, ls, v in self.samples():
            if n == name and all(ls.get(k) == want for k, want in labels.items()):
                return v
        return None

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = get(self.base + "/healthz")
        return status, json.loads(body)


def with_metrics(syncd: Syncd, **extra: Any) -> Scrapes:
    port = free_port()
    syncd.write_global(metrics={"listen": f"127.0.0.1:{port}"}, **extra)
    return Scrapes(port)


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


class PingCounter:
    """A local dead-man's-switch service: counts the GETs it receives."""

    def __init__(self) -> None:
        counter = self
        self.pings = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                counter.pings += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pings() -> Iterator[PingCounter]:
    counter = PingCounter()
    yield counter
    counter.close()


# --------------------------------------------------------------------------- scrape


def test_a_scrape_passes_promtool_and_counts_exactly_the_uploads_made(syncd, tree, bucket, promtool):
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    for i in range(3):
        (tree / f"f{i}.txt").write_text(f"content {i}")
    syncd.wait_idle()
    assert scrape.value("syncd_uploads_total", folder="main") == 3
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape.text(), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (tree / "f3.txt").write_text("one more")
    (tree / "f4.txt").write_text("and another")
    syncd.wait_idle()
    assert scrape.value("syncd_uploads_total", folder="main") == 5
    assert scrape.value("syncd_change_visible_seconds_count", folder="main") == 5
    assert scrape.value("syncd_sent_bytes_total", folder="main") == sum(len(p.read_bytes()) for p in tree.iterdir())
    assert (scrape.value("syncd_s3_requests_total", folder="main", operation="PutObject", outcome="ok") or 0) >= 5


def test_every_syncd_series_but_the_process_wide_ones_carries_the_folder_label(syncd, tree, bucket, tmp_path):
    scrape = with_metrics(syncd)
    other = tmp_path / "other"
    other.mkdir()
    syncd.add_folder("main", tree, bucket, prefix="main/")
    syncd.add_folder("other", other, bucket, prefix="other/")
    syncd.start()
    (tree / "a.txt").write_text("a")
    syncd.wait_idle()
    samples = [(n, ls) for n, ls, _ in scrape.samples() if n.startswith("syncd_")]
    unlabelled = {n for n, ls in samples if n not in PROCESS_WIDE and ls.get("folder") not in ("main", "other")}
    assert not unlabelled
    assert {ls["folder"] for n, ls in samples if n == "syncd_lag_seconds"} == {"main", "other"}
    state = {ls["state"]: v for n, ls, v in scrape.samples() if n == "syncd_folder_state" and ls["folder"] == "main"}
    assert state["watching"] == 1 and sum(state.values()) == 1


def test_no_port_is_opened_without_metrics(syncd, tree, bucket):
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    (tree / "a.txt").write_text("a")
    syncd.wait_idle()
    assert syncd.proc is not None
    assert listening_ports(syncd.proc.pid) == set()


def test_with_metrics_the_daemon_listens_on_the_configured_port_only(syncd, tree, bucket):
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    assert syncd.proc is not None
    assert listening_ports(syncd.proc.pid) == {int(scrape.base.rsplit(":", 1)[1])}


# --------------------------------------------------------------------------- lag and health


def test_lag_rises_while_the_endpoint_is_down_and_falls_to_zero_once_caught_up(proxied_syncd, tree, bucket, s3_proxy):
    syncd = proxied_syncd
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    assert scrape.value("syncd_lag_seconds", folder="main") == 0

    s3_proxy.refuse()
    (tree / "during-outage.txt").write_text("waits for the endpoint")
    first = await_condition(lambda: (v := scrape.value("syncd_lag_seconds", folder="main")) and v >= 1 and v, 20,
                            "the lag to pass 1 s")
    await_condition(lambda: (scrape.value("syncd_lag_seconds", folder="main") or 0) > first + 0.5, 10,
                    "the lag to keep rising")
    assert syncd.folder_status("main")["lag_s"] >= first

    s3_proxy.refuse(False)
    syncd.wait_idle(90)
    await_condition(lambda: scrape.value("syncd_lag_seconds", folder="main") == 0, 10, "the lag to fall to 0")
    assert syncd.folder_status("main")["lag_s"] == 0


def test_healthz_is_503_with_the_endpoint_dead_and_a_change_pending_and_200_after(proxied_syncd, tree, bucket,
                                                                                  s3_proxy):
    syncd = proxied_syncd
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket, max_lag="2s")
    syncd.start()
    syncd.wait_idle()
    await_condition(lambda: scrape.health()[0] == 200, 20, "/healthz 200 once synced")

    s3_proxy.refuse()
    (tree / "pending.txt").write_text("cannot be sent")
    status, body = await_condition(lambda: (h := scrape.health())[0] == 503 and h, 20, "/healthz 503")
    folder = body["folders"][0]
    assert folder["folder"] == "main" and not folder["healthy"] and folder["problem"]
    assert body["reason"].startswith("main: ")

    s3_proxy.refuse(False)
    syncd.wait_idle(90)
    status, body = await_condition(lambda: (h := scrape.health())[0] == 200 and h, 20, "/healthz 200 again")
    assert body["healthy"] and body["folders"][0]["lag_s"] == 0


def test_status_and_healthz_name_a_folder_that_cannot_progress_the_same_way(proxied_syncd, tree, bucket, s3_proxy,
                                                                             tmp_path):
    syncd = proxied_syncd
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    notify = NotifyListener(tmp_path / "notify.sock")
    try:
        syncd.start(NOTIFY_SOCKET=str(notify.path))
        syncd.wait_idle()
        s3_proxy.refuse()
        (tree / "stuck.txt").write_text("cannot be sent")
        _, body = await_condition(lambda: (h := scrape.health())[0] == 503 and h, 20, "/healthz 503")
        problem = body["folders"][0]["problem"]
        await_condition(lambda: any(f"(main:{problem})" in line for line in notify.lines("STATUS=")), 10,
                        f"STATUS= naming main:{problem}")
    finally:
        s3_proxy.refuse(False)
        notify.close()


def test_transient_failures_count_as_retries_and_server_errors(proxied_syncd, tree, bucket, s3_proxy):
    syncd = proxied_syncd
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    s3_proxy.set_faults(1.0, ["503"], ops=["PutObject"])
    (tree / "slow.txt").write_text("throttled at first")
    await_condition(lambda: (scrape.value("syncd_retries_total", folder="main") or 0) >= 1, 30, "a retry")
    s3_proxy.clear_faults()
    syncd.wait_idle(90)
    assert scrape.value("syncd_errors_total", folder="main", scope="transient") == \
        scrape.value("syncd_retries_total", folder="main")
    assert (scrape.value("syncd_s3_requests_total", folder="main", operation="PutObject",
                         outcome="server_error") or 0) >= 1
    assert scrape.value("syncd_uploads_total", folder="main") == 1


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_pings_arrive_while_synced_and_stop_while_the_endpoint_is_down(proxied_syncd, tree, bucket,
                                                                                 s3_proxy, pings):
    syncd = proxied_syncd
    syncd.write_global(heartbeat={"url": pings.url, "interval": "300ms"})
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.wait_idle()
    await_condition(lambda: pings.pings >= 3, 20, "pings while in sync")

    skipped_before = syncd.log().count("event=heartbeat.skipped")
    s3_proxy.refuse()
    (tree / "stuck.txt").write_text("cannot be sent")
    await_condition(lambda: syncd.log().count("event=heartbeat.skipped") > skipped_before, 20,
                    "a skipped ping in the log")
    stopped_at = pings.pings
    time.sleep(2.0)  # absence over 6+ intervals: no condition to await for "nothing happens"
    assert pings.pings == stopped_at

    s3_proxy.refuse(False)
    syncd.wait_idle(90)
    await_condition(lambda: pings.pings >= stopped_at + 2, 30, "pings once in sync again")


# --------------------------------------------------------------------------- bad config


def test_a_port_in_use_is_an_error_naming_the_key_and_the_daemon_does_not_start(syncd, tree, bucket):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        syncd.write_global(metrics={"listen": f"127.0.0.1:{port}"})
        syncd.add_folder("main", tree, bucket)
        syncd.start(wait_ready=False)
        assert syncd.proc is not None
        assert syncd.proc.wait(30) == 78
    log = syncd.log()
    assert "key 'metrics.listen'" in log and "in use" in log
    assert not syncd.socket.exists()


def test_a_bad_metrics_address_is_an_error_naming_the_key_and_the_daemon_does_not_start(syncd, tree, bucket):
    syncd.write_global(metrics={"listen": "localhost"})
    syncd.add_folder("main", tree, bucket)
    syncd.start(wait_ready=False)
    assert syncd.proc is not None
    assert syncd.proc.wait(30) == 78
    assert "key 'metrics.listen': expected HOST:PORT" in syncd.log()


def test_a_reload_onto_a_port_in_use_keeps_the_old_metrics_server(syncd, tree, bucket):
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        syncd.write_global(metrics={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        reload = syncd.cli("reload")
    assert reload.returncode == 78 and "key 'metrics.listen'" in reload.stderr
    assert "syncd_uploads_total" in scrape.text()  # still served where it was


def test_a_reload_with_a_bad_address_keeps_the_old_metrics_server(syncd, tree, bucket):
    scrape = with_metrics(syncd)
    syncd.add_folder("main", tree, bucket)
    syncd.start()
    syncd.write_global(metrics={"listen": "127.0.0.1:99999"})
    reload = syncd.cli("reload")
    assert reload.returncode == 78 and "key 'metrics.listen'" in reload.stderr
    assert "syncd_uploads_total" in scrape.text()


def test_check_config_names_the_heartbeat_key_that_is_wrong(syncd, tree, bucket):
    syncd.write_global(heartbeat={"interval": "10s"})
    syncd.add_folder("main", tree, bucket, max_lag="soon")
    result = syncd.cli("check-config")
    assert result.returncode == 78
    assert "key 'heartbeat.url': required setting is missing" in result.stderr
    assert "key 'max_lag'" in result.stderr


def test_a_scrape_counts_the_manifest_at_most_once_per_recount_interval(tmp_path: Path, monkeypatch):
    from prometheus_client import CollectorRegistry, generate_latest
    from syncd import statedir
    from syncd.bandwidth import ByteBudget
    from syncd.config import FolderConfig
    from syncd.folder import FolderRuntime
    from syncd.metrics import Collector

    (tmp_path / "tree").mkdir()
    statedir.prepare(tmp_path / "state")
    folder = FolderConfig(name="main", source=tmp_path / "main.yaml", path=tmp_path / "tree", bucket="bucket")
    runtime = FolderRuntime(folder, tmp_path / "state", ByteBudget(1 << 20))
    counted = []
    monkeypatch.setattr(runtime.journal, "manifest_count", lambda: counted.append(1) or 0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(lambda: [runtime], lambda: 0))
    try:
        for _ in range(5):
            assert b'syncd_manifest_objects{folder="main"} 0.0' in generate_latest(registry)
    finally:
        runtime.journal.close()
    assert len(counted) == 1


def test_metrics_and_heartbeat_are_off_by_default(tmp_path: Path, syncd, tree, bucket):
    from syncd.config import load_config

    syncd.add_folder("main", tree, bucket)
    config = load_config(syncd.config)
    assert config.metrics.listen is None and config.heartbeat.url is None
    assert config.folders[0].max_lag == 300
