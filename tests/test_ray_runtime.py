"""Which Ray a command uses: `ray.address` null joins the running cluster (RAY_ADDRESS, or the
one started on this node), else starts a local one; `local` always starts a private one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bestofl.ray_runtime import cluster_address

# A command's Ray start-up, as every pipeline does it, then what the driver sees.
DRIVER = """
import json, os, sys, ray
from bestofl.config import RayConfig
from bestofl.ray_runtime import init_ray
init_ray(RayConfig(address=sys.argv[1] or None, num_cpus=1, object_store_memory=80 * 2**20))
print(json.dumps({"job_id": ray.get_runtime_context().get_job_id(), "pid": os.getpid()}))
"""


def test_address_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # this node's Ray records live here
    assert cluster_address(None) == (None, "no RAY_ADDRESS and no cluster started on this node")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a cluster that is gone
    address, why = cluster_address(None)
    assert address is None and why.endswith("names 127.0.0.1:9, which is not running")
    assert cluster_address("10.0.0.1:6379") == ("10.0.0.1:6379", "ray.address")
    assert cluster_address("local") == (None, "ray.address=local")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # what Ray sets inside a job
    assert cluster_address(None) == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert cluster_address("local") == (None, "ray.address=local")


def _driver(address: str, ray_head, **env: str) -> tuple[dict, list[str]]:
    # A shell on the head's node: no RAY_ADDRESS, Ray's default auth mode.
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", DRIVER, address], capture_output=True, text=True,
                          env={**base, "RAY_TMPDIR": ray_head.tmpdir, **env}, timeout=180)
    if done.returncode:
        return {}, done.stderr.strip().splitlines()[-1:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("bestofl:")]
    return json.loads(done.stdout.strip().splitlines()[-1]), ours


def test_a_command_on_a_cluster_node_joins_it(ray_head):
    from ray.job_submission import JobSubmissionClient

    from bestofl.submit import auth_headers

    seen, lines = _driver("", ray_head)
    assert lines == [f"bestofl: joined Ray cluster at {ray_head.address} (the cluster running on "
                     f"this node): 1 node(s), 2 CPUs, 0 GPUs"]
    # The driver is one of the head's jobs (token auth on: the join sent the token).
    jobs = JobSubmissionClient(ray_head.url, headers=auth_headers()).list_jobs()
    (job,) = [j for j in jobs if j.driver_info and j.driver_info.pid == str(seen["pid"])]
    assert job.job_id == seen["job_id"] and job.type.value == "DRIVER"


@pytest.mark.slow
def test_local_starts_a_private_instance_beside_the_cluster(ray_head):
    from ray.job_submission import JobSubmissionClient

    from bestofl.submit import auth_headers

    seen, lines = _driver("local", ray_head)
    assert lines == ["bestofl: started a local Ray instance (ray.address=local): 1 CPUs"]
    jobs = JobSubmissionClient(ray_head.url, headers=auth_headers()).list_jobs()
    assert str(seen["pid"]) not in {j.driver_info.pid for j in jobs if j.driver_info}


def test_a_given_address_with_token_auth(ray_head):
    """Ray sends its token to an address it was given only with RAY_AUTH_MODE=token: without
    it the refusal says so; with it the command joins."""
    seen, lines = _driver(ray_head.address, ray_head)
    assert not seen and "uses token authentication: set RAY_AUTH_MODE=token" in lines[0]
    seen, lines = _driver(ray_head.address, ray_head, RAY_AUTH_MODE="token")
    assert seen and lines[0].startswith(f"bestofl: joined Ray cluster at {ray_head.address} (ray.address)")
