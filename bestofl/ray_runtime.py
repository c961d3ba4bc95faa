"""Join or start Ray the same way in every pipeline."""
from __future__ import annotations

import logging
import os
from typing import Any

import ray

from bestofl.config import RayConfig


VERBOSE_ENV = "BESTOFL_VERBOSE"  # set by `bestofl --verbose`: Ray's own logs come back


QUIET_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TORCH_CPP_LOG_LEVEL": "ERROR",
             "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
             # Ray Train routes a worker's print through a logger that echoes it twice
             "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def _logging_args() -> dict[str, Any]:
    """Ray's start-up lines and its workers' warnings (e.g. Ray Train's repeated "Failed to
    query Ray Train Controller actor state" without a dashboard) stay out of the default
    output; errors, our own prints and progress bars still show."""
    if os.environ.get(VERBOSE_ENV):
        return {"logging_level": logging.INFO}
    ray.data.DataContext.get_current().print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its progress bars stay
    # A local instance's processes inherit these: vLLM's per-weight and platform
    # warnings, torch's C++ notes, library deprecation notices.
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    return {"logging_level": logging.WARNING,
            "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="ERROR")}


def train_logging() -> Any:
    """Ray Train's own console lines (resources asked, worker group started, every
    reported result) at WARNING by default; the training loop's own prints still show."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if os.environ.get(VERBOSE_ENV) else "WARNING")


def init_ray(cfg: RayConfig) -> None:
    """Reuse a running driver connection, else join `address`/RAY_ADDRESS, else start locally.

    A local instance gets explicit CPUs and object store: on a 2-core box the defaults
    hang a Data pipeline with an actor plus a task and reserve 7 GB (ENVIRONMENT.md).
    """
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, **_logging_args())
    else:
        # "local": a new instance even where another user's `ray start` cluster runs here.
        ray.init(address="local", num_cpus=cfg.num_cpus,
                 object_store_memory=cfg.object_store_memory, include_dashboard=False,
                 **_logging_args())
