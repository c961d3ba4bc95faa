"""The demo's fast variant: the real pipelines end to end with tiny models, then a rerun."""
from __future__ import annotations

import json

import pytest

from bestofl.config import load_config
from bestofl.pool import read_pool

pytestmark = pytest.mark.slow


def test_demo_fast_variant_end_to_end_and_rerun(ray_cluster, tiny_lm, tiny_rm, tmp_path, capsys):
    from pipelines import end_to_end

    out = tmp_path / "demo"
    cfg = load_config("demo", None, [
        f"output={out}", f"generator={tiny_lm}", f"reward_model={tiny_rm}",
        "questions=generated:6", "languages=[en,de]",
        "sample.n=2", "sample.sampling.max_tokens=16",
        # A random LM answers nothing right, so no correct/incorrect pairs exist: the
        # pointwise objective still trains (on one-sided questions) and scores every row.
        "train_rm.objective=pointwise", "train_rm.max_length=96", "train_rm.epochs=1",
        "train_rm.batch_size=2", "train_rm.deepspeed.bf16=false",
        "evaluate.bootstrap=50", "evaluate.monte_carlo=20",
    ])
    end_to_end.run(cfg)

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
    printed = capsys.readouterr().out
    assert "bestofl serve model=" in printed

    # A rerun reuses every finished stage and starts nothing.
    end_to_end.run(cfg)
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished output") == 3
