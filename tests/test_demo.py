"""The demo's fast variant: the real pipelines end to end with tiny models, then a rerun.

The run starts with the test session (conftest's `demo_run`) and goes on beside the other
tests; this module's tests run last and read what it printed and wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bestofl.pool import read_pool

pytestmark = pytest.mark.slow
BESTOFL = Path(sys.executable).parent / "bestofl"  # the venv's console script


@dataclass
class Console:
    """`bestofl ...` as a user runs it, on its own local Ray instance, in the background:
    the terminal's text (driver stdout and stderr plus what Ray forwards from workers)
    goes to a file."""

    args: list[str]
    cwd: Path
    log: Path
    proc: subprocess.Popen

    @classmethod
    def run(cls, *args: str, cwd: Path) -> "Console":
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        log = cwd / f"console-{len(list(cwd.glob('console-*')))}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(BESTOFL), *args, "ray.address=local"], cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        return cls(list(args), cwd, log, proc)

    @classmethod
    def start(cls, tiny_lm: Path, tiny_rm: Path, cwd: Path) -> "Console":
        """The demo's fast variant; conftest's `demo_run` starts it with the session."""
        return cls.run(
            "demo", f"output={cwd / 'demo'}", f"generator={tiny_lm}", f"reward_model={tiny_rm}",
            "questions=generated:6", "languages=[en,de]",
            "sample.n=2", "sample.sampling.max_tokens=16",
            # A random LM answers nothing right, so no correct/incorrect pairs exist: the
            # pointwise objective still trains (on one-sided questions) and scores every row.
            "train_rm.objective=pointwise", "train_rm.max_length=96", "train_rm.epochs=1",
            "train_rm.batch_size=2", "train_rm.deepspeed.bf16=false",
            "evaluate.bootstrap=50", "evaluate.monte_carlo=20", cwd=cwd)

    def finish(self, timeout: float = 900) -> tuple[int, list[str]]:
        """Its exit code and the lines a terminal shows (a bar's \\r updates overwrite each
        other, so each line counts once)."""
        rc = self.proc.wait(timeout=timeout)
        text = self.log.read_bytes().decode(errors="replace").rstrip("\n")
        return rc, [line.rsplit("\r", 1)[-1] for line in text.split("\n")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_demo_fast_variant_end_to_end_and_rerun(demo_run):
    out = demo_run.cwd / "demo"
    rc, lines = demo_run.finish()
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
                  "Writing model shards", "Loading safetensors", "Started a local Ray instance"):
        assert noise not in printed, f"{noise!r} in the demo's output:\n{printed}"
    assert len(lines) <= 80, f"{len(lines)} lines:\n{printed}"

    # A rerun reuses every finished stage and starts nothing, not even Ray: under --verbose
    # Ray's own "Started a local Ray instance" would show (test_sampling sees its lines).
    rc, lines = Console.run("--verbose", *demo_run.args, cwd=demo_run.cwd).finish()
    printed = "\n".join(lines)
    assert rc == 0, printed[-5000:]
    assert printed.count("reusing the finished output") == 3
    assert "Ray instance" not in printed, printed
