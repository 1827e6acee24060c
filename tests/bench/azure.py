"""The Azure scenario: initial syncs into Azure Blob Storage (a local Azurite), syncd against
``rclone sync`` with its azureblob backend, same data, same run (``--scenarios azure``).

Not in the default scenario list: it needs Node (Azurite comes from npm, installed by
scripts/venv.sh or on first use into build/node). Verification lists the container and reads
20 sampled blobs, as the S3 scenarios do with the bucket.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from tests.support.azurite import AzuriteServer, start_azurite
from tests.support.daemon import Syncd

from .core import PREFIX, SYNCD, Bench, Dataset, PeerRunner, Runner, Sample, SyncdRunner, make_dataset, scenario
from .peers import Target
from .scenarios import make_large_file

KiB = 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
SAMPLED = 20


class AzureSyncdRunner(SyncdRunner):
    """syncd with ``store: azure``, credentials from AZURE_STORAGE_CONNECTION_STRING."""

    def __init__(self, home: Path, src: Path, container: str, server: AzuriteServer, concurrency: int) -> None:
        defaults = {"store": "azure", "endpoint_url": server.endpoint, "workers": concurrency}
        self.daemon = Syncd(home, server.endpoint, "", "", store="azure", extra_env=server.env(),
                            global_settings={"log": {"level": "warning", "format": "logfmt"}, "defaults": defaults})
        self.daemon.add_folder("bench", src, container, prefix=PREFIX)


def _rclone(bench: Bench, src: Path, container: str, server: AzuriteServer) -> Runner:
    peer = bench.peers["rclone"]
    c = str(bench.options.concurrency)
    runner = PeerRunner(peer, src, Target(server.endpoint, container, PREFIX, "", "", bench.options.concurrency,
                                          bench.scratch(f"cfg-{container}")))
    # The azureblob backend, configured from the environment; --checksum compares the listing's
    # Content-MD5 instead of reading each blob's mtime metadata.
    runner.cmd = [peer.exe, "--config", "/dev/null", "sync", str(src), f"azb:{container}/{PREFIX}",
                  "--transfers", c, "--checkers", c, "--fast-list", "--checksum"]
    runner.env = {**os.environ, "RCLONE_CONFIG_AZB_TYPE": "azureblob", "RCLONE_CONFIG_AZB_ACCOUNT": server.account,
                  "RCLONE_CONFIG_AZB_KEY": server.account_key, "RCLONE_CONFIG_AZB_ENDPOINT": server.endpoint}
    return runner


def _verify(service: Any, container: str, dataset: Dataset) -> str | None:
    """Exactly the dataset's keys and sizes under PREFIX, and the bytes of 20 sampled blobs."""
    client = service.get_container_client(container)
    listed = {b.name[len(PREFIX):]: int(b.size) for b in client.list_blobs(name_starts_with=PREFIX)
              if not b.name[len(PREFIX):].startswith((".syncd/", ".syncd-trash/"))}
    if listed != dataset.files:
        missing = sorted(set(dataset.files) - set(listed))[:5]
        extra = sorted(set(listed) - set(dataset.files))[:5]
        return f"container differs: missing {missing}, extra {extra}"
    for rel in random.Random(0).sample(sorted(dataset.files), min(SAMPLED, len(dataset.files))):
        digest = hashlib.sha256()
        for chunk in client.download_blob(PREFIX + rel).chunks():
            digest.update(chunk)
        local = hashlib.sha256((dataset.root / rel).read_bytes()).hexdigest()
        if digest.hexdigest() != local:
            return f"{rel}: content differs"
    return None


@scenario("azure", "initial sync into Azure Blob Storage (Azurite): 5,000 files of 1–64 KiB, and one 1 GiB file; "
                   "syncd vs rclone's azureblob backend")
def azure(bench: Bench) -> None:
    from azure.storage.blob import BlobServiceClient

    server = start_azurite(bench.scratch("azurite"))
    bench.on_exit("azurite", server.stop)
    service = BlobServiceClient.from_connection_string(server.connection_string)
    tools = [SYNCD] + (["rclone"] if "rclone" in bench.peers else [])
    files = bench.size(5_000, 1_000)
    small = make_dataset(bench.scratch("azure-small"), files=files, dirs=max(1, files // 50), min_size=1 * KiB,
                         max_size=64 * KiB, seed=1)
    size = bench.size(GiB, 256 * MiB)
    large = make_large_file(bench.scratch("azure-large"), size)
    for label, ds, metric in (("small", small, f"Azure: time to synced ({files:,} files)"),
                              ("large", large, f"Azure: time to synced (one {size / GiB:g} GiB file)")):
        for rep in range(bench.reps):
            for tool in bench.order(rep, tools):
                container = f"c{rep}-{label}-{tool}".lower()[:63]
                service.create_container(container)
                runner: Runner
                if tool == SYNCD:
                    runner = AzureSyncdRunner(bench.scratch(f"syncd-{container}"), ds.root, container, server,
                                              bench.options.concurrency)
                    bench.on_exit(f"syncd for {container}", runner.close)
                else:
                    runner = _rclone(bench, ds.root, container, server)
                result = runner.run(bench.timeout_for(len(ds.files)))
                problem = result.error or _verify(service, container, ds)
                sample = bench.add(Sample("azure", metric, "s", tool, rep, result.seconds, problem is None,
                                          problem or "", dict(result.info)))
                if label == "large" and sample.ok and sample.value:
                    sample.extra["MB/s"] = size / 1e6 / sample.value
