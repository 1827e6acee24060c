"""Quick-start demo: a local SeaweedFS S3 server, a demo folder, and syncd mirroring it.

Run through scripts/demo.sh (``python -m tests.support.demo`` from the repository root), so
it starts SeaweedFS with the same launcher the tests use. ``--azure`` mirrors into Azure Blob
Storage instead: a local Azurite (installed by scripts/venv.sh) and `store: azure`.
Everything lives in ./demo (delete it to start over).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.support.azurite import AzuriteServer, BlobClient, start_azurite
from tests.support.seaweed import SeaweedServer, start_seaweed

ROOT = Path(__file__).resolve().parents[2]

BUCKET = "demo-bucket"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo.sh")
    parser.add_argument("--azure", action="store_true", help="mirror into a local Azurite (Azure Blob Storage)")
    azure = parser.parse_args(argv).azure
    demo = ROOT / "demo"
    folder = demo / "folder"
    (demo / "folders.d").mkdir(parents=True, exist_ok=True)
    folder.mkdir(exist_ok=True)
    data_dir = demo / ("azurite" if azure else "seaweedfs")
    if data_dir.exists():
        subprocess.run(["rm", "-rf", str(data_dir)], check=True)  # SeaweedFS wants a fresh data dir
    data_dir.mkdir()
    server: SeaweedServer | AzuriteServer
    if azure:
        print("starting Azurite (Azure Blob Storage on 127.0.0.1) ...", flush=True)
        server = start_azurite(data_dir)
        server.create_container(BUCKET)
        defaults = {"store": "azure", "endpoint_url": server.endpoint}
        env = dict(os.environ, **server.env())
        url = f"azure://{BUCKET}/"
    else:
        print("starting SeaweedFS (S3 on 127.0.0.1) ...", flush=True)
        server = start_seaweed(data_dir)
        server.client().create_bucket(Bucket=BUCKET)
        defaults = {"endpoint_url": server.endpoint, "region": "us-east-1"}
        env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
        url = f"s3://{BUCKET}/"
    try:
        (demo / "syncd.yaml").write_text(yaml.safe_dump({
            "state_dir": str(demo / "state-azure" if azure else demo / "state"), "socket": str(demo / "syncd.sock"),
            "folders_dir": "folders.d", "log": {"level": "debug", "format": "console"}, "defaults": defaults}))
        (demo / "folders.d" / "demo.yaml").write_text(yaml.safe_dump({"path": str(folder), "bucket": BUCKET}))
        for name, text in {"hello.txt": "Hello from syncd!\n", "notes/today.md": "# Today\n- try syncd\n"}.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists():
                (folder / name).write_text(text)
        syncd = [str(Path(sys.executable).with_name("syncd")), "run", "-c", str(demo / "syncd.yaml")]
        print(f"""
syncd is mirroring {folder}
            into {url} at {server.endpoint}

Try, in another terminal:
    echo hi > demo/folder/new.txt; mv demo/folder/notes demo/folder/notes-old; rm demo/folder/hello.txt
    .venv/bin/syncd status -c demo/syncd.yaml
    .venv/bin/syncd wait -c demo/syncd.yaml
The bucket's contents are printed below whenever they change. Ctrl-C stops everything.
""", flush=True)
        stop = threading.Event()
        client = BlobClient(server) if isinstance(server, AzuriteServer) else server.client()
        threading.Thread(target=_show_bucket, args=(client, url, stop), daemon=True).start()
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


def _show_bucket(client: Any, url: str, stop: threading.Event) -> None:
    """Print the bucket's listing whenever it changes (``client``: boto3's, or BlobClient)."""
    shown: list[tuple[str, int]] | None = None
    while not stop.wait(1.0):
        try:
            objects = [(o["Key"], o["Size"]) for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET) for o in page.get("Contents", [])]
        except Exception as exc:  # the demo server is shutting down
            print(f"[bucket] cannot list: {exc}", flush=True)
            continue
        if objects != shown:
            shown = objects
            listing = "\n".join(f"    {size:>8}  {key}" for key, size in objects) or "    (empty)"
            print(f"[bucket {url} now holds]\n{listing}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
