"""Join or start Ray the same way in every pipeline."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from typing import Any

from bestofl import console
from bestofl.config import RayConfig

LOCAL = "local"
THIS_NODE = "the cluster running on this node"
RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray sets inside a job (no Ray import here)


def _given_address(address: str | None) -> tuple[str | None, str] | None:
    """What `ray.address` or RAY_ADDRESS say, if either says anything."""
    if address == LOCAL:
        return None, "ray.address=local"
    if address:
        return address, "ray.address"
    env = os.environ.get("RAY_ADDRESS")
    if env == LOCAL:
        return None, "RAY_ADDRESS=local"
    if env:
        return env, "RAY_ADDRESS"
    return None


def starts_local(address: str | None) -> bool:
    """Whether `init_ray` will start a private instance, told without importing Ray (the CLI
    fixes Ray's auth mode by it); a cluster record on this node counts as a cluster."""
    given = _given_address(address)
    if given is not None:
        return given[0] is None
    record = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray",
                          "ray_current_cluster")
    return not os.path.exists(record)


def cluster_address(address: str | None) -> tuple[str | None, str]:
    """The cluster `init_ray` joins for `ray.address`, and why; (None, why) when it starts one.

    null follows `ray.init()`: RAY_ADDRESS (set inside every Ray job), else the cluster that
    `ray start` on this node recorded (<RAY_TMPDIR or /tmp>/ray/ray_current_cluster). A
    record whose cluster is gone is ignored, where `ray.init()` would fail on it.
    "local" always means a new private instance.
    """
    given = _given_address(address)
    if given is not None:
        return given
    from ray._common.utils import get_ray_address_file
    from ray._private import services

    recorded = services.find_bootstrap_address(None)
    if recorded is None:
        return None, "no RAY_ADDRESS and no cluster started on this node"
    services.find_gcs_addresses.cache_clear()
    if recorded not in services.find_gcs_addresses():
        return None, f"no RAY_ADDRESS; {get_ray_address_file(None)} names {recorded}, which is not running"
    return recorded, THIS_NODE


# A local instance is one node that nothing drains: Ray Train's preemption watcher has no
# work there, and its start logs Ray core's false alarm about restartable actors whose
# constructor arguments are in the object store (ray-project/ray#57733).
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
LOCAL_SETUP_HOOK = "bestofl.ray_runtime.pin_ray_address"


def pin_ray_address() -> None:
    """Run by every worker of a local instance as it starts: RAY_ADDRESS names that instance.

    Ray's state API, asked without an address (Ray Train's placement-group cleaner asks it
    whether the controller lives), otherwise looks around the node. Beside a second instance
    it fails with a traceback on the console; beside a `ray start` cluster it asks that
    cluster, which has no such controller, and the cleaner takes it for dead."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _init_args(local: bool = False) -> dict[str, Any]:
    """What `ray.init` gets besides the address: log levels and the job's runtime_env.

    Ray's start-up lines and its workers' warnings (e.g. Ray Train's repeated "Failed to
    query Ray Train Controller actor state" without a dashboard) stay out of the default
    output; errors, our own prints and progress bars still show. The quiet defaults reach
    every worker of the job through its runtime_env, on a local instance or a cluster."""
    import ray

    env = {**console.quiet_defaults(), **(LOCAL_ENV if local else {})}
    job = os.environ.get(RAY_JOB_CONFIG)  # inside a Ray job: its env_vars win
    if job:
        job_env = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in job_env}
    runtime_env: dict[str, Any] = {"env_vars": env} if env else {}
    if local:
        runtime_env["worker_process_setup_hook"] = LOCAL_SETUP_HOOK
    args: dict[str, Any] = {"runtime_env": runtime_env} if runtime_env else {}
    if console.verbose():
        return {"logging_level": logging.INFO, **args}
    ray.data.DataContext.get_current().print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress bars stay
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's Serve lines
    return {"logging_level": logging.WARNING, **args,
            "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="ERROR")}


def train_logging() -> Any:
    """Ray Train's own console lines (resources asked, worker group started, every
    reported result) at WARNING by default; the training loop's own prints still show."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if console.verbose() else "WARNING")


def serve_logging() -> dict[str, str]:
    """Ray Serve's controller, proxy and replica logs (start-up, every request) at WARNING
    by default: `bestofl serve` prints the one line that says where it listens."""
    return {"log_level": "INFO" if console.verbose() else "WARNING"}


def init_ray(cfg: RayConfig) -> None:
    """Reuse a running driver connection, else join the cluster `cluster_address` finds, else
    start a local instance; one line on stderr says which.

    Only a local instance gets `num_cpus` / `object_store_memory`: a cluster has its own.
    Explicit ones matter on a small box, where the defaults hang a Data pipeline with an
    actor plus a task and reserve most of the RAM for the object store.
    """
    import ray

    if ray.is_initialized():
        return
    address, why = cluster_address(cfg.address)
    if address:
        if why != THIS_NODE and _refuses_without_token(address):
            raise _token_needed(address, why)
        try:
            # This node's cluster through Ray's own discovery, which also picks up its auth
            # token; Ray never sends one to an address it was given (RAY_AUTH_MODE=token does).
            ray.init(address=None if why == THIS_NODE else address, log_to_driver=True,
                     **_init_args())
        except ConnectionError as e:
            if not _refused_for_auth(e):
                raise
            raise _token_needed(address, why) from None
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        print(f"bestofl: joined Ray cluster at {address} ({why}): {nodes} node(s), "
              f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs",
              file=sys.stderr, flush=True)
    else:
        # address="local": a new instance even where another user's `ray start` cluster runs here.
        ray.init(address=LOCAL, num_cpus=cfg.num_cpus,
                 object_store_memory=cfg.object_store_memory, include_dashboard=False,
                 **_init_args(local=True))
        print(f"bestofl: started a local Ray instance ({why}): "
              f"{ray.cluster_resources().get('CPU', 0):g} CPUs", file=sys.stderr, flush=True)


def _token_needed(address: str, why: str) -> ValueError:
    return ValueError(f"the Ray cluster at {address} ({why}) uses token authentication: "
                      f"set RAY_AUTH_MODE=token with its token in ~/.ray/auth_token, "
                      f"RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")


def _refuses_without_token(address: str) -> bool:
    """One GCS call as `ray.init` makes it without RAY_AUTH_MODE=token: a cluster with token
    auth refuses it at once, where `ray.init` retries for 20 s, a warning line a second."""
    if os.environ.get("RAY_AUTH_MODE") == "token" or not re.fullmatch(r"[\w.\-]+:\d+", address):
        return False  # the token is sent; or a ray:// client address, which Ray checks itself
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=10)
        except grpc.RpcError as e:  # unreachable and the like: ray.init says it its own way
            return e.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


def _refused_for_auth(error: BaseException | None) -> bool:
    """Ray wraps the GCS's AuthenticationError, sometimes only as text in a RuntimeError."""
    import ray

    while error is not None:
        if isinstance(error, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
