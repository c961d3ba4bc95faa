"""The demo's fast variant: the real pipelines end to end with tiny models, then a rerun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestofl.pool import read_pool

pytestmark = pytest.mark.slow
BESTOFL = Path(sys.executable).parent / "bestofl"  # the venv's console script
def _console(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """`bestofl ...` as a user runs it, on its own local Ray instance: its exit code and the
    lines a terminal shows (driver stdout and stderr plus what Ray forwards from workers;
    a bar's \\r updates overwrite each other, so each line counts once)."""
    # A user's shell: no RAY_ADDRESS, and no DS_ACCELERATOR (`make` sets it, not `bestofl`).
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DS_ACCELERATOR")}
    done = subprocess.run([str(BESTOFL), *args, "ray.address=local"], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=900)
    text = done.stdout.decode(errors="replace").rstrip("\n")
    return done.returncode, [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def test_demo_fast_variant_end_to_end_and_rerun(tiny_lm, tiny_rm, tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo", f"output={out}", f"generator={tiny_lm}", f"reward_model={tiny_rm}",
        "questions=generated:6", "languages=[en,de]",
        "sample.n=2", "sample.sampling.max_tokens=16",
        # A random LM answers nothing right, so no correct/incorrect pairs exist: the
        # pointwise objective still trains (on one-sided questions) and scores every row.
        "train_rm.objective=pointwise", "train_rm.max_length=96", "train_rm.epochs=1",
        "train_rm.batch_size=2", "train_rm.deepspeed.bf16=false",
        "evaluate.bootstrap=50", "evaluate.monte_carlo=20",
    ]
    rc, lines = _console(*args, cwd=tmp_path)
    printed = "\n".join(lines)
    assert rc == 0, printed[-5000:]

    pool = read_pool(str(out / "pool"))
    assert pool.num_rows == 6 * 2 * 2
    scored = read_pool(str(out / "rm" / "pool"))
    assert scored.num_rows == pool.num_rows
    assert scored.column("score").null_count == 0  # every row scored out of fold

    report = json.loads((out / "report" / "report.json").read_text())
    assert report["languages"] == ["de", "en"]
    assert {"mono", "cross"} == {r["pool"] for r in report["results"]}
    assert {"rm_best", "majority", "oracle"} <= {r["selector"] for r in report["results"]}
    for r in report["results"]:
        # Percentile intervals need not contain the estimate; they stay ordered and in [0, 1].
        assert 0.0 <= r["ci_low"] <= r["ci_high"] <= 1.0
    assert report["differences"]  # paired cross - mono rows
    for name in ("report.md", "report.html", "per_question.parquet"):
        assert (out / "report" / name).is_file(), name
    assert list((out / "report").glob("*.png"))

    # What the user reads: our lines and bars with rates, no library chatter, nothing that
    # looks like a failure. Two screens: 2 x 40 lines, a laptop terminal's height.
    assert "bestofl serve model=" in printed
    assert any("samples: 100%" in line and "tok_s=" in line for line in lines), printed
    assert any("[train-rm] fold 0 step" in line and "ex/s" in line for line in lines), printed
    # Ray core's one line as Ray Data starts the sampler's actor pool: its own false alarm on
    # every restartable actor pool (ray-project/ray#57733); Ray 2.60 has no switch for it
    # but max_restarts, settable only through Ray Data's deprecated ray_remote_args.
    lines = [line for line in lines if "'MapWorker(MapBatches(Sampler))'" not in line]
    printed = "\n".join(lines)
    for noise in ("Traceback", "Exception ignored", "EngineDeadError", "resource_tracker", "core_worker.cc", "LOAD REPORT", "Triton",
                  "Progress bars disabled", "execution finished", "repeated", "Loading weights",
                  "Writing model shards", "Loading safetensors", "Started a local Ray instance",
                  "Setting accelerator"):
        assert noise not in printed, f"{noise!r} in the demo's output:\n{printed}"
    assert len(lines) <= 80, f"{len(lines)} lines:\n{printed}"

    # A rerun reuses every finished stage and starts nothing, not even Ray: under --verbose
    # Ray's own "Started a local Ray instance" would show (test_sampling sees its lines).
    rc, lines = _console("--verbose", *args, cwd=tmp_path)
    printed = "\n".join(lines)
    assert rc == 0, printed[-5000:]
    assert printed.count("reusing the finished output") == 3
    assert "Ray instance" not in printed, printed
