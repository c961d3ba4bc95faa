"""Budgets, allocation, mono vs cross bookkeeping, errors, and the `evaluate` report."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from bestofl.cli import main as cli_main
from bestofl.config import ConfigError, load_config
from bestofl.evaluation import allocation, allocation_order, default_budgets, evaluate
from bestofl.pool import to_table, write_pool
from bestofl.storage import OutputExistsError
from pipelines.evaluate import run

LANGS = ["de", "en", "fr", "sw"]
RESULT_KEYS = {"target_lang", "pool", "selector", "budget", "accuracy", "ci_low", "ci_high",
               "n_questions"}


def make_rows(n_questions: int = 12, per_lang: int = 4, langs=LANGS, seed: int = 0,
              skill: dict[str, float] | None = None, shift: dict[str, float] | None = None):
    """A pool where language l answers correctly with probability skill[l]; scores are
    informative (correct +1) plus a per-language offset `shift` (miscalibration)."""
    rng = random.Random(seed)
    skill = skill or {lang: 0.3 + 0.15 * i for i, lang in enumerate(langs)}
    shift = shift or {}
    rows = []
    for q in range(n_questions):
        for lang in langs:
            for i in range(per_lang):
                ok = rng.random() < skill[lang]
                answer = "42" if ok else str(rng.randint(1, 4))
                rows.append(dict(qid=f"q{q:02d}", question_lang=lang, response_lang=lang,
                                 sample_idx=i, model="m", method="test", response="...",
                                 answer=answer, gold="42", correct=ok,
                                 score=rng.gauss(ok * 1.0, 1.0) + shift.get(lang, 0.0)))
    return rows


def cfg_for(**overrides):
    base = {"input": "unused", "output": "unused", "bootstrap": 100, "monte_carlo": 50,
            "plots": False, "score_provenance": "cross_fit"}
    base.update(overrides)
    return load_config("evaluate", None, [f"{k}={json.dumps(v) if isinstance(v, list) else v}"
                                          for k, v in base.items()])


# ------------------------------------------------------------------ allocation
def test_round_robin_allocation():
    capacity = {lang: 4 for lang in LANGS}
    order = allocation_order(LANGS, "fr", capacity)
    assert order[:4] == ["fr", "sw", "de", "en"]  # starts at the target, wraps around
    assert allocation(order, 1) == {"fr": 1}
    assert allocation(order, len(LANGS)) == {lang: 1 for lang in ["fr", "sw", "de", "en"]}
    for k in range(1, len(order) + 1):
        shares = allocation(order, k)
        assert sum(shares.values()) == k  # never more than the budget
        assert max(shares.values()) - min(shares.get(lang, 0) for lang in LANGS) <= 1  # fair
    with pytest.raises(ValueError, match="exceeds"):
        allocation(order, len(order) + 1)


def test_allocation_respects_capacity_and_weights():
    order = allocation_order(LANGS, "de", {"de": 3, "en": 1, "fr": 3, "sw": 0})
    assert Counter(order) == {"de": 3, "en": 1, "fr": 3}  # exhausted languages are skipped
    assert order == ["de", "en", "fr", "de", "fr", "de", "fr"]
    weights = {"de": 0.2, "en": 0.8, "fr": 0.4, "sw": 0.0}
    order = allocation_order(LANGS, "de", {lang: 10 for lang in LANGS}, weights)
    assert order[0] == "en"  # the strongest language first
    shares = allocation(order, 14)
    assert shares == {"en": 8, "fr": 4, "de": 2}  # proportional to the weights (D'Hondt)
    assert "sw" not in allocation(order, 30)  # a zero weight waits until the rest run out
    with pytest.raises(ValueError, match="not in the language set"):
        allocation_order(["de", "en"], "fr", {"de": 1, "en": 1})


def test_default_budgets():
    assert default_budgets([4, 6, 20]) == [1, 2, 4, 6, 8, 16, 20]
    assert default_budgets([1]) == [1]


# ------------------------------------------------------------------ bookkeeping
@pytest.fixture(scope="module")
def pool_rows():
    return make_rows()


def test_mono_vs_cross_bookkeeping(pool_rows):
    ev = evaluate(to_table(pool_rows), cfg_for())
    assert ev.budgets == [1, 2, 4, 8, 16]  # mono holds 4, cross 16
    for t in LANGS:
        mono, cross = ev.plans[(t, "mono")], ev.plans[(t, "cross")]
        assert mono["budgets"] == [1, 2, 4] and cross["budgets"] == [1, 2, 4, 8, 16]
        assert all(set(a) == {t} for a in mono["allocation"].values())
        assert cross["allocation"][4] == {lang: 1 for lang in LANGS}
        assert cross["allocation"][16] == {lang: 4 for lang in LANGS}
        for sel in ev.selectors:  # k=1: both draw one response in t (same random numbers)
            assert np.array_equal(ev.values[(t, "mono", sel, 1)], ev.values[(t, "cross", sel, 1)])
    # Full cross budget = every response of the question: plain recomputation.
    by_q: dict[str, list] = {}
    for r in pool_rows:
        by_q.setdefault(r["qid"], []).append(r)
    oracle = np.mean([any(r["correct"] for r in rs) for rs in by_q.values()])
    random_acc = np.mean([np.mean([r["correct"] for r in rs]) for rs in by_q.values()])
    best = np.mean([max(rs, key=lambda r: r["score"])["correct"] for rs in by_q.values()])
    got = {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r["accuracy"]
           for r in ev.results}
    for t in LANGS:
        assert got[(t, "cross", "oracle", 16)] == pytest.approx(oracle)
        assert got[(t, "cross", "random", 16)] == pytest.approx(random_acc)
        assert got[(t, "cross", "rm_best", 16)] == pytest.approx(best)
        mono_rate = np.mean([r["correct"] for r in pool_rows if r["response_lang"] == t])
        assert got[(t, "mono", "random", 1)] == pytest.approx(mono_rate)
    assert len(ev.results) == len(LANGS) * 5 * (3 + 5)


def test_ragged_pool_questions_and_capacity(pool_rows):
    rows = [r for r in pool_rows if not (r["qid"] == "q00" and r["response_lang"] == "sw")]
    rows = [r for r in rows if not (r["qid"] == "q01" and r["response_lang"] == "en"
                                    and r["sample_idx"] == 3)]
    ev = evaluate(to_table(rows), cfg_for(selectors=["random", "oracle"]))
    assert ev.plans[("sw", "mono")]["n_questions"] == 11  # q00 has nothing in sw
    assert ev.plans[("de", "mono")]["n_questions"] == 12
    assert ev.plans[("en", "mono")]["capacity"] == 3  # q01 holds 3 in en
    assert ev.plans[("de", "cross")]["capacity"] == 4 + 3 + 4 + 0  # sw: q00 holds none
    assert any("leaves out ['sw']" in n for n in ev.notices)
    assert all(r["n_questions"] == (11 if r["target_lang"] == "sw" else 12) for r in ev.results)


def test_error_rows_are_drawn_without_an_answer():
    rows = []
    for q in range(3):
        rows.append(dict(qid=f"q{q}", question_lang="en", response_lang="en", sample_idx=0,
                         model="m", method="t", response="...", answer="3", gold="3", correct=True))
        rows.append(dict(qid=f"q{q}", question_lang="en", response_lang="en", sample_idx=1,
                         model="m", method="t", response="", answer="3", gold="3", correct=True,
                         error="timeout"))  # an error row never counts, whatever it says
    ev = evaluate(to_table(rows), cfg_for(selectors=["random", "majority", "oracle"]))
    got = {(r["selector"], r["budget"]): r["accuracy"] for r in ev.results if r["pool"] == "mono"}
    assert got[("random", 1)] == 0.5 and got[("oracle", 1)] == 0.5
    assert got[("majority", 2)] == 1.0 and got[("oracle", 2)] == 1.0
    assert any("3 row(s) carry an error" in n for n in ev.notices)


def test_questions_without_gold_are_left_out(pool_rows):
    rows = [dict(r, correct=None, gold=None) if r["qid"] == "q05" else r for r in pool_rows]
    ev = evaluate(to_table(rows), cfg_for(selectors=["oracle"]))
    assert {r["n_questions"] for r in ev.results} == {11}
    assert any("1 question(s) without a gold answer" in n for n in ev.notices)


def test_unscored_pool_skips_rm_selectors(pool_rows):
    rows = [dict(r, score=None) for r in pool_rows]
    ev = evaluate(to_table(rows), cfg_for())
    assert ev.selectors == ["random", "majority", "oracle"]
    assert any("rm_best, rm_vote skipped" in n for n in ev.notices)
    with pytest.raises(ValueError, match="no selector left"):
        evaluate(to_table(rows), cfg_for(selectors=["rm_best"]))


def test_score_provenance_warning(pool_rows):
    table = to_table(pool_rows)
    assert not any("WARNING" in n for n in evaluate(table, cfg_for()).notices)
    unknown = evaluate(table, cfg_for(score_provenance="null")).notices
    assert any("WARNING: score_provenance is not set" in n for n in unknown)
    leaked = evaluate(table, cfg_for(score_provenance="in_sample")).notices
    assert any("optimistic" in n for n in leaked)
    quiet = evaluate(table, cfg_for(score_provenance="null", selectors=["majority"])).notices
    assert not any("WARNING" in n for n in quiet)  # no scores used, nothing to warn about


def test_calibration_repairs_shifted_scores():
    # fr answers badly but its scores are shifted up: uncalibrated rm_best trusts fr.
    rows = make_rows(n_questions=40, langs=["de", "fr"], skill={"de": 0.8, "fr": 0.2},
                     shift={"fr": 5.0}, seed=2)
    stats = {"score_stats": {"de": {"mean": 0.8, "std": 1.1}, "fr": {"mean": 5.2, "std": 1.1}},
             "lang_accuracy": {"de": 0.8, "fr": 0.2}}
    plain = evaluate(to_table(rows), cfg_for(selectors=["rm_best"], budgets=[8]))
    calib = evaluate(to_table(rows), cfg_for(selectors=["rm_best"], budgets=[8], calibrate="true"),
                     stats)
    acc = lambda ev: next(r["accuracy"] for r in ev.results
                          if r["pool"] == "cross" and r["target_lang"] == "de")
    assert acc(calib) > acc(plain) + 0.2
    weighted = evaluate(to_table(rows), cfg_for(selectors=["oracle"], allocation="weighted",
                                                    budgets=[1, 5]), stats)
    # k=1 goes to the stronger language, not to the target
    assert weighted.plans[("fr", "cross")]["allocation"][1] == {"de": 1}
    assert weighted.plans[("fr", "cross")]["allocation"][5] == {"de": 4, "fr": 1}


def test_bad_input_fails_before_work(pool_rows, tmp_path):
    table = to_table(pool_rows)
    with pytest.raises(ConfigError, match="selectors"):
        cfg_for(selectors=["best_of_all"])
    with pytest.raises(ConfigError, match="budgets"):
        cfg_for(budgets=[0, 2])
    with pytest.raises(ConfigError, match="allocation"):
        cfg_for(allocation="greedy")
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        evaluate(table, cfg_for(languages=["xx"]))
    with pytest.raises(ValueError, match=r"\['ja'\] not in the pool"):
        evaluate(table, cfg_for(languages=["ja"]))
    with pytest.raises(ValueError, match="budget.*17.*at most 16"):
        evaluate(table, cfg_for(budgets=[4, 17]))
    with pytest.raises(ValueError, match="rm_stats"):
        evaluate(table, cfg_for(allocation="weighted"))
    with pytest.raises(ValueError, match="score_stats.*lacks"):
        evaluate(table, cfg_for(calibrate="true"), {"score_stats": {"de": {"mean": 0, "std": 1}}})
    with pytest.raises(ValueError, match="not in cross_languages"):
        evaluate(table, cfg_for(languages=["sw"], cross_languages=["de", "en"]))
    subset = evaluate(table, cfg_for(selectors=["oracle"], cross_languages=["en", "de"]))
    assert subset.languages == ["de", "en"]  # default targets: the languages of L
    assert subset.plans[("de", "cross")]["allocation"][2] == {"de": 1, "en": 1}
    # Through the CLI: a clear message, exit 2, no output written.
    pool_dir = tmp_path / "pool"
    write_pool(table, str(pool_dir))
    out = tmp_path / "report"
    assert cli_main(["evaluate", f"input={pool_dir}", f"output={out}", "budgets=[99]"]) == 2
    assert not out.exists()


# ------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def report_dir(pool_rows, tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    write_pool(to_table(pool_rows), str(base / "pool"))
    cfg = load_config("evaluate", None, [f"input={base / 'pool'}", f"output={base / 'report'}",
                                         "monte_carlo=50", "bootstrap=200"])
    report = run(cfg)
    return base, cfg, report


def test_report_files_and_schema(report_dir):
    base, cfg, report = report_dir
    out = base / "report"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk) == {"languages", "budgets", "results", "config"}
    assert on_disk["languages"] == LANGS and on_disk["budgets"] == [1, 2, 4, 8, 16]
    assert on_disk["config"]["input"] == cfg.input
    for r in on_disk["results"]:
        assert set(r) == RESULT_KEYS
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0
        assert r["pool"] in ("mono", "cross") and r["n_questions"] == 12
    assert any(r["ci_low"] < r["ci_high"] for r in on_disk["results"])  # real intervals
    md = (out / "report.md").read_text()
    assert "## Target de (12 questions)" in md and "| k | random mono | random cross" in md
    assert "WARNING: score_provenance is not set" in md  # the default config says nothing
    png = (out / "accuracy_vs_budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert (out / "_SUCCESS").exists() and (out / "_config.yaml").exists()


def test_report_is_not_overwritten_silently(report_dir):
    base, cfg, _ = report_dir
    before = (base / "report" / "report.json").read_text()
    with pytest.raises(OutputExistsError):
        run(cfg)
    assert (base / "report" / "report.json").read_text() == before
    cfg.overwrite, cfg.plots = True, False
    run(cfg)
    assert json.loads((base / "report" / "report.json").read_text())["results"] == \
        json.loads(before)["results"]  # same seed, same numbers
