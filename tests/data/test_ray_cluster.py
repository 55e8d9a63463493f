"""The shard job on a real two-node Ray cluster (issue 14, part 1).

Two "machines" on this one: network namespaces joined by a veth pair with private addresses
(tests/helpers.py ``NetnsPair``), each with its own /tmp and /dev/shm, so the nodes share no
scratch disk and can reach nothing but each other. Host a runs the moto S3 server, the Ray head
(``ray start --head``) and the driver (``pvq data shard``); host b runs a second Ray node (``ray
start --address``). Sources and shards live on S3 only.

Checked: the cluster run writes the same dataset as a run on one machine (keys, buckets, splits,
frames, sample hashes, tar sha256 from the index and recomputed from the objects), with sources
processed on both nodes (``sources_by_node`` in the job's stats names both node ids); then, in the
middle of a second job, the worker node alone (every process in its namespace) is killed with
SIGKILL: the job finishes on the head by itself (or, had it failed, a rerun would: either way the
same dataset); then the worker node is started again and, in the middle of a third job, the worker
node and the job's driver are killed with SIGKILL, and the job is run again on the head (taking
over the killed driver's S3 lock): the same dataset, each sample once, the sources the killed run
had finished taken from the S3 work cache, nothing left in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CONFIGS, NetnsPair

pytestmark = pytest.mark.slow
PVQ = str(Path(sys.executable).with_name("pvq"))
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, WORKER = NetnsPair.ADDRS
S3 = f"http://{HEAD}:9000"
RAY_ADDRESS = f"{HEAD}:6379"
SOURCES = ["s3://raw/demo/webvid.csv", "s3://raw/demo/captions_demo.json"]
STORE = str(200 * 2**20)  # object store bytes per node (Ray's minimum is 75 MiB)

UPLOAD = r'''
import sys
from pathlib import Path
import boto3
s3 = boto3.client("s3")
for b in ("raw", "shards"):
    s3.create_bucket(Bucket=b)
root = Path(sys.argv[1])
for p in sorted(root.rglob("*")):
    if p.is_file():
        s3.upload_file(str(p), "raw", f"demo/{p.relative_to(root)}")
'''

# the dataset as the loader and a user see it, per output prefix, plus what is left beside it
DUMP = r'''
import hashlib, json, sys
from data_prep import manifest, storage
out = {}
for prefix in sys.argv[1:]:
    uri = f"s3://shards/{prefix}"
    v = manifest.read_version(uri)
    out[prefix] = {
        "samples": [[s[k] for k in ("key", "bucket", "split", "frames", "length", "start", "sha256", "shard")]
                    for s in v["samples"]],
        "shards": [[r["shard"], r["count"], r["sha256"]] for r in v["shards"]],
        "tar_sha256": {r["shard"]: hashlib.sha256(storage.read_bytes(f"{uri}/{r['shard']}")).hexdigest()
                       for r in v["shards"]},
        "errors": sorted([e["source_id"], e["reason"]] for e in v["errors"]),
        "stats": v["stats"],
        "left": [f for f in storage.find(uri) if "/_work/" in f or f.endswith("/.lock") or ".tmp-" in f],
    }
print(json.dumps(out))
'''

NODES = r'''
import json, sys, time, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
gone = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else set()  # ids of nodes killed before
for _ in range(300):
    alive = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in gone}
    if len(alive) >= int(sys.argv[2]):
        break
    time.sleep(0.2)
print(json.dumps(alive))
'''

WAIT_WORK = r'''
import sys, time
import s3fs
fs = s3fs.S3FileSystem(use_listings_cache=False)
for _ in range(1200):
    try:
        done = [p for p in fs.find(sys.argv[1]) if p.endswith("/meta.json")]
    except FileNotFoundError:
        done = []
    if len(done) >= int(sys.argv[2]):
        print(len(done))
        break
    time.sleep(0.1)
'''


def _env() -> dict[str, str]:
    loop = "127.0.0.1,localhost," + ",".join(NetnsPair.ADDRS)
    return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": S3, "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": loop, "no_proxy": loop, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
            "PYTHONWARNINGS": "ignore", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}  # Linux: multi-node on


class Cluster:
    """The two hosts, the background processes on them, and ways to run commands there."""

    def __init__(self, pair: NetnsPair, root: Path):
        self.pair, self.root, self.procs = pair, root, []
        self.disk = {0: root / "host-a", 1: root / "host-b"}

    def start(self, host: int, argv: list[str], log: str, disk: bool = True) -> subprocess.Popen:
        with open(self.root / f"{log}.log", "w") as f:
            p = subprocess.Popen(self.pair.argv(host, argv, self.disk[host] if disk else None), env=_env(),
                                 stdout=f, stderr=subprocess.STDOUT, cwd=Path(CONFIGS).parent, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, host: int, argv: list[str], timeout: float, disk: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(self.pair.argv(host, argv, self.disk[host] if disk else None), env=_env(),
                             capture_output=True, text=True, timeout=timeout, cwd=Path(CONFIGS).parent)
        return res

    def python(self, code: str, *args: str, timeout: float = 120, disk: bool = True) -> str:
        res = self.run(0, [sys.executable, "-c", code, *args], timeout, disk)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        return res.stdout

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text()[-4000:] if p.exists() else ""


def _shard_argv(out: str, *sets: str) -> list[str]:
    argv = [PVQ, "data", "shard", "--out", f"s3://shards/{out}", "--config", str(CONFIGS / "shard" / "demo.yaml"),
            "--set", "ray.sources_per_task=1"]
    for s in SOURCES:
        argv += ["--source", s]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.fixture
def cluster(netns_pair, demo, tmp_path):
    c = Cluster(netns_pair, tmp_path)
    c.start(0, [sys.executable, "-m", "moto.server", "-H", HEAD, "-p", "9000"], "moto", disk=False)
    for _ in range(100):  # moto answers on the private address
        if c.run(0, ["bash", "-c", f"exec 3<>/dev/tcp/{HEAD}/9000"], 10, disk=False).returncode == 0:
            break
        time.sleep(0.1)
    c.python(UPLOAD, str(demo.root), disk=False)
    yield c
    for host in (0, 1):  # every process of both hosts (netns_pair then removes the namespaces)
        c.pair.kill(host)
    for p in c.procs:
        p.wait(timeout=20)


RAY_NODE = ["--num-cpus=1", f"--object-store-memory={STORE}", "--disable-usage-stats", "--block"]


def _start_ray(c: Cluster) -> dict[str, str]:
    c.start(0, [RAY, "start", "--head", f"--node-ip-address={HEAD}", "--port=6379", "--include-dashboard=false",
                *RAY_NODE], "ray-head")
    return _start_worker(c, "ray-worker")


def _start_worker(c: Cluster, log: str, gone: tuple[str, ...] = ()) -> dict[str, str]:
    """Start the Ray node on host b; the alive nodes by address once both are up (``gone``: ids of
    nodes killed before, which the head may still count as alive for a while)."""
    c.start(1, [RAY, "start", f"--address={RAY_ADDRESS}", f"--node-ip-address={WORKER}", *RAY_NODE], log)
    nodes = json.loads(c.python(NODES, RAY_ADDRESS, "2", ",".join(gone), timeout=180).strip().splitlines()[-1])
    assert set(nodes) == {HEAD, WORKER}, (nodes, c.log("ray-head"), c.log(log))
    return nodes


def test_shard_on_two_node_ray_cluster_matches_one_machine_and_survives_a_lost_node(cluster):
    c = cluster
    # one machine: the job runs its own executor on host a (for a job this small the local process pool)
    local = c.run(0, _shard_argv("local"), timeout=300)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-5000:]
    nodes = _start_ray(c)

    # the cluster: the same job joins the head; tasks spread over both nodes
    res = c.run(0, _shard_argv("cluster", f"ray.address={RAY_ADDRESS}"), timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:] + c.log("ray-worker")

    # lose the worker node alone (kill -9 of every process on host b) in the middle of a job: Ray
    # re-runs its unfinished tasks on the head and the job finishes by itself; if it failed, the
    # issue's recovery is a rerun, and either way the dataset must be the same
    job = c.start(0, _shard_argv("lost", f"ray.address={RAY_ADDRESS}"), "lost-job")
    lost_after = c.python(WAIT_WORK, "shards/lost/_work", "2", timeout=300).strip()
    assert lost_after, c.log("lost-job")
    lost = c.pair.kill(1)
    assert lost > 0 and not c.pair.pids(1)
    lost_rc = job.wait(timeout=600)
    if lost_rc != 0:
        rerun = c.run(0, _shard_argv("lost", f"ray.address={RAY_ADDRESS}"), timeout=300)
        assert rerun.returncode == 0, c.log("lost-job") + rerun.stdout[-3000:] + rerun.stderr[-5000:]
    print(f"\nkilled the worker node alone ({lost} processes) after {lost_after} sources: the job "
          + ("finished by itself" if lost_rc == 0 else f"failed (rc {lost_rc}); a rerun finished it"))
    nodes_again = _start_worker(c, "ray-worker-again", gone=(nodes[WORKER],))
    assert nodes_again[HEAD] == nodes[HEAD] and nodes_again[WORKER] != nodes[WORKER]  # a new node on host b

    # lose the worker node in the middle of another job, with the job's driver (kill -9 of both),
    # then run the job again on the head alone
    job = c.start(0, _shard_argv("killed", f"ray.address={RAY_ADDRESS}"), "killed-job")
    done = c.python(WAIT_WORK, "shards/killed/_work", "4", timeout=300)
    assert done.strip(), c.log("killed-job")
    os.killpg(job.pid, signal.SIGKILL)
    killed = c.pair.kill(1)
    assert killed > 0 and not c.pair.pids(1) and job.wait(timeout=60) != 0
    # the killed driver left its S3 lock; the rerun on its host, where its process is gone, takes it over
    rerun = c.run(0, _shard_argv("killed", f"ray.address={RAY_ADDRESS}"), timeout=300)
    said = " ".join((rerun.stdout + rerun.stderr).split())
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert "s3://shards/killed: took over the lock of a killed shard job (pid " in said, said[-3000:]

    got = json.loads(c.python(DUMP, "local", "cluster", "lost", "killed").strip().splitlines()[-1])
    ref = got["local"]
    assert len(ref["samples"]) >= 5 and ref["errors"]  # clips of every good source, the broken ones as errors
    assert ref["tar_sha256"] == {s: h for s, _, h in ref["shards"]}  # the index's hashes are the objects'
    for name in ("cluster", "lost", "killed"):
        ds = got[name]
        for key in ("samples", "shards", "tar_sha256", "errors"):
            assert ds[key] == ref[key], (name, key)
        assert len({s[0] for s in ds["samples"]}) == len(ds["samples"])  # each sample once
        assert ds["left"] == []  # no work cache, lock or temporary object left on S3
    by_node = got["cluster"]["stats"]["sources_by_node"]
    assert set(by_node) == set(nodes.values()), (by_node, nodes)  # both nodes processed sources
    assert sum(by_node.values()) == got["cluster"]["stats"]["sources_processed"]
    assert not set(got["local"]["stats"]["sources_by_node"]) & set(nodes.values())  # its own executor
    if lost_rc == 0:  # the job that lost its worker node counted every source once
        assert sum(got["lost"]["stats"]["sources_by_node"].values()) == got["lost"]["stats"]["sources_processed"]
    # the rerun took the sources the killed run had finished (on either node) from the S3 work
    # cache and processed the rest on the head, the only node left
    stats = got["killed"]["stats"]
    print(f"killed the driver and the worker node ({killed} processes) after {done.strip()} sources; "
          f"rerun: sources_by_node {stats['sources_by_node']}, reused {stats['sources_reused']}")
    assert stats["sources_reused"] >= 4 and set(stats["sources_by_node"]) == {nodes[HEAD]}
    assert stats["sources_by_node"][nodes[HEAD]] == stats["sources_processed"]
