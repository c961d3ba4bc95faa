"""Preflight: what a command asks of Ray against what the cluster can give.

Ray waits without limit for resources that never come (an actor pool, a Train worker
group: "max allowed: inf"). Before any such wait, each command's demands (actors or
workers x {CPU, GPU, memory, custom resources}) are packed onto the cluster's nodes, one
unit whole on one node, as Ray must place it; a shortfall fails in seconds, naming it.

The cluster is the one the command would use: a connected driver's, the one at
`ray.address` / RAY_ADDRESS / running on this node (Ray's own lookup), or the local
instance it would start (predicted, not started). An autoscaling cluster counts the
nodes its autoscaler may add. BESTOFL_PREFLIGHT=warn turns failures into warnings.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

PREFLIGHT_ENV = "BESTOFL_PREFLIGHT"  # "warn": report shortfalls, run anyway
MAX_AUTOSCALED_NODES = 256  # an unbounded node group counts as this many


class PreflightError(ValueError):
    """The cluster cannot give what the command asks for; the message names the shortfall."""


@dataclass
class Demand:
    role: str  # what one unit is, e.g. "workers", "vLLM actors"
    count: int
    unit: dict[str, float]  # Ray resources of one unit (CPU, GPU, memory, custom)


def _unit(cpus: float, gpus: float, resources: dict[str, float] | None = None) -> dict[str, float]:
    unit = {"CPU": float(cpus), "GPU": float(gpus), **{k: float(v) for k, v in (resources or {}).items()}}
    return {k: v for k, v in unit.items() if v > 0}


def command_of(cfg: Any) -> str:
    from bestofl.config import SCHEMAS

    return next(name for name, schema in SCHEMAS.items() if isinstance(cfg, schema))


def demands(command: str, cfg: Any) -> list[Demand]:
    """What `command` asks Ray for, in units that must each fit on one node."""
    if command == "sample":
        a = cfg.actors
        return [Demand("vLLM actors", a.num_actors, _unit(a.num_cpus, a.num_gpus, a.resources))]
    if command == "score":
        a = cfg.actors
        # Ray Data's read and sort tasks need a CPU the actors leave free, or the job waits.
        return [Demand("scorer actors", a.num_actors, _unit(a.num_cpus, a.num_gpus, a.resources)),
                Demand("Ray Data tasks", 1, {"CPU": 1.0})]
    if command == "train_rm":
        return [Demand("workers", cfg.num_workers,
                       _unit(cfg.cpus_per_worker, 1 if cfg.use_gpu else 0, cfg.resources_per_worker))]
    if command == "serve":
        scorers = (cfg.autoscaling.get("min_replicas", 1) or 0) if cfg.autoscaling else cfg.scorer_replicas
        out = [Demand("ingress replicas", cfg.ingress_replicas, _unit(cfg.ingress_num_cpus, 0)),
               Demand("scorer replicas", scorers, _unit(cfg.scorer_num_cpus, cfg.scorer_num_gpus))]
        if cfg.generator:
            out.append(Demand("generator replicas", cfg.generator_replicas,
                              _unit(cfg.generator_num_cpus, cfg.generator_num_gpus)))
        return out
    raise ValueError(f"no preflight for command {command!r}")


def _amount(key: str, value: float) -> str:
    if key == "memory":
        return f"{value / 2**30:g} GiB memory"
    name = {"CPU": "CPU", "GPU": "GPU"}.get(key, key)
    return f"{value:g} {name}{'s' if key in ('CPU', 'GPU') and value != 1 else ''}"


def _order(key: str) -> tuple:
    return key != "GPU", key != "CPU", key


def _describe(unit: dict[str, float]) -> str:
    order = sorted(unit, key=_order)
    text = ", ".join(_amount(k, unit[k]) for k in order)
    return f"({text})" if len(unit) > 1 else text or "nothing"


def fit(command: str, wanted: list[Demand], nodes: list[dict[str, float]]) -> list[str]:
    """Pack every unit onto `nodes` (first fit, largest GPU demands first); one message per
    demand that does not fit."""
    free = [dict(n) for n in nodes]
    total: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0.0) + v
    name = command.replace("_", "-")
    problems = []
    for d in sorted(wanted, key=lambda d: (-d.unit.get("GPU", 0), -d.unit.get("CPU", 0))):
        placed = 0
        for _ in range(d.count):
            node = next((n for n in free if all(n.get(k, 0.0) >= v - 1e-9 for k, v in d.unit.items())), None)
            if node is None:
                break
            for k, v in d.unit.items():
                node[k] -= v
            placed += 1
        if placed == d.count:
            continue
        head = f"{name} needs {d.count} {d.role} x {_describe(d.unit)}"
        short = sorted((k for k, v in d.unit.items() if v * d.count > total.get(k, 0.0) + 1e-9), key=_order)
        if short:
            has = ", ".join(_amount(k, total.get(k, 0.0)) for k in short)
            problems.append(f"{head}; the cluster has {has}")
        else:
            biggest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in d.unit), default={})
            problems.append(f"{head}; only {placed} fit, as one unit must fit on one node "
                            f"(largest node: {_describe({k: biggest.get(k, 0.0) for k in d.unit})}, "
                            f"{len(nodes)} node(s))")
    return problems


def local_node(num_cpus: int | None) -> dict[str, float]:
    """The node a local `ray.init(num_cpus=...)` would start on this machine (memory and
    object store left out: Ray sizes them from free RAM at start)."""
    import torch

    cpus = os.cpu_count() if num_cpus is None else num_cpus
    return {"CPU": float(cpus or 0), "GPU": float(torch.cuda.device_count())}


def live_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected cluster, plus the nodes its
    autoscaler may still add (a KubeRay group at 0 replicas is a promise, not a shortfall)."""
    import ray

    nodes = [{k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
             for n in ray.nodes() if n.get("Alive")]
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        config = None
    for group in getattr(config, "node_group_configs", None) or ():
        count = group.max_count if group.max_count >= 0 else MAX_AUTOSCALED_NODES
        nodes += [{k: float(v) for k, v in group.resources.items()}] * min(count, MAX_AUTOSCALED_NODES)
    return nodes


def _summary(nodes: list[dict[str, float]]) -> str:
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    return f"{len(nodes)} node(s), {_amount('CPU', cpus)}, {_amount('GPU', gpus)}"


def verdict(command: str, cfg: Any, platform: str, connect: bool = False) -> dict[str, Any]:
    """The preflight result as the dry-run plan shows it: which cluster, ok, problems.

    `connect`: join a running cluster to read its nodes (a dry run disconnects after);
    a local instance is predicted from `ray.num_cpus` and this machine, never started.
    """
    import ray

    from bestofl.ray_runtime import cluster_address, init_ray

    wanted = demands(command, cfg)
    if ray.is_initialized():
        nodes, cluster = live_nodes(), "connected"
    else:
        address, _ = cluster_address(cfg.ray.address)
        if address is None:
            here = "gpu" if local_node(0)["GPU"] else "cpu"
            if platform != here:
                return {"cluster": "no cluster", "ok": None, "problems": [],
                        "note": f"would start a local Ray on this {here} node; --platform {platform} "
                                "is not checked against it"}
            nodes = [local_node(cfg.ray.num_cpus)]
            cluster = f"no cluster: would start a local Ray ({_summary(nodes)})"
        elif not connect:
            return {"cluster": address, "ok": None, "problems": [], "note": "not connected"}
        else:
            try:
                init_ray(cfg.ray)  # joins as a run would, token included
                nodes = live_nodes()
            except Exception as e:
                return {"cluster": address, "ok": False,
                        "problems": [f"cannot reach the Ray cluster at {address}: {e}"]}
            finally:
                ray.shutdown()
            cluster = address
    problems = fit(command, wanted, nodes)
    return {"cluster": cluster, "nodes": _summary(nodes), "ok": not problems, "problems": problems,
            "demands": [{"role": d.role, "count": d.count, "unit": d.unit} for d in wanted]}


def require(cfg: Any) -> None:
    """Fail in seconds when the cluster a command will use cannot hold what `cfg` asks for.

    Call it where the command would start Ray: it joins the cluster the command runs on
    (the run reuses the connection); a local instance is only predicted, so a refused
    config starts nothing.
    """
    import ray

    from bestofl.ray_runtime import cluster_address, init_ray

    command = command_of(cfg)
    if not ray.is_initialized() and cluster_address(cfg.ray.address)[0] is not None:
        init_ray(cfg.ray)
    if ray.is_initialized():
        nodes, where = live_nodes(), "the cluster"
    else:
        nodes, where = [local_node(cfg.ray.num_cpus)], "the local Ray it would start"
    problems = fit(command, demands(command, cfg), nodes)
    if not problems:
        return
    text = "; ".join(p.replace("the cluster has", f"{where} has") for p in problems)
    if os.environ.get(PREFLIGHT_ENV) == "warn":
        print(f"bestofl {command.replace('_', '-')}: warning: {text}", file=sys.stderr, flush=True)
        return
    hint = f" (a cluster that will grow without an autoscaler: {PREFLIGHT_ENV}=warn)" if ray.is_initialized() else ""
    raise PreflightError(text + hint)
