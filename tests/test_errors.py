"""Real errors: bad config stops the daemon with a precise message; a broken folder
(missing bucket, bad credentials) is reported in status while the others keep syncing."""

from __future__ import annotations

from pathlib import Path

from .support.daemon import Syncd, assert_mirror, await_condition
from .support.fixtures import both_stores


def _check(syncd: Syncd, *args: str) -> tuple[int, str]:
    r = syncd.cli("check-config", *args)
    return r.returncode, r.stderr + r.stdout


def test_unknown_key_names_file_and_key_with_a_did_you_mean(syncd, tree, bucket):
    file = syncd.add_folder("photos", tree, bucket, setle="1s")
    code, out = _check(syncd)
    assert code == 78
    assert str(file) in out and "'setle'" in out and "did you mean 'settle'" in out
    run = syncd.cli("run", timeout=30)
    assert run.returncode == 78 and "'setle'" in run.stderr


def test_wrong_types_missing_keys_and_missing_path_are_all_reported(syncd, tmp_path, bucket):
    a = syncd.add_folder("a", tmp_path / "does-not-exist", bucket, workers="many", settle="soon",
                         settle_closed=-0.5, hot_window="often")
    b = syncd.home / "folders.d" / "b.yaml"
    b.write_text("prefix: x/\n")
    code, out = _check(syncd)
    assert code == 78
    assert f"{a}: key 'path'" in out and "does not exist" in out
    assert f"{a}: key 'workers'" in out and "whole number" in out
    assert f"{a}: key 'settle'" in out and "duration" in out
    assert f"{a}: key 'settle_closed'" in out and "negative" in out
    assert f"{a}: key 'hot_window'" in out and "duration" in out
    assert f"{b}: key 'path': required" in out and f"{b}: key 'bucket': required" in out


def test_global_file_errors_name_the_global_file(syncd, tree, bucket):
    syncd.add_folder("a", tree, bucket)
    syncd.write_global(log={"level": "loud"}, defaults={"workrs": 4})
    code, out = _check(syncd)
    assert code == 78
    assert f"{syncd.config}: key 'log.level'" in out and "debug, info, warning, error" in out
    assert f"{syncd.config}: key 'defaults.workrs'" in out and "did you mean 'workers'" in out


def test_valid_config_passes_check_config(syncd, tree, bucket):
    syncd.add_folder("a", tree, bucket, prefix="photos", settle="500ms", multipart_threshold="64MiB")
    code, out = _check(syncd)
    assert code == 0, out
    assert "s3://" + bucket + "/photos/" in out


@both_stores
def test_missing_bucket_is_a_folder_error_while_other_folders_sync(syncd, tmp_path, s3, bucket):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    syncd.add_folder("good", good, bucket)
    syncd.add_folder("bad", bad, "no-such-bucket-here")
    (good / "a.txt").write_text("a")
    (bad / "b.txt").write_text("b")
    syncd.start()
    status = await_condition(lambda: (f := syncd.folder_status("bad"))["state"] == "error" and f, 30,
                             "the folder with a missing bucket to report an error")
    assert "no-such-bucket-here" in status["last_error"] and "does not exist" in status["last_error"]
    # Its change is kept, not dropped: the startup walk journals it once the first probe has
    # failed (a new folder first waits for the store, to adopt what the bucket holds).
    await_condition(lambda: syncd.folder_status("bad")["pending"] == 1, 30, "the change to be journaled")
    syncd.cli("wait", "good", "--timeout", "30")
    (good / "later.txt").write_text("still syncing")
    assert syncd.cli("wait", "good", "--timeout", "30").returncode == 0
    assert_mirror(s3, bucket, good)


@both_stores
def test_check_config_names_the_folder_whose_bucket_is_missing_and_reports_the_others(syncd, tmp_path, bucket):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    syncd.add_folder("good", good, bucket)
    syncd.add_folder("bad", bad, "no-such-bucket-here")
    r = syncd.cli("check-config")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "folder 'bad'" in r.stderr and "'no-such-bucket-here' does not exist" in r.stderr
    assert f"good: {good} -> {syncd.store}://{bucket}/: reachable" in r.stdout
    assert "'good'" not in r.stderr
    assert syncd.cli("check-config", "--offline").returncode == 0


def test_bad_credentials_are_a_folder_error_naming_the_fix(syncd, tmp_path, s3, bucket, s3_server):
    creds = tmp_path / "credentials"
    creds.write_text(f"[good]\naws_access_key_id = {s3_server.access_key}\n"
                     f"aws_secret_access_key = {s3_server.secret_key}\n"
                     "[bad]\naws_access_key_id = AKIAWRONGWRONGWRONG1\n"
                     "aws_secret_access_key = wrongwrongwrongwrongwrongwrongwrongwrong\n")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    syncd.add_folder("good", good, bucket, profile="good", prefix="g/")
    syncd.add_folder("bad", bad, bucket, profile="bad", prefix="b/")
    (good / "a.txt").write_text("a")
    (bad / "b.txt").write_text("b")
    syncd.start(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    status = await_condition(lambda: (f := syncd.folder_status("bad"))["state"] == "error" and f, 30,
                             "the folder with bad credentials to report an error")
    assert "credentials" in status["last_error"] or "access denied" in status["last_error"].lower()
    assert syncd.cli("wait", "good", "--timeout", "30").returncode == 0
    assert_mirror(s3, bucket, good, prefix="g/")
    assert "wrongwrongwrongwrong" not in syncd.log()


def test_client_commands_without_a_daemon_exit_3(syncd, tree, bucket):
    syncd.add_folder("a", tree, bucket)
    r = syncd.cli("status")
    assert r.returncode == 3 and "not running" in r.stderr


def test_unknown_folder_is_rejected_with_exit_4(syncd, tree, bucket):
    syncd.add_folder("a", tree, bucket)
    syncd.start()
    r = syncd.cli("pause", "nope")
    assert r.returncode == 4 and "no folder named 'nope'" in r.stderr


def test_refuses_to_replace_a_regular_file_at_the_socket_path(syncd, tree, bucket):
    syncd.add_folder("a", tree, bucket)
    Path(syncd.socket).write_text("not a socket")
    syncd.start(wait_ready=False)
    assert syncd.proc is not None
    assert syncd.proc.wait(30) != 0
    assert Path(syncd.socket).read_text() == "not a socket"
    assert "not a socket" in syncd.log()


def test_access_denied_on_upload_is_parked_with_its_reason(proxied_syncd, s3_proxy, tree, bucket):
    # A bucket policy that denies some keys: the server answers AccessDenied to their PUT only.
    s3_proxy.set_faults(1.0, ["403"], ops=["PutObject"])
    proxied_syncd.add_folder("main", tree, bucket)
    (tree / "a.txt").write_text("a")
    proxied_syncd.start()
    r = proxied_syncd.cli("wait", "--timeout", "60")
    assert r.returncode == 2, (r.returncode, r.stderr)
    status = proxied_syncd.folder_status("main")
    assert status["failed"] == 1
    assert status["failures"][0]["path"] == "a.txt"
    assert "AccessDenied" in status["failures"][0]["error"] and "a.txt" in status["failures"][0]["error"]


def test_read_only_credentials_put_the_folder_in_error_naming_the_owner_marker(syncd, tree, bucket, s3_server,
                                                                                tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[reader]\naws_access_key_id = {s3_server.readonly_access_key}\n"
                     f"aws_secret_access_key = {s3_server.readonly_secret_key}\n")
    syncd.add_folder("main", tree, bucket, profile="reader")  # may read the bucket, not write it
    (tree / "a.txt").write_text("a")
    syncd.start(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    status = await_condition(lambda: (s := syncd.folder_status("main"))["state"] == "error" and s, 60,
                             "the folder in error")
    assert "AccessDenied" in status["last_error"] and ".syncd/owner" in status["last_error"]


def test_throttling_and_server_errors_are_retried_until_the_mirror_converges(proxied_syncd, s3_proxy, tree, s3,
                                                                             bucket):
    s3_proxy.set_faults(0.3, ["503", "500"], ops=["PutObject", "DeleteObjects"], seed=11)
    for i in range(60):
        (tree / f"f{i:02}.txt").write_text(f"file {i}")
    proxied_syncd.add_folder("main", tree, bucket)
    proxied_syncd.start()
    proxied_syncd.wait_idle(180)
    for i in range(0, 60, 3):
        (tree / f"f{i:02}.txt").unlink()
    proxied_syncd.wait_idle(180)
    assert_mirror(s3, bucket, tree)
    injected = s3_proxy.injected()
    assert sum(injected.get("PutObject", {}).values()) >= 5  # faults really happened, and were retried
