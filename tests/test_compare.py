"""`bestofl compare`: paired differences between two evaluate reports on the same questions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bestofl.cli import main as cli_main
from bestofl.compare import compare
from bestofl.config import load_config
from bestofl.pool import to_table, write_pool
from pipelines.evaluate import run
from tests.test_evaluation import make_rows


def _report(tmp_path, name: str, rows: list[dict]) -> str:
    write_pool(to_table(rows), str(tmp_path / f"pool-{name}"))
    out = tmp_path / f"report-{name}"
    run(load_config("evaluate", None, [
        f"input={tmp_path / f'pool-{name}'}", f"output={out}", "bootstrap=200",
        "monte_carlo=20", "plots=false", "score_provenance=cross_fit",
        "selectors=[random,rm_best,oracle]", "budgets=[1,2,4]"]))
    return str(out)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    rows = make_rows(n_questions=15, seed=8)
    rng = np.random.default_rng(0)
    noisy = [dict(r, score=float(rng.normal())) for r in rows]  # an uninformative "RM"
    fewer = [r for r in rows if r["qid"] != "q03"]
    return {"a": _report(base, "a", rows), "b": _report(base, "b", noisy),
            "c": _report(base, "c", fewer)}


def test_compare_pairs_every_shared_row(reports, capsys):
    rows = compare(reports["a"], reports["b"], resamples=300)
    a = json.load(open(f"{reports['a']}/report.json"))["results"]
    b = json.load(open(f"{reports['b']}/report.json"))["results"]
    acc = lambda res: {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r["accuracy"]
                       for r in res}
    acc_a, acc_b = acc(a), acc(b)
    assert len(rows) == len(acc_a)
    for r in rows:
        key = (r["target_lang"], r["pool"], r["selector"], r["budget"])
        assert r["diff"] == pytest.approx(acc_b[key] - acc_a[key])
        assert r["n_questions"] == 15 and r["ci_low"] <= r["ci_high"]
        if r["selector"] in ("random", "oracle"):  # no scores involved: exactly the same
            assert r["diff"] == pytest.approx(0) and r["ci_high"] == pytest.approx(0)
    # the informative scores beat random ones somewhere, with an interval excluding 0
    assert any(r["ci_high"] < 0 for r in rows if r["selector"] == "rm_best")
    same = compare(reports["a"], reports["a"], resamples=50)
    assert all(r["diff"] == 0 and r["ci_low"] == 0 == r["ci_high"] for r in same)
    assert cli_main(["compare", reports["a"], reports["b"], "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "rm_best" in out and "*: the interval excludes 0" in out


def test_compare_refuses_different_questions(reports, tmp_path, capsys):
    with pytest.raises(ValueError, match="different questions.*1 only in A, 0 only in B"):
        compare(reports["a"], reports["c"])
    assert cli_main(["compare", reports["a"], reports["c"]]) == 2
    err = capsys.readouterr().err
    assert "bestofl compare: error:" in err and "same questions" in err
    assert cli_main(["compare", reports["a"], str(tmp_path / "nothing")]) == 2
    assert "per_question.parquet" in capsys.readouterr().err
