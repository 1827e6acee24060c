"""Quick-start demo: a local SeaweedFS S3 server, a demo folder, and syncd mirroring it.

Run through scripts/demo.sh (``python -m tests.support.demo`` from the repository root), so
it starts SeaweedFS with the same launcher the tests use. Everything lives in ./demo (delete
it to start over).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from tests.support.seaweed import SeaweedServer, start_seaweed

ROOT = Path(__file__).resolve().parents[2]

BUCKET = "demo-bucket"


def main() -> int:
    demo = ROOT / "demo"
    folder = demo / "folder"
    (demo / "folders.d").mkdir(parents=True, exist_ok=True)
    folder.mkdir(exist_ok=True)
    weed_dir = demo / "seaweedfs"
    if weed_dir.exists():
        subprocess.run(["rm", "-rf", str(weed_dir)], check=True)  # SeaweedFS wants a fresh data dir
    weed_dir.mkdir()
    print("starting SeaweedFS (S3 on 127.0.0.1) ...", flush=True)
    server = start_seaweed(weed_dir)
    try:
        server.client().create_bucket(Bucket=BUCKET)
        (demo / "syncd.yaml").write_text(yaml.safe_dump({
            "state_dir": str(demo / "state"), "socket": str(demo / "syncd.sock"), "folders_dir": "folders.d",
            "log": {"level": "debug", "format": "console"},
            "defaults": {"endpoint_url": server.endpoint, "region": "us-east-1"}}))
        (demo / "folders.d" / "demo.yaml").write_text(yaml.safe_dump({"path": str(folder), "bucket": BUCKET}))
        for name, text in {"hello.txt": "Hello from syncd!\n", "notes/today.md": "# Today\n- try syncd\n"}.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists():
                (folder / name).write_text(text)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        syncd = [str(Path(sys.executable).with_name("syncd")), "run", "-c", str(demo / "syncd.yaml")]
        print(f"""
syncd is mirroring {folder}
            into s3://{BUCKET}/ at {server.endpoint}

Try, in another terminal:
    echo hi > demo/folder/new.txt; mv demo/folder/notes demo/folder/notes-old; rm demo/folder/hello.txt
    .venv/bin/syncd status -c demo/syncd.yaml
    .venv/bin/syncd wait -c demo/syncd.yaml
The bucket's contents are printed below whenever they change. Ctrl-C stops everything.
""", flush=True)
        stop = threading.Event()
        threading.Thread(target=_show_bucket, args=(server, stop), daemon=True).start()
        proc = subprocess.Popen(syncd, env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            return proc.wait()
        finally:
            stop.set()
    finally:
        server.stop()


def _show_bucket(server: SeaweedServer, stop: threading.Event) -> None:
    s3 = server.client()
    shown: list[tuple[str, int]] | None = None
    while not stop.wait(1.0):
        try:
            objects = [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        except Exception as exc:  # the demo server is shutting down
            print(f"[bucket] cannot list: {exc}", flush=True)
            continue
        if objects != shown:
            shown = objects
            listing = "\n".join(f"    {size:>8}  {key}" for key, size in objects) or "    (empty)"
            print(f"[bucket s3://{BUCKET}/ now holds]\n{listing}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
