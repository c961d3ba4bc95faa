"""Budgets, allocation, mono vs cross bookkeeping, errors, and the `evaluate` report."""
from __future__ import annotations

import importlib.util
import json
import random
import struct

import numpy as np
import pandas as pd
import pytest

from bestofl import bootstrap
from bestofl.cli import main as cli_main
from bestofl.config import ConfigError, load_config
from bestofl.evaluation import default_budgets, evaluate, pool_arrays
from bestofl.selection import Draw, Schedule
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
def test_uniform_schedule_draws():
    # 4 languages, target 1 (en): rounds of one response per language
    sched = Schedule(1, ((1, 0, 2, 3),) * 3, True, 4)
    assert sched.capacity == 12
    assert sched.draw(1) == Draw((0, 1, 0, 0))
    d2 = sched.draw(2)  # the target plus one partner chosen uniformly from the other 3
    assert d2 == Draw((0, 1, 0, 0), (0, 2, 3), 1)
    assert sorted(d2.allocations()) == [(0, 1, 0, 1), (0, 1, 1, 0), (1, 1, 0, 0)]
    assert d2.mean().tolist() == [1 / 3, 1, 1 / 3, 1 / 3]
    assert sched.draw(4) == Draw((1, 1, 1, 1))
    # k > |L|: floor(k/|L|) each, the remainder by the same rule
    assert sched.draw(7) == Draw((1, 2, 1, 1), (0, 2, 3), 2)
    assert all(sum(a) == 7 for a in sched.draw(7).allocations())
    # unequal capacities: a language drops out of the rounds once it is used up
    ragged = Schedule(0, ((0, 1, 2), (0, 2), (0,)), True, 3)
    assert ragged.capacity == 6 and ragged.draw(4) == Draw((2, 1, 1))
    assert ragged.draw(5) == Draw((2, 1, 2)) and ragged.draw(6) == Draw((3, 1, 2))
    spent = Schedule(0, ((0, 1, 2), (1, 2)), True, 3)  # the target ran out first
    assert spent.draw(4) == Draw((1, 1, 1), (1, 2), 1)
    rr = Schedule(0, ((0, 2, 1),) * 2, False, 3)  # round_robin: the fixed order
    assert [rr.draw(k) for k in (1, 2, 4)] == [Draw((1, 0, 0)), Draw((1, 0, 1)),
                                               Draw((2, 1, 1))]
    with pytest.raises(ValueError, match="outside"):
        sched.draw(13)


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
        assert mono.budgets == [1, 2, 4] and cross.budgets == [1, 2, 4, 8, 16]
        assert all(mono.describe(k) == f"{t}:{k}" for k in mono.budgets)
        others = ",".join(x for x in LANGS if x != t)
        assert cross.describe(2) == f"{t}:1 + 1 of {{{others}}}"
        assert cross.describe(4) == " ".join(f"{x}:1" for x in LANGS)
        assert cross.describe(16) == " ".join(f"{x}:4" for x in LANGS)
        for sel in ev.selectors:  # k=1: both draw one response in t (same random numbers)
            np.testing.assert_allclose(ev.values[(t, "mono", sel, 1)],
                                       ev.values[(t, "cross", sel, 1)], atol=1e-12)
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
    assert len(ev.results) == len(LANGS) * 6 * (3 + 5)
    # paired differences: cross - mono on every shared budget, and their mean over targets
    assert len(ev.differences) == len(LANGS) * 6 * 3
    for d in ev.differences:
        key = (d["target_lang"], d["selector"], d["budget"])
        assert d["diff"] == pytest.approx(got[(key[0], "cross", key[1], key[2])] -
                                          got[(key[0], "mono", key[1], key[2])])
        assert d["ci_low"] <= d["ci_high"]
        if d["budget"] == 1:  # both arms draw one response in t: identical, so exactly 0
            assert d["diff"] == pytest.approx(0) and d["ci_low"] == pytest.approx(0)
    means = {(d["selector"], d["budget"]): d for d in ev.mean_differences}
    assert means[("oracle", 4)]["diff"] == pytest.approx(np.mean(
        [d["diff"] for d in ev.differences if d["selector"] == "oracle" and d["budget"] == 4]))


def test_ragged_pool_questions_and_capacity(pool_rows):
    rows = [r for r in pool_rows if not (r["qid"] == "q00" and r["response_lang"] == "sw")]
    rows = [r for r in rows if not (r["qid"] == "q01" and r["response_lang"] == "en"
                                    and r["sample_idx"] == 3)]
    ev = evaluate(to_table(rows), cfg_for(selectors=["random", "oracle"]))
    assert ev.plans[("sw", "mono")].n_questions == 11  # q00 has nothing in sw
    assert ev.plans[("de", "mono")].n_questions == 12
    assert ev.plans[("en", "mono")].capacity == 3  # q01 holds 3 in en
    assert ev.plans[("de", "cross")].capacity == 4 + 3 + 4 + 0  # sw: q00 holds none
    assert ev.plans[("de", "cross")].describe(11) == "de:4 en:3 fr:4"
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
    single = evaluate(to_table([r for r in pool_rows if r["qid"] == "q00"]), cfg_for())
    assert "lang_prior" not in single.selectors and "majority" in single.selectors
    assert any("one question: rm_vote, lang_prior skipped" in n for n in single.notices)


def test_unscored_pool_skips_rm_selectors(pool_rows):
    rows = [dict(r, score=None) for r in pool_rows]
    ev = evaluate(to_table(rows), cfg_for())
    assert ev.selectors == ["random", "majority", "lang_prior", "oracle"]
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
    plain = evaluate(to_table(rows), cfg_for(selectors=["rm_best"], budgets=[8]))
    calib = evaluate(to_table(rows), cfg_for(selectors=["rm_best"], budgets=[8], calibrate="true"))
    acc = lambda ev: next(r["accuracy"] for r in ev.results
                          if r["pool"] == "cross" and r["target_lang"] == "de")
    assert acc(calib) > acc(plain) + 0.2


def test_rm_vote_ignores_a_constant_shift_of_scores():
    rows = make_rows(n_questions=20, seed=4)
    shifted = [dict(r, score=r["score"] + 7.5) for r in rows]
    cfg = cfg_for(selectors=["rm_vote", "rm_best"], budgets=[2, 4, 8])
    a, b = evaluate(to_table(rows), cfg), evaluate(to_table(shifted), cfg)
    for x, y in zip(a.results, b.results):
        assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-9)
    # sigmoid weights would move: the calibrated ones do not
    pa_, pb_ = pool_arrays(to_table(rows), LANGS, 0), pool_arrays(to_table(shifted), LANGS, 0)
    np.testing.assert_allclose(pa_.weight, pb_.weight, atol=1e-9)


def test_fitted_statistics_never_see_the_evaluated_question():
    """Leakage: flipping every label of one question changes nothing that is used for it
    (its calibrated weights and its language ranks), while other folds' statistics move."""
    rows = make_rows(n_questions=30, seed=5)
    before = pool_arrays(to_table(rows), LANGS, 0, folds=5)
    q = before.qids.index("q07")
    flipped = [dict(r, correct=not r["correct"], answer="42" if not r["correct"] else "0")
               if r["qid"] == "q07" else r for r in rows]
    after = pool_arrays(to_table(flipped), LANGS, 0, folds=5)
    assert before.qids == after.qids and before.fold[q] == after.fold[q]
    np.testing.assert_array_equal(np.sort(before.weight[q]), np.sort(after.weight[q]))
    np.testing.assert_array_equal(before.lang_rank[q], after.lang_rank[q])
    others = before.fold != before.fold[q]
    assert not np.allclose(before.weight[others], after.weight[others])  # the test can fail


def test_lang_prior_picks_the_strongest_language():
    # sw is right 95% of the time, the rest 30%: lang_prior cross at k=4 takes sw's answer
    rows = make_rows(n_questions=30, seed=6,
                     skill={"de": 0.3, "en": 0.3, "fr": 0.3, "sw": 0.95})
    ev = evaluate(to_table(rows), cfg_for(selectors=["lang_prior", "majority"], budgets=[1, 4],
                                          monte_carlo=100))
    got = {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r["accuracy"]
           for r in ev.results}
    sw_rate = got[("sw", "mono", "majority", 1)]
    for t in LANGS:
        assert got[(t, "cross", "lang_prior", 4)] == pytest.approx(sw_rate, abs=1e-9)
        assert got[(t, "mono", "lang_prior", 4)] == pytest.approx(got[(t, "mono", "majority", 4)])
    assert got[("de", "cross", "lang_prior", 4)] > got[("de", "cross", "majority", 4)]


def test_filters_and_mixed_pools(pool_rows):
    other = [dict(r, model="m2", method="other") for r in pool_rows if r["response_lang"] == "en"]
    posed = [dict(r, question_lang="en", sample_idx=r["sample_idx"] + 10) for r in pool_rows
             if r["response_lang"] == "de"]
    table = to_table(pool_rows + other + posed)
    mixed = evaluate(table, cfg_for(selectors=["oracle"], budgets=[1]))
    assert any("mixes models ['m', 'm2']" in n for n in mixed.notices)
    assert any("mixes methods ['other', 'test']" in n for n in mixed.notices)
    assert any("responses in ['de'] come from questions posed in several" in n
               for n in mixed.notices)
    one = evaluate(table, cfg_for(selectors=["oracle"], budgets=[1], models=["m"],
                                  methods=["test"], question_langs=["de", "en", "fr", "sw"]))
    assert not any("WARNING" in n for n in one.notices)
    assert one.plans[("de", "mono")].capacity == 8  # question_langs keeps both de setups
    only_de = evaluate(table, cfg_for(selectors=["oracle"], budgets=[1], models=["m"],
                                      methods=["test"], question_langs=["de", "fr", "sw"]))
    assert only_de.plans[("de", "mono")].capacity == 4 and "en" not in only_de.languages
    with pytest.raises(ValueError, match=r"models \['m3'\] not in the pool"):
        evaluate(table, cfg_for(models=["m3"]))
    # with rm_stats, the reward model's training questions are left out
    ev = evaluate(to_table(pool_rows), cfg_for(selectors=["oracle"]),
                  {"train_qids": ["q00", "q01", "zz"]})
    assert {r["n_questions"] for r in ev.results} == {10} and "q00" not in ev.qids
    assert any("2 question(s) the reward model trained on" in n for n in ev.notices)


def test_token_budgets(tmp_path):
    rows = make_rows(n_questions=6, langs=["de", "en"])
    rows = [dict(r, num_tokens=100 if r["response_lang"] == "de" else 300) for r in rows]
    ev = evaluate(to_table(rows), cfg_for(selectors=["oracle"], budget_unit="tokens",
                                          budgets=[1, 2, 3]))
    tok = {(r["target_lang"], r["pool"], r["budget"]): r["tokens"] for r in ev.results}
    assert tok[("de", "mono", 2)] == pytest.approx(200)
    assert tok[("de", "cross", 2)] == pytest.approx(400)  # one de + one en
    assert tok[("en", "cross", 3)] == pytest.approx(300 + 300 + 100)  # en:2 de:1
    from bestofl.report import report_markdown, write_report

    md = report_markdown(ev, cfg_for(selectors=["oracle"], budget_unit="tokens"))
    assert "| tokens mono | tokens cross |" in md and "| 2 | " in md
    write_report(str(tmp_path), ev, cfg_for(selectors=["oracle"], budget_unit="tokens",
                                            plots="true"))
    assert (tmp_path / "accuracy_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 3
    with pytest.raises(ValueError, match="num_tokens"):
        evaluate(to_table(make_rows(n_questions=3)), cfg_for(budget_unit="tokens"))


def test_bad_input_fails_before_work(pool_rows, tmp_path):
    table = to_table(pool_rows)
    with pytest.raises(ConfigError, match="selectors"):
        cfg_for(selectors=["best_of_all"])
    with pytest.raises(ConfigError, match="budgets"):
        cfg_for(budgets=[0, 2])
    with pytest.raises(ConfigError, match="allocation"):
        cfg_for(allocation="greedy")
    with pytest.raises(ConfigError, match="weighted was removed"):
        cfg_for(allocation="weighted")
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        evaluate(table, cfg_for(languages=["xx"]))
    with pytest.raises(ValueError, match=r"\['ja'\] not in the pool"):
        evaluate(table, cfg_for(languages=["ja"]))
    with pytest.raises(ValueError, match="budget.*17.*at most 16"):
        evaluate(table, cfg_for(budgets=[4, 17]))
    with pytest.raises(ValueError, match="needs order"):
        evaluate(table, cfg_for(allocation="round_robin"))
    with pytest.raises(ValueError, match="only applies to allocation=round_robin"):
        evaluate(table, cfg_for(order=["de", "en", "fr", "sw"]))
    with pytest.raises(ValueError, match="not in cross_languages"):
        evaluate(table, cfg_for(languages=["sw"], cross_languages=["de", "en"]))
    subset = evaluate(table, cfg_for(selectors=["oracle"], cross_languages=["en", "de"]))
    assert subset.languages == ["de", "en"]  # default targets: the languages of L
    assert subset.plans[("de", "cross")].describe(2) == "de:1 en:1"
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
    assert set(on_disk) == {"languages", "budgets", "results", "differences",
                            "mean_differences", "config"}
    assert on_disk["languages"] == LANGS and on_disk["budgets"] == [1, 2, 4, 8, 16]
    assert on_disk["config"]["input"] == cfg.input
    for r in on_disk["results"]:
        assert set(r) == RESULT_KEYS
        assert 0.0 <= r["ci_low"] <= r["ci_high"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["pool"] in ("mono", "cross") and r["n_questions"] == 12
    assert any(r["ci_low"] < r["ci_high"] for r in on_disk["results"])  # real intervals
    for d in on_disk["differences"]:
        assert set(d) == {"target_lang", "selector", "budget", "diff", "ci_low", "ci_high"}
    per_q = pd.read_parquet(out / "per_question.parquet")
    assert list(per_q.columns) == ["target_lang", "pool", "selector", "budget", "qid", "accuracy"]
    assert len(per_q) == 12 * len(on_disk["results"])
    mean = per_q.groupby(["target_lang", "pool", "selector", "budget"])["accuracy"].mean()
    for r in on_disk["results"]:
        assert mean[(r["target_lang"], r["pool"], r["selector"], r["budget"])] == \
            pytest.approx(r["accuracy"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # the budget plot and the forest plot
    assert "Target sw" in page and "cross - mono" in page and "<script" not in page
    assert (out / "differences.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "## Target de (12 questions)" in md and "| k | random mono | random cross" in md
    assert "## Cross - mono at equal budget (paired)" in md
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


def test_scored_pool_records_its_provenance(pool_rows, tmp_path):
    pool_dir = tmp_path / "pool"
    write_pool(to_table(pool_rows), str(pool_dir))
    marker = pool_dir / "_SUCCESS"
    summary = json.loads(marker.read_text() or "{}") if marker.exists() else {}
    marker.write_text(json.dumps({**summary, "score_provenance": "cross_fit"}))
    cfg = load_config("evaluate", None, [f"input={pool_dir}", f"output={tmp_path / 'r'}",
                                         "bootstrap=0", "monte_carlo=5", "plots=false"])
    report = run(cfg)
    assert report["config"]["score_provenance"] == "cross_fit"
    assert "WARNING: score_provenance" not in (tmp_path / "r" / "report.md").read_text()


def test_headline_numbers_go_to_mlflow(pool_rows, tmp_path, monkeypatch):
    """tracker=mlflow with a local file store: one run holding, per budget (the step), each
    selector's mean cross - mono difference and every accuracy, plus the report files."""
    from mlflow import MlflowClient

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
    write_pool(to_table(pool_rows), str(tmp_path / "pool"))
    cfg = load_config("evaluate", None, [f"input={tmp_path / 'pool'}", f"output={tmp_path / 'r'}",
                                         "bootstrap=0", "monte_carlo=5", "plots=false",
                                         "tracker=mlflow", "tracker_project=evals"])
    report = run(cfg)
    client = MlflowClient(f"file:{store}")
    [logged] = client.search_runs([client.get_experiment_by_name("evals").experiment_id])
    assert logged.info.run_name == "r" and logged.info.status == "FINISHED"
    assert logged.data.params["selectors"] == str(cfg.selectors)

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    assert report["mean_differences"]
    for sel in {d["selector"] for d in report["mean_differences"]}:
        assert history(f"cross_minus_mono/{sel}") == pytest.approx(
            {d["budget"]: d["diff"] for d in report["mean_differences"] if d["selector"] == sel})
    for r in report["results"]:
        key = f"accuracy/{r['pool']}/{r['selector']}/{r['target_lang']}"
        assert history(key)[r["budget"]] == pytest.approx(r["accuracy"])
    assert len(logged.data.metrics) == len({(r["pool"], r["selector"], r["target_lang"])
                                            for r in report["results"]}) + len(
        {d["selector"] for d in report["mean_differences"]})
    artifacts = client.download_artifacts(logged.info.run_id, "", str(tmp_path / "back"))
    for name in ("report.json", "report.html"):
        assert (tmp_path / "back" / name).read_text() == (tmp_path / "r" / name).read_text()
    assert artifacts


def test_headline_numbers_go_to_wandb_offline(pool_rows, tmp_path, monkeypatch, fresh_wandb):
    """tracker=wandb offline (no network): the run file holds, per budget (the step), each
    selector's mean cross - mono difference and every accuracy; the report files are saved."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    write_pool(to_table(pool_rows), str(tmp_path / "pool"))
    cfg = load_config("evaluate", None, [f"input={tmp_path / 'pool'}", f"output={tmp_path / 'r'}",
                                         "bootstrap=0", "monte_carlo=5", "plots=false",
                                         "tracker=wandb", "tracker_project=evals"])
    report = run(cfg)
    wandb.teardown()  # as at the driver's exit: finish() only tells W&B's service the run ended
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    [run_file] = run_dir.glob("run-*.wandb")
    records = {}
    for record in wandb_records(run_file):
        records.setdefault(record.WhichOneof("record_type"), []).append(record)
    [info] = records["run"]
    assert (info.run.project, info.run.display_name) == ("evals", "r")
    config = {i.key: json.loads(i.value_json) for i in info.run.config.update}
    assert config["selectors"] == list(cfg.selectors)
    assert [r.exit.exit_code for r in records["exit"]] == [0]

    steps = [r.history.step.num for r in records["history"]]
    assert steps == sorted({r["budget"] for r in report["results"]})  # one per budget, in order
    logged = {(item.key or "/".join(item.nested_key), r.history.step.num):
              json.loads(item.value_json) for r in records["history"] for item in r.history.item}
    logged = {k: v for k, v in logged.items() if not k[0].startswith("_")}  # W&B's _step, ...
    assert report["mean_differences"]
    expected = {(f"cross_minus_mono/{d['selector']}", d["budget"]): d["diff"]
                for d in report["mean_differences"]}
    expected.update({(f"accuracy/{r['pool']}/{r['selector']}/{r['target_lang']}", r["budget"]):
                     r["accuracy"] for r in report["results"]})
    assert logged == pytest.approx(expected)
    saved = {f.path for r in records["files"] for f in r.files.files}
    for name in ("report.json", "report.html"):  # a real file: uploaded when synced
        assert name in saved
        assert not (run_dir / "files" / name).is_symlink()
        assert (run_dir / "files" / name).read_text() == (tmp_path / "r" / name).read_text()


def wandb_records(run_file) -> list:
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (crc32, length, type: 1 whole record,
    2/3/4 its first/middle/last part); a block's last < 7 bytes are padding. The file is
    whole once W&B's service has stopped (wandb.teardown)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeros past the last record
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(parts))
            parts = b""
    return records


def test_tracker_needs_its_package_and_store(pool_rows, tmp_path, monkeypatch):
    write_pool(to_table(pool_rows), str(tmp_path / "pool"))
    with pytest.raises(ConfigError, match="tracker"):
        cfg_for(tracker="neptune")
    # MLflow 3 refuses a file store without its opt-in: said before any work.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config("evaluate", None, [f"input={tmp_path / 'pool'}",
                                         f"output={tmp_path / 'r'}", "tracker=mlflow"])
    with pytest.raises(ValueError, match="MLFLOW_ALLOW_FILE_STORE"):
        run(cfg)
    assert not (tmp_path / "r").exists()
    # Asked for, not installed (hidden here): say so first.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    cfg = load_config("evaluate", None, [f"input={tmp_path / 'pool'}",
                                         f"output={tmp_path / 'r'}", "tracker=wandb"])
    with pytest.raises(ValueError, match="pip install wandb"):
        run(cfg)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ intervals
def test_bootstrap_matches_a_plain_loop():
    values = np.random.default_rng(1).random((3, 17))
    members = np.ones((2, 17))
    members[1, :5] = 0  # the second group of rows covers 12 of the 17 questions
    group = np.array([0, 1, 1])
    values[1:, :5] = 0.0
    counts = bootstrap.resample_counts(17, 300, np.random.default_rng(5))
    lo, hi = bootstrap.interval(bootstrap.resampled_means(values, counts, members, group), 0.9)
    idx = np.random.default_rng(5).integers(0, 17, size=(300, 17))
    for e in range(3):
        loop = []
        for b in range(300):
            picked = [i for i in idx[b] if members[group[e], i]]
            loop.append(sum(values[e, i] for i in picked) / len(picked))
        np.testing.assert_allclose([lo[e], hi[e]], np.quantile(loop, [0.05, 0.95]), atol=1e-12)


def test_evaluate_intervals_are_paired_resamples_of_questions(pool_rows):
    cfg = cfg_for(bootstrap=200, selectors=["random", "majority"])
    ev = evaluate(to_table(pool_rows), cfg)
    idx = np.random.default_rng(cfg.seed).integers(0, 12, size=(200, 12))

    def loop_ci(v):
        return np.quantile([v[i].mean() for i in idx], [0.025, 0.975])

    for r in ev.results[::7]:
        v = ev.values[(r["target_lang"], r["pool"], r["selector"], r["budget"])]
        np.testing.assert_allclose([r["ci_low"], r["ci_high"]], loop_ci(v), atol=1e-12)
    for d in ev.differences[::5]:
        t, s, k = d["target_lang"], d["selector"], d["budget"]
        paired = ev.values[(t, "cross", s, k)] - ev.values[(t, "mono", s, k)]
        np.testing.assert_allclose([d["ci_low"], d["ci_high"]], loop_ci(paired), atol=1e-12)
    m = next(x for x in ev.mean_differences if x["selector"] == "majority" and x["budget"] == 4)
    per_target = [ev.values[(t, "cross", "majority", 4)] - ev.values[(t, "mono", "majority", 4)]
                  for t in LANGS]
    np.testing.assert_allclose([m["ci_low"], m["ci_high"]],
                               loop_ci(np.mean(per_target, axis=0)), atol=1e-12)
