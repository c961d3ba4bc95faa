"""Real outputs: the s1.1-14B traces, imported and evaluated, against a plain recount.

The recount reads the raw .jsonl.gz files itself and grades the model's part of each
transcript with bestofl.answers; it shares nothing with the pool, the importer or the
vectorised estimators. At a full budget every draw is the whole pool, so majority (Monte
Carlo elsewhere) is exact there and must agree to rounding; at k=2 the uniform cross pool
is English plus one partner drawn uniformly from the other 10, which the recount averages
by hand. Docs: docs/real_data.md.
"""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from bestofl.answers import grade, model_response
from bestofl.config import load_config
from bestofl.importers import import_pool
from pipelines.evaluate import run

MODEL = "s1.1-14B"


def vote(samples: list[tuple[str | None, bool]]) -> float:
    """Majority with ties split evenly; every correct answer is the same answer."""
    totals: dict[str, int] = defaultdict(int)
    for answer, correct in samples:
        if answer is not None:
            totals["GOLD" if correct else answer] += 1
    if not totals:
        return 0.0
    top = max(totals.values())
    tied = [a for a, c in totals.items() if c == top]
    return ("GOLD" in tied) / len(tied)


@pytest.fixture(scope="module")
def recount(shared_data: Path) -> dict[tuple[int, str], list[tuple[str | None, bool]]]:
    samples: dict[tuple[int, str], list] = defaultdict(list)
    for file in sorted((shared_data / "xling-traces" / MODEL).glob("*/*.jsonl.gz")):
        lang = file.name.split(".")[0]
        with gzip.open(file, "rt", encoding="utf-8", newline="") as f:
            lines = [x for x in f.read().split("\n") if x]
        for i, line in enumerate(lines):
            rec = json.loads(line)
            answer, correct = grade(model_response(rec["output"]), str(rec["gold_answer"]), lang)
            samples[(i, lang)].append((answer, bool(correct)))
    return samples


@pytest.fixture(scope="module")
def report(shared_data: Path, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("real")
    import_pool(load_config("import", None, [f"src={shared_data / 'xling-traces' / MODEL}",
                                             f"output={base / 'pool'}", "format=xling-traces"]))
    cfg = load_config("evaluate", None, [f"input={base / 'pool'}", f"output={base / 'report'}",
                                         "bootstrap=100", "monte_carlo=20", "plots=false"])
    return run(cfg)


def test_report_agrees_with_plain_recount(report, recount):
    langs = sorted({lang for _, lang in recount})
    questions = sorted({i for i, _ in recount})
    assert len(langs) == 11 and len(questions) == 250
    got = {(r["target_lang"], r["pool"], r["selector"], r["budget"]): r for r in report["results"]}
    full_cross = sum(len(recount[(0, lang)]) for lang in langs)
    assert full_cross == 63 and full_cross in report["budgets"]
    everything = {i: [s for lang in langs for s in recount[(i, lang)]] for i in questions}
    cross_majority = sum(vote(everything[i]) for i in questions) / len(questions)
    cross_oracle = sum(any(c for _, c in everything[i]) for i in questions) / len(questions)
    for lang in langs:
        per_q = [recount[(i, lang)] for i in questions]
        n = len(per_q[0])
        assert all(len(s) == n for s in per_q)
        accuracy = sum(sum(c for _, c in s) / n for s in per_q) / len(questions)
        majority = sum(vote(s) for s in per_q) / len(questions)
        oracle = sum(any(c for _, c in s) for s in per_q) / len(questions)
        assert got[(lang, "mono", "random", 1)]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert got[(lang, "mono", "majority", n)]["accuracy"] == pytest.approx(majority, abs=1e-9)
        assert got[(lang, "mono", "oracle", n)]["accuracy"] == pytest.approx(oracle, abs=1e-9)
        assert (lang, "mono", "majority", n + 1) not in got  # mono cannot draw more than it has
        assert got[(lang, "cross", "majority", full_cross)]["accuracy"] == \
            pytest.approx(cross_majority, abs=1e-9)
        assert got[(lang, "cross", "oracle", full_cross)]["accuracy"] == \
            pytest.approx(cross_oracle, abs=1e-9)
        assert got[(lang, "mono", "random", 1)]["n_questions"] == 250
    # Sanity on the data itself (Yong et al. report s1.1-14B strongest in high-resource
    # languages): the recount is not degenerate.
    rates = {lang: got[(lang, "mono", "random", 1)]["accuracy"] for lang in langs}
    assert rates["en"] > 0.9 and rates["te"] < rates["en"] and cross_oracle > 0.98
    # Uniform allocation, English at k=2: en plus one partner drawn uniformly from the rest.
    def pass_rate(i: int, lang: str) -> float:
        return sum(c for _, c in recount[(i, lang)]) / len(recount[(i, lang)])

    partners = [lang for lang in langs if lang != "en"]
    oracle_2 = sum(1 - (1 - pass_rate(i, "en")) * (1 - pass_rate(i, lang))
                   for i in questions for lang in partners) / (len(questions) * len(partners))
    assert got[("en", "cross", "oracle", 2)]["accuracy"] == pytest.approx(oracle_2, abs=1e-9)
    # lang_prior over everything: English is the most accurate language in every fold, so
    # it takes the majority of the English responses.
    en_majority = sum(vote(recount[(i, "en")]) for i in questions) / len(questions)
    for lang in langs:
        assert got[(lang, "cross", "lang_prior", full_cross)]["accuracy"] == \
            pytest.approx(en_majority, abs=1e-9)
    # Paired differences and the mean over targets are in the report.
    diffs = {(d["target_lang"], d["selector"], d["budget"]): d for d in report["differences"]}
    d = diffs[("sw", "majority", 5)]
    assert d["diff"] == pytest.approx(got[("sw", "cross", "majority", 5)]["accuracy"] -
                                      got[("sw", "mono", "majority", 5)]["accuracy"])
    assert d["ci_low"] > 0.1  # sw gains far more than noise: the headline is real
    assert {m["budget"] for m in report["mean_differences"]} == {1, 2, 4}  # te holds 4


def test_unscored_real_pool_skips_reward_selectors(report):
    assert {r["selector"] for r in report["results"]} == {"random", "majority", "lang_prior",
                                                          "oracle"}
