"""Session fixtures: one simulated multi-node Ray cluster, tiny models, the shared data."""
from __future__ import annotations

import os
from pathlib import Path

# Before ray/vllm import: quiet, local-only, no tokenizer thread pools fighting 2 cores.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MB = 2**20


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mgsm_dir(shared_data: Path) -> Path:
    return shared_data / "mgsm"


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    from bestofl.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "lm", kind="lm")


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    from bestofl.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "rm", kind="rm")


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1 with the bucket `bestofl-test`;
    plain s3:// URIs reach it through the standard AWS_* variables (set for the rest of
    the session), as they reach MinIO/Ceph/R2 on a cluster. Yields those variables, for
    Ray actors (started before them) to get as env_vars."""
    import socket

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir("bestofl-test")
        yield env
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's one Ray instance: a head and two worker nodes on this machine.

    Worker nodes carry a `sim_node` resource so a test can place one actor or training
    worker per node; the head has spare CPUs so Data actors plus tasks never starve.
    """
    import ray
    from ray.cluster_utils import Cluster

    for attempt in range(3):
        # On a loaded 2-core box a raylet can miss its start-up deadline: start again.
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=4, object_store_memory=256 * MB, include_dashboard=False)
            for _ in range(2):
                cluster.add_node(num_cpus=2, object_store_memory=128 * MB, resources={"sim_node": 1})
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            break
        except Exception:
            ray.shutdown()
            cluster.shutdown()
            if attempt == 2:
                raise
    yield cluster
    ray.shutdown()
    cluster.shutdown()
