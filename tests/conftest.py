"""Session fixtures: one simulated multi-node Ray cluster, one `ray start --head` head with
the Jobs API, tiny models, the shared data."""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Before ray/vllm import: quiet, no tokenizer thread pools fighting 2 cores.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
# Ray Train's controller looks at its workers every 2 s: a fit's start, each checkpoint
# handed over and its end wait for that look. The fits here last seconds, so the wait
# dominates them; a shorter interval changes when things happen, not what happens.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray's authentication stays at its default (RAY_AUTH_MODE unset). A Ray token exists, as on
# any machine where `ray.init()` ran once (it writes ~/.ray/auth_token): `ray start --head`
# then turns token auth on. Ray's RAY_AUTH_TOKEN_PATH puts this session's token beside the
# test run instead of in the user's home.
if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
    _token_dir = tempfile.mkdtemp(prefix="bestofl-auth-")
    atexit.register(shutil.rmtree, _token_dir, True)
    (Path(_token_dir) / "auth_token").write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(_token_dir) / "auth_token")

import pytest
# Ray reads its auth mode once, at import. `cli.main` sets it for a local instance only in a
# process that has not loaded Ray yet (a fresh `bestofl` process): an in-process call must
# not be the first to load it here, where every test shares the session's cluster.
import ray  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MB = 2**20


@pytest.fixture(autouse=True)
def _environment_restored():
    """`cli.main` sets process-wide switches (the quiet defaults, --verbose, RAY_AUTH_MODE):
    a test that calls it in this process must not change what later tests, and the commands
    they start, see. Session fixtures (set up before this one) keep what they set."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def fresh_wandb():
    """wandb keeps the settings of its first run (WANDB_DIR, the mode) in a process-wide
    singleton: a test that logs to W&B starts from none and leaves none."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


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
def rm_on_s3(s3_server, tiny_rm) -> str:
    """The tiny reward model on the local S3 server, beside a pickled file that must never
    be fetched (a URI model is copied safetensors only): its URI."""
    import pyarrow.fs as pafs

    uri = "s3://bestofl-test/models/rm"
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(tiny_rm), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/pytorch_model.bin") as f:
        f.write(b"not to be unpickled")
    return uri


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


# ------------------------------------------------------------------ a `ray start --head` head
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RayHead:
    url: str        # dashboard / Jobs API, what `bestofl submit --address` takes
    address: str    # GCS host:port, what `ray.init(address=...)` takes
    tmpdir: str     # RAY_TMPDIR of the head: a process with it finds the head as "this node's cluster"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_processes(sid: int) -> list:
    import psutil

    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                procs.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return procs


def _stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM: `ray start --block` drains and stops what it started; then kill stragglers of
    its session (and only those). Never `ray stop`: it stops every Ray on the machine."""
    import psutil

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    for p in _own_processes(proc.pid):
        try:
            p.kill()
        except psutil.Error:
            pass


def _start_head(tmpdir: str) -> tuple[subprocess.Popen, RayHead]:
    import psutil

    ports = {opt: _free_port() for opt in (
        "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "node-manager-port", "object-manager-port")}
    # A user's shell: no RAY_ADDRESS, auth mode unset. The head's PATH decides which `python`
    # a job's entrypoint runs: this venv's, as when Ray is started from an activated venv.
    # RAY_TMPDIR keeps its session files (and its ray_current_cluster record) to itself.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_TMPDIR=tmpdir)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
           f"--object-store-memory={100 * 2**20}", "--disable-usage-stats",
           *[f"--{opt}={port}" for opt, port in ports.items()]]
    with open(Path(tmpdir) / "ray-start.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # Start the head ahead of whatever else loads the box: the raylet gives the dashboard
    # agent a fixed 15 s (Ray 2.60) and dies otherwise. Its processes inherit this
    # priority; the fixture resets it once the head is ready.
    try:
        psutil.Process(proc.pid).nice(-10)
    except psutil.Error:  # not permitted: normal priority
        pass
    return proc, RayHead(f"http://127.0.0.1:{ports['dashboard-port']}",
                         f"127.0.0.1:{ports['port']}", tmpdir)


def _wait_ready(proc: subprocess.Popen, head: RayHead, timeout: float = 180) -> bool:
    """True once the Jobs API has run a job; False if the head died (see ray-start.log)."""
    from ray.job_submission import JobSubmissionClient

    from bestofl.submit import auth_headers

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            client = JobSubmissionClient(head.url, headers=auth_headers())
            job = client.submit_job(entrypoint="true")  # the job agent comes up after the dashboard
            while not client.get_job_status(job).is_terminal():
                time.sleep(0.5)
            return True
        except Exception:
            time.sleep(1)
    return False


@pytest.fixture(scope="session")
def ray_head():
    """A real `ray start --head` (dashboard, Jobs API, token auth at Ray's default) on free
    ports, for `bestofl submit` and for joining a running cluster; stopped at the end.

    On a loaded 2-core box the raylet can give up waiting for the dashboard agent (a fixed
    15 s in Ray 2.60) and the head dies at start: try again, up to three times.
    """
    import psutil

    for attempt in range(3):
        tmpdir = tempfile.mkdtemp(prefix="bol-", dir="/tmp")  # short: Unix socket paths cap at 107 chars
        proc, head = _start_head(tmpdir)
        if _wait_ready(proc, head):
            for p in _own_processes(proc.pid):
                try:
                    p.nice(0)
                except psutil.Error:
                    pass
            # The GCS address as Ray recorded it for this node (this host's IP, not 127.0.0.1).
            recorded = (Path(tmpdir) / "ray" / "ray_current_cluster").read_text().strip()
            head = RayHead(head.url, recorded, tmpdir)
            break
        _stop_head(proc)
        log = (Path(tmpdir) / "ray-start.log").read_text()
        shutil.rmtree(tmpdir, ignore_errors=True)
        if attempt == 2:
            raise RuntimeError(f"ray head did not come up:\n{log[-3000:]}")
    try:
        yield head
    finally:
        from ray.job_submission import JobSubmissionClient

        from bestofl.submit import auth_headers

        try:
            client = JobSubmissionClient(head.url, headers=auth_headers())
            for job in client.list_jobs():
                if job.submission_id and not job.status.is_terminal():
                    client.stop_job(job.submission_id)
        finally:
            _stop_head(proc)
            shutil.rmtree(tmpdir, ignore_errors=True)
