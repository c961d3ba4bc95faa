"""The resolved plan of a Ray command, and the entry point that prints it (`--dry-run`).

A plan is what a run would ask of Ray, with every platform default resolved: the actors
or workers and their resources, the exact vLLM engine arguments per actor, the DeepSpeed
config, storage paths and the preflight verdict. Building it starts no Ray work and
reads no model files (a hub id stays a name).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from bestofl import preflight
from bestofl.config import command_parser, load_config
from bestofl.engine import check_kv_cache, engine_args
from bestofl.hardware import resolve_dtype


def this_platform() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _storage(uri: str | None) -> dict[str, Any]:
    # A URI reaches every node; a plain path only where all nodes mount it.
    return {"path": uri, "shared": bool(uri) and "://" in uri}


def _sample(cfg: Any) -> dict[str, Any]:
    a = cfg.actors
    args = engine_args(cfg.model, cfg.engine, a.num_gpus, cfg.seed)
    return {
        "model": cfg.model, "questions": cfg.questions, "seeding": cfg.seeding,
        "group_samples": cfg.group_samples,
        "actors": [{"role": "sampler", "count": a.num_actors, "num_gpus": a.num_gpus,
                    "num_cpus": a.num_cpus, "resources": dict(a.resources),
                    "env_vars": dict(a.env_vars), "batch_size": a.batch_size,
                    "batches_in_flight": a.batches_in_flight, "vllm_engine_args": args}],
        "gpus": a.num_actors * a.num_gpus,
        "storage": {"output": _storage(cfg.output)},
    }


def _train_rm(cfg: Any) -> dict[str, Any]:
    from bestofl import storage
    from bestofl.reward.training import deepspeed_config

    deepspeed = cfg.deepspeed
    path = cfg.storage_path or storage.join(cfg.output, "ray")
    return {
        "model": cfg.model, "input": list(cfg.input),
        "workers": [{"role": "trainer", "count": cfg.num_workers,
                     "num_gpus": 1 if cfg.use_gpu else 0, "num_cpus": cfg.cpus_per_worker,
                     "resources": dict(cfg.resources_per_worker),
                     "backend": "nccl" if cfg.use_gpu else "gloo"}],
        "gpus": cfg.num_workers if cfg.use_gpu else 0,
        "global_batch": cfg.num_workers * cfg.batch_size * cfg.grad_accum,
        "deepspeed": deepspeed_config(deepspeed.zero_stage, deepspeed.bf16,
                                      deepspeed.offload_optimizer, cfg.batch_size,
                                      cfg.grad_accum, cfg.max_grad_norm, cfg.lr, cfg.weight_decay,
                                      deepspeed.overlap_comm),
        "storage": {"output": _storage(cfg.output), "checkpoints": _storage(path)},
    }


def _score(cfg: Any) -> dict[str, Any]:
    a = cfg.actors
    on_gpu = a.num_gpus > 0
    return {
        "model": cfg.model, "input": cfg.input,
        "actors": [{"role": "scorer", "count": a.num_actors, "num_gpus": a.num_gpus,
                    "num_cpus": a.num_cpus, "resources": dict(a.resources),
                    "env_vars": dict(a.env_vars), "batch_size": a.batch_size,
                    "dtype": resolve_dtype(cfg.dtype, on_gpu),
                    "torch_threads": None if on_gpu else (cfg.torch_threads or max(1, int(a.num_cpus)))}],
        "gpus": a.num_actors * a.num_gpus,
        "storage": {"output": _storage(cfg.output)},
    }


def _serve(cfg: Any) -> dict[str, Any]:
    scorer = {"role": "Scorer", "num_gpus": cfg.scorer_num_gpus, "num_cpus": cfg.scorer_num_cpus,
              "dtype": resolve_dtype(cfg.dtype, cfg.scorer_num_gpus > 0)}
    scorer.update({"autoscaling": dict(cfg.autoscaling)} if cfg.autoscaling
                  else {"count": cfg.scorer_replicas})
    deployments = [{"role": "Selector", "count": cfg.ingress_replicas, "num_gpus": 0,
                    "num_cpus": cfg.ingress_num_cpus}, scorer]
    gpus = (cfg.scorer_replicas if not cfg.autoscaling else 0) * cfg.scorer_num_gpus
    if cfg.generator:
        deployments.append({"role": "Generator", "count": cfg.generator_replicas,
                            "num_gpus": cfg.generator_num_gpus, "num_cpus": cfg.generator_num_cpus,
                            "vllm_engine_args": engine_args(cfg.generator, cfg.engine,
                                                            cfg.generator_num_gpus)})
        gpus += cfg.generator_replicas * cfg.generator_num_gpus
    return {"model": cfg.model, "generator": cfg.generator,
            "http": {"host": cfg.host, "port": cfg.port, "auth": cfg.token is not None},
            "deployments": deployments, "gpus": gpus}


PLANS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sample": _sample, "train_rm": _train_rm, "score": _score, "serve": _serve}


def build(command: str, cfg: Any, platform: str | None = None, connect: bool = True
          ) -> dict[str, Any]:
    """The resolved plan of `command` under `cfg`, as a JSON-ready dict."""
    platform = platform or this_platform()
    out = {"command": command.replace("_", "-"), "platform": platform, **PLANS[command](cfg)}
    out["ray"] = {"address": cfg.ray.address, "num_cpus": cfg.ray.num_cpus,
                  "object_store_memory": cfg.ray.object_store_memory}
    out["preflight"] = verdict = preflight.verdict(command, cfg, platform, connect=connect)
    for actor in out.get("actors", out.get("deployments", [])):
        if "vllm_engine_args" in actor:
            try:  # needs the model's config.json: local folders and cached hub ids only
                actor["kv_bytes_per_sequence"] = check_kv_cache(actor["vllm_engine_args"])
            except ValueError as e:
                verdict["ok"] = False
                verdict["problems"].append(str(e))
    return out


def command_main(command: str, argv: Sequence[str] | None, run: Callable[[Any], Any],
                 check: Callable[[Any], None] | None = None) -> int:
    """`[--config FILE] [--dry-run [--platform cpu|gpu]] key=value ...` for a Ray command:
    print the plan, or `check` the config (e.g. preflight.require) and run it."""
    parser = command_parser(command, dry_run=True)
    args = parser.parse_args(argv)
    cfg = load_config(command, args.config, args.overrides)
    if args.dry_run:
        print(json.dumps(build(command, cfg, args.platform), indent=2, default=str))
        return 0
    if args.platform:
        parser.error("--platform only applies to --dry-run")
    if check:
        check(cfg)
    run(cfg)
    return 0
