"""Join or start Ray the same way in every pipeline."""
from __future__ import annotations

import os

import ray

from bestofl.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Reuse a running driver connection, else join `address`/RAY_ADDRESS, else start locally.

    A local instance gets explicit CPUs and object store: on a 2-core box the defaults
    hang a Data pipeline with an actor plus a task and reserve 7 GB (ENVIRONMENT.md).
    """
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # "local": a new instance even where another user's `ray start` cluster runs here.
        ray.init(address="local", num_cpus=cfg.num_cpus,
                 object_store_memory=cfg.object_store_memory, include_dashboard=False)
