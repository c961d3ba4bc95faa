"""Preflight: demands that the cluster cannot give fail in seconds with the shortfall named,
instead of Ray waiting forever; the cluster/ manifests fit what their commands ask for.

The cluster cases run the real CLI against the session's simulated Ray cluster (logical
GPUs on extra nodes), or as a subprocess that must fail before starting any Ray.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bestofl import preflight
from bestofl.cli import main as cli_main
from bestofl.config import load_config, parse_command_line
from bestofl.plan import build

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = str(ROOT / "conf" / "presets" / "train-rm-zero3-gpu.yaml")
MGSM = str(ROOT / "conf" / "presets" / "mgsm-qwen2.5-7b.yaml")


def _cli(capsys, *argv: str) -> tuple[int, str, float]:
    start = time.perf_counter()
    rc = cli_main(list(argv))
    return rc, capsys.readouterr().err, time.perf_counter() - start


# ---------------------------------------------------------------- packing, no Ray
def test_fit_names_the_shortfall():
    gpus = [preflight.Demand("workers", 16, {"GPU": 1.0, "CPU": 8.0})]
    assert preflight.fit("train_rm", gpus, [{"CPU": 4.0}]) == [
        "train-rm needs 16 workers x (1 GPU, 8 CPUs); the cluster has 0 GPUs, 4 CPUs"]
    assert preflight.fit("train_rm", gpus, [{"CPU": 64.0, "GPU": 8.0}] * 2) == []
    # enough in total, not on any one node: 2 x 3 CPUs over nodes of 4, 2 and 2
    per_node = preflight.fit("train_rm", [preflight.Demand("workers", 2, {"CPU": 3.0})],
                             [{"CPU": 4.0}, {"CPU": 2.0}, {"CPU": 2.0}])
    assert len(per_node) == 1 and "only 1 fit" in per_node[0] and "one node" in per_node[0]
    custom = preflight.fit("sample", [preflight.Demand("vLLM actors", 2, {"CPU": 1.0, "sim_node": 1.0})],
                           [{"CPU": 8.0, "sim_node": 1.0}])
    assert custom == ["sample needs 2 vLLM actors x (1 CPU, 1 sim_node); the cluster has 1 sim_node"]


def _node(group: dict) -> dict[str, float]:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus = group.get("rayStartParams", {}).get("num-cpus", limits.get("cpu", 0))
    return {"CPU": float(cpus), "GPU": float(limits.get("nvidia.com/gpu", 0))}


@pytest.mark.parametrize("manifest,preset", [("rayjob-sample.yaml", MGSM),
                                             ("rayjob-train-rm.yaml", ZERO3)])
def test_manifests_fit_their_commands_and_presets(manifest, preset):
    doc = yaml.safe_load((ROOT / "cluster" / manifest).read_text())
    spec = doc["spec"]["rayClusterSpec"]
    workers = spec["workerGroupSpecs"]
    nodes = [_node(spec["headGroupSpec"])]
    nodes += [_node(g) for g in workers for _ in range(g.get("replicas", g["minReplicas"]))]
    argv = shlex.split(doc["spec"]["entrypoint"])
    command = argv[3].replace("-", "_")
    cfg = parse_command_line(command, argv[4:])
    assert preflight.fit(command, preflight.demands(command, cfg), nodes) == []
    # The preset's unit (one actor / one worker) fits one node of the manifest's GPU group.
    required = {"sample": ["output=o"], "train_rm": ["input=p", "output=o", "storage_path=s3://b/r"]}
    preset_cfg = load_config(command, preset, required[command])
    for d in preflight.demands(command, preset_cfg):
        assert preflight.fit(command, [preflight.Demand(d.role, 1, d.unit)], [_node(workers[0])]) == []


# ---------------------------------------------------------------- no Ray may start
def _subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "bestofl.cli", *argv], capture_output=True,
                          text=True, env=env, timeout=120)


def test_train_rm_without_cpus_fails_before_starting_ray(tmp_path):
    out = _subprocess("train-rm", "input=p", "model=m", f"output={tmp_path / 'rm'}",
                      "ray.address=local", "ray.num_cpus=1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "bestofl train-rm: error: train-rm needs 2 workers x 1 CPU; the local Ray it would "
        "start has 1 CPU"]
    assert not (tmp_path / "rm").exists()
    # A local Ray with no CPUs at all (a hang before) is refused by the config itself.
    out = _subprocess("train-rm", "input=p", "model=m", f"output={tmp_path / 'rm'}",
                      "ray.address=local", "ray.num_cpus=0")
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "ray.num_cpus" in line
    assert not (tmp_path / "rm").exists()


def test_serve_checks_its_model_before_ray():
    out = _subprocess("serve", "model=/nonexistent", "ray.address=local")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "/nonexistent" in line and "reward model not found" in line


# ---------------------------------------------------------------- the simulated cluster
def test_train_rm_gpu_preset_on_a_cluster_without_gpus(ray_cluster, tmp_path, capsys):
    rc, err, seconds = _cli(capsys, "train-rm", "--config", ZERO3, "input=[p]",
                            f"output={tmp_path / 'rm'}", f"storage_path={tmp_path / 'ray'}")
    assert rc == 2 and seconds < 60
    assert "train-rm needs 16 workers x (1 GPU, 8 CPUs); the cluster has 0 GPUs" in err
    assert not (tmp_path / "rm").exists()


def test_train_rm_with_more_workers_than_cpus(ray_cluster, tmp_path, capsys):
    # 8 CPUs in all (4 + 2 + 2)
    rc, err, _ = _cli(capsys, "train-rm", "input=[p]", "model=m", f"output={tmp_path / 'rm'}",
                      "num_workers=9")
    assert rc == 2 and "needs 9 workers x 1 CPU; the cluster has 8 CPUs" in err
    rc, err, _ = _cli(capsys, "train-rm", "input=[p]", "model=m", f"output={tmp_path / 'rm'}",
                      "num_workers=2", "cpus_per_worker=3")
    assert rc == 2 and "only 1 fit" in err and "largest node: 4 CPUs" in err


def test_score_actor_larger_than_any_node(ray_cluster, tiny_rm, tmp_path, capsys):
    from bestofl import pool

    source = tmp_path / "pool"
    pool.write_pool(pool.to_table([{"qid": "1", "question_lang": "en", "response_lang": "en",
                                    "sample_idx": 0, "model": "m", "method": "x",
                                    "response": "42"}]), str(source))
    rc, err, seconds = _cli(capsys, "score", f"input={source}", f"model={tiny_rm}",
                            f"output={tmp_path / 's'}", "actors.num_cpus=8")
    assert rc == 2 and seconds < 60 and not (tmp_path / "s").exists()
    assert "score needs 1 scorer actors x 8 CPUs" in err and "one node" in err


def test_sample_gpu_actors_on_a_cluster_without_gpus(ray_cluster, tiny_lm, mgsm_dir, tmp_path, capsys):
    rc, err, _ = _cli(capsys, "sample", f"questions={mgsm_dir}", f"model={tiny_lm}", "limit=1",
                      f"output={tmp_path / 'pool'}", "actors.num_gpus=1", "actors.num_actors=2")
    assert rc == 2 and not (tmp_path / "pool").exists()
    assert "sample needs 2 vLLM actors x (1 GPU, 1 CPU); the cluster has 0 GPUs" in err


def test_simulated_gpu_nodes(ray_cluster, tmp_path, capsys):
    """Logical GPUs on extra nodes: one 8-GPU node is short of the zero3 preset's 16
    workers (named), two fit it (the dry run's verdict)."""
    added = []
    try:
        added.append(ray_cluster.add_node(num_cpus=64, num_gpus=8, object_store_memory=80 * 2**20))
        ray_cluster.wait_for_nodes()
        rc, err, _ = _cli(capsys, "train-rm", "--config", ZERO3, "input=[p]",
                          f"output={tmp_path / 'rm'}", f"storage_path={tmp_path / 'ray'}")
        assert rc == 2 and "the cluster has 8 GPUs" in err
        added.append(ray_cluster.add_node(num_cpus=64, num_gpus=8, object_store_memory=80 * 2**20))
        ray_cluster.wait_for_nodes()
        cfg = load_config("train_rm", ZERO3, ["input=[p]", f"output={tmp_path / 'rm'}",
                                              f"storage_path={tmp_path / 'ray'}"])
        verdict = build("train_rm", cfg, "gpu")["preflight"]
        assert verdict["ok"] is True and verdict["problems"] == [], verdict
        assert verdict["cluster"] == "connected" and "16 GPUs" in verdict["nodes"]
    finally:
        for node in added:
            ray_cluster.remove_node(node)
