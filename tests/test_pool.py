"""The shared pools: a fair share per folder, each folder's cap, nothing running while idle;
and the loops that run the scheduler turns only when woken or due."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from syncd.config import ConfigError, load_config
from syncd.loops import LoopGroup
from syncd.pool import Pool

from tests.support.daemon import await_condition


def test_a_folders_single_task_runs_before_the_backlog_of_another_folder():
    pool = Pool("t", 2)
    gate = threading.Event()
    order: list[str] = []
    busy, quiet = pool.lane("busy", 16), pool.lane("quiet", 16)

    def task(name: str) -> None:
        gate.wait(10)
        order.append(name)

    for i in range(200):
        busy.submit(task, f"busy-{i}")
    quiet.submit(task, "quiet")
    gate.set()
    await_condition(lambda: len(order) == 201, 10, "every task to run")
    # Two threads were taken by the busy lane's first tasks; the next free one serves the
    # quiet lane, not the 198 busy tasks queued before it.
    assert order.index("quiet") <= 3, order[:10]


def test_a_lane_never_runs_more_tasks_at_once_than_its_cap():
    pool = Pool("t", 8)
    lane = pool.lane("capped", 2)
    running, peak = [0], [0]
    lock = threading.Lock()

    def task() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    for _ in range(20):
        lane.submit(task)
    await_condition(lambda: pool.busy() == 0 and not lane.queued, 10, "the lane to drain")
    assert peak[0] == 2


def test_lanes_together_use_at_most_the_pools_threads():
    pool = Pool("t", 3)
    gate = threading.Event()
    lanes = [pool.lane(f"l{i}", 16) for i in range(5)]
    for lane in lanes:
        for _ in range(4):
            lane.submit(gate.wait, 10)
    await_condition(lambda: pool.busy() == 3, 5, "three tasks to run")
    assert pool.threads == 3
    gate.set()


def test_idle_pool_threads_end():
    pool = Pool("t", 4, idle_exit=0.05)
    lane = pool.lane("l", 4)
    for _ in range(4):
        lane.submit(time.sleep, 0.01)
    await_condition(lambda: pool.threads == 0, 5, "the idle threads to end")
    lane.submit(lambda: None)  # and work brings one back
    await_condition(lambda: pool.threads == 0, 5, "that one to end too")


def test_a_task_that_raises_leaves_the_pool_serving():
    pool = Pool("t", 1)
    lane = pool.lane("l", 1)
    done = threading.Event()
    lane.submit(lambda: 1 / 0)
    lane.submit(done.set)
    assert done.wait(5)


def test_a_loop_turns_when_woken_and_not_while_idle():
    group = LoopGroup(1)
    turns: list[float] = []
    lp = group.loop("l", lambda: turns.append(time.monotonic()) or None)  # type: ignore[func-returns-value]
    group.start(lp)
    await_condition(lambda: len(turns) == 1, 5, "the first turn")
    time.sleep(0.3)
    assert len(turns) == 1  # None: no timed turn
    lp.set()
    await_condition(lambda: len(turns) == 2, 5, "the turn it was woken for")
    group.stop()


def test_a_loop_turns_again_when_its_turn_said_so():
    group = LoopGroup(1)
    turns: list[float] = []

    def turn() -> float | None:
        turns.append(time.monotonic())
        return 0.1 if len(turns) < 3 else None

    group.start(group.loop("l", turn))
    await_condition(lambda: len(turns) == 3, 5, "three turns")
    assert turns[2] - turns[0] >= 0.2
    group.stop()


def test_a_wake_during_a_turn_brings_another_turn():
    group = LoopGroup(2)
    inside, release = threading.Event(), threading.Event()
    turns = [0]

    def turn() -> float | None:
        turns[0] += 1
        if turns[0] == 1:
            inside.set()
            release.wait(5)
        return None

    lp = group.loop("l", turn)
    group.start(lp)
    assert inside.wait(5)
    lp.set()  # while the first turn runs: it must not be lost, nor run alongside
    release.set()
    await_condition(lambda: turns[0] == 2, 5, "the second turn")
    group.stop()


def _config(tmp_path: Path, global_yaml: str, *workers: int) -> Path:
    (tmp_path / "folders.d").mkdir()
    (tmp_path / "tree").mkdir()
    (tmp_path / "syncd.yaml").write_text("state_dir: state\n" + global_yaml)
    for i, w in enumerate(workers):
        (tmp_path / "folders.d" / f"f{i}.yaml").write_text(
            f"path: {tmp_path / 'tree'}\nbucket: bkt\nprefix: p{i}/\nworkers: {w}\n")
    return tmp_path / "syncd.yaml"


def test_the_shared_transfer_threads_default_to_the_largest_folder_workers(tmp_path):
    assert load_config(_config(tmp_path, "", 4, 24, 8)).transfer_threads() == 24


def test_max_workers_sets_the_shared_transfer_threads(tmp_path):
    assert load_config(_config(tmp_path, "max_workers: 6\n", 4, 24)).transfer_threads() == 6


def test_max_workers_must_be_a_whole_number_from_1(tmp_path):
    with pytest.raises(ConfigError, match="max_workers.*expected a whole number from 1 to 1024"):
        load_config(_config(tmp_path, "max_workers: 0\n", 4))
