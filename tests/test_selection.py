"""Selectors and their expected accuracy: closed forms and Monte Carlo against brute force.

The brute force works from the raw rows (answers, correctness, scores), enumerating every
stratified draw, so it shares no code with the vectorised estimators it checks.
"""
from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from bestofl.evaluation import evaluate
from bestofl.pool import to_table
from bestofl.selection import draw_value, round_robin, vote_weights

LANGS = ["de", "en", "sw"]
SIZES = {"de": 4, "en": 3, "sw": 4}  # responses per question and language


def config(**kw) -> SimpleNamespace:
    base = dict(selectors=["random", "majority", "rm_best", "rm_vote", "lang_prior", "oracle"],
                budgets=[], languages=[], cross_languages=[], allocation="uniform", order=[],
                calibrate=False, folds=5, rm_stats=None, bootstrap=50, confidence=0.9,
                monte_carlo=50, seed=0, score_provenance="cross_fit", input="mem", plots=False)
    base.update(kw)
    return SimpleNamespace(**base)


def random_pool(seed: int, n_questions: int, sizes: dict[str, int]) -> list[dict]:
    """Rows with few distinct answers (so votes tie), null answers, error rows, and
    distinct scores (rm_best has no ties to break)."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_questions):
        p = rng.random()
        for lang, n in sizes.items():
            for i in range(n):
                kind = rng.random()
                if kind < 0.1:
                    answer, error = None, "engine died"
                elif kind < 0.2:
                    answer, error = None, None
                else:
                    answer = "7" if rng.random() < p else rng.choice(["1", "2"])
                    error = None
                rows.append(dict(qid=f"q{q}", question_lang=lang, response_lang=lang,
                                 sample_idx=i, model="m", method="t", response="...",
                                 answer=answer, gold="7", correct=answer == "7", error=error,
                                 score=rng.gauss(0, 2)))
    return rows


def brute_force_draw(rows: list[dict], qid: str, selector: str, plan, k: int) -> float:
    """Mean over every allocation a plan's draw at k can take (all equally likely)."""
    allocs = plan.draw(k).allocations()
    return sum(brute_force(rows, qid, selector,
                           {plan.languages[i]: c for i, c in enumerate(a) if c})
               for a in allocs) / len(allocs)


def brute_force_items(arrays, q: int, selector: str, plan, k: int) -> float:
    """The same from the encoded items (classes, ranks, calibrated weights, language
    ranks), by `draw_value`: for the selectors whose inputs are fitted (rm_vote, lang_prior)."""
    values = []
    for a in plan.draw(k).allocations():
        per_lang = [[int(p) for p in np.flatnonzero(arrays.lang[q] == li)] for li in range(len(a))]
        for parts in itertools.product(*(itertools.combinations(per_lang[li], c)
                                         for li, c in enumerate(a) if c)):
            drawn = [p for part in parts for p in part]
            values.append(draw_value(selector, arrays.cls[q, drawn], drawn,
                                     arrays.weight[q, drawn],
                                     arrays.lang_rank[q, arrays.lang[q, drawn]]))
    return sum(values) / len(values)


def brute_force(rows: list[dict], qid: str, selector: str, alloc: dict[str, int]) -> float:
    """Mean over every draw of k_l responses per language of the selector's correctness."""
    by_lang = {lang: [r for r in rows if r["qid"] == qid and r["response_lang"] == lang]
               for lang in alloc}
    values = []
    for parts in itertools.product(*(itertools.combinations(by_lang[lang], k)
                                     for lang, k in alloc.items())):
        drawn = [r for part in parts for r in part]
        ok = [r["error"] is None and r["correct"] for r in drawn]
        if selector == "random":
            values.append(sum(ok) / len(drawn))
        elif selector == "oracle":
            values.append(float(any(ok)))
        elif selector == "rm_best":
            values.append(float(ok[max(range(len(drawn)), key=lambda i: drawn[i]["score"])]))
        else:
            totals: dict[str, float] = {}
            for r, good in zip(drawn, ok):
                if r["answer"] is None or r["error"] is not None:
                    continue
                w = 1.0 if selector == "majority" else 1 / (1 + math.exp(-r["score"]))
                key = "GOLD" if good else r["answer"]
                totals[key] = totals.get(key, 0.0) + w
            if not totals:
                values.append(0.0)
                continue
            top = max(totals.values())
            tied = [a for a, v in totals.items() if math.isclose(v, top, rel_tol=1e-12)]
            values.append(("GOLD" in tied) / len(tied))
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def small_pool():
    rows = random_pool(3, 5, SIZES)
    return rows, to_table(rows)


def test_closed_forms_equal_brute_force(small_pool):
    rows, table = small_pool
    ev = evaluate(table, config(selectors=["random", "rm_best", "oracle"]))
    checked = 0
    for (t, pool, sel, k), values in ev.values.items():
        qids = sorted({r["qid"] for r in rows})
        expect = [brute_force_draw(rows, q, sel, ev.plans[(t, pool)], k) for q in qids]
        np.testing.assert_allclose(values, expect, atol=1e-12, err_msg=f"{t} {pool} {sel} k={k}")
        checked += 1
    # budgets 1,2,3,4,8,11: mono de 4 + en 3 + sw 4, cross 6 per target; 3 selectors
    assert checked == 3 * (4 + 3 + 4 + 3 * 6)
    # uniform: k=2 is the target plus one partner chosen at random, not a fixed neighbour
    assert sorted(ev.plans[("en", "cross")].draw(2).allocations()) == [(0, 1, 1), (1, 1, 0)]
    assert ev.plans[("en", "cross")].describe(2) == "en:1 + 1 of {de,sw}"


def test_round_robin_keeps_its_fixed_order(small_pool):
    rows, table = small_pool
    ev = evaluate(table, config(selectors=["random", "rm_best", "oracle"],
                                allocation="round_robin", order=["sw", "de", "en"]))
    plan = ev.plans[("de", "cross")]
    assert [plan.describe(k) for k in (1, 2, 3)] == ["de:1", "de:1 en:1", "de:1 en:1 sw:1"]
    assert ev.plans[("sw", "cross")].describe(2) == "de:1 sw:1"
    for (t, pool, sel, k), values in ev.values.items():
        expect = [brute_force_draw(rows, q, sel, ev.plans[(t, pool)], k) for q in ev.qids]
        np.testing.assert_allclose(values, expect, atol=1e-12, err_msg=f"{t} {pool} {sel} k={k}")
    # the same order /solve cycles through (a question in another language: as listed)
    assert round_robin(["sw", "de", "en"], "de") == ["de", "en", "sw"]
    assert round_robin(["sw", "de"], "en") == ["sw", "de"]
    with pytest.raises(ValueError, match="needs order"):
        evaluate(table, config(allocation="round_robin"))
    with pytest.raises(ValueError, match="exactly once"):
        evaluate(table, config(allocation="round_robin", order=["de", "en"]))


@pytest.mark.parametrize("alloc", [{"de": 2, "en": 1, "sw": 3}, {"de": 4, "en": 0, "sw": 1},
                                   {"de": 1, "en": 3, "sw": 4}])
def test_rm_best_exact_for_any_allocation(alloc):
    """The order-statistics form on allocations round-robin never produces."""
    from bestofl.evaluation import pool_arrays
    from bestofl.selection import expected_oracle, expected_random, expected_rm_best

    rows = random_pool(11, 4, {"de": 4, "en": 3, "sw": 4})
    from bestofl.selection import Draw

    arrays = pool_arrays(to_table(rows), LANGS, seed=0)
    vec = [Draw(tuple(alloc[lang] for lang in LANGS))]
    got = {"rm_best": expected_rm_best(arrays.lang, arrays.n, arrays.cls == 0, vec),
           "random": expected_random(arrays.n, arrays.n_correct, vec),
           "oracle": expected_oracle(arrays.n, arrays.n_correct, vec)}
    draw = {lang: k for lang, k in alloc.items() if k}
    for sel, values in got.items():
        expect = [brute_force(rows, q, sel, draw) for q in arrays.qids]
        np.testing.assert_allclose(values[0], expect, atol=1e-12, err_msg=sel)


def test_monte_carlo_votes_match_brute_force(small_pool):
    rows, table = small_pool
    from bestofl.evaluation import pool_arrays

    draws = 3000
    cfg = config(selectors=["majority", "rm_vote", "lang_prior"], monte_carlo=draws,
                 languages=["en"])
    ev = evaluate(table, cfg)
    arrays = pool_arrays(table, LANGS, cfg.seed, cfg.folds)
    qids = sorted({r["qid"] for r in rows})
    worst = 0.0
    for (t, pool, sel, k), values in ev.values.items():
        plan = ev.plans[(t, pool)]
        if sel == "majority":
            expect = np.array([brute_force_draw(rows, q, sel, plan, k) for q in qids])
        else:
            expect = np.array([brute_force_items(arrays, q, sel, plan, k)
                               for q in range(len(qids))])
        # Per-question estimate of a value in [0, 1]: sd <= 0.5 / sqrt(draws) ~ 0.009.
        np.testing.assert_allclose(values, expect, atol=0.045, err_msg=f"{pool} {sel} k={k}")
        worst = max(worst, float(np.abs(values - expect).max()))
        if len(plan.draw(k).allocations()) == 1 and all(
                c in (0, SIZES[lang]) for lang, c in zip(plan.languages, plan.draw(k).fixed)):
            np.testing.assert_allclose(values, expect, atol=1e-12)  # full draw: no randomness
    assert worst > 0  # the estimate is a real Monte Carlo one, not a copy of the truth


def test_draw_value_hand_made():
    # cls: 0 correct, 1.. wrong answers, -1 no answer
    assert draw_value("random", [0, 1, 0, -1]) == 0.5
    assert draw_value("oracle", [1, -1, 0]) == 1.0 and draw_value("oracle", [1, 2]) == 0.0
    assert draw_value("rm_best", [1, 0, 2], rank=[2, 0, 1]) == 1.0
    assert draw_value("rm_best", [1, 0, 2], rank=[0, 1, 2]) == 0.0
    assert draw_value("majority", [0, 1, 1]) == 0.0
    assert draw_value("majority", [0, 0, 1, -1, -1, -1]) == 1.0  # no-answers cast no vote
    assert draw_value("majority", [0, 1]) == 0.5  # tie: expected over a random pick
    assert draw_value("majority", [0, 1, 2]) == pytest.approx(1 / 3)
    assert draw_value("majority", [-1, -1]) == 0.0
    # rm_vote: one confident correct answer outweighs two unsure wrong ones
    assert draw_value("rm_vote", [0, 1, 1], weight=[0.95, 0.3, 0.3]) == 1.0
    assert draw_value("rm_vote", [0, 1, 1], weight=[0.5, 0.3, 0.3]) == 0.0
    # lang_prior: majority among the responses of the best-ranked language drawn
    assert draw_value("lang_prior", [0, 1, 1], lang_rank=[2, 1, 1]) == 1.0
    assert draw_value("lang_prior", [0, 1, 1, 2], lang_rank=[2, 2, 2, 0]) == 0.0
    assert draw_value("lang_prior", [0, 1, 1], lang_rank=[2, 2, 1]) == 0.5  # tie: coin flip
    assert draw_value("lang_prior", [-1, 0], lang_rank=[3, 1]) == 0.0  # its pick has no answer
    with pytest.raises(ValueError, match="unknown selector"):
        draw_value("best_of_all", [0])


def test_selectors_on_hand_made_pool():
    """Two questions, one language, known answers: the whole-pool values are obvious."""
    rows = []
    spec = {"q0": [("5", 0.1), ("5", 0.2), ("9", 3.0)],  # majority right, rm_best wrong
            "q1": [("4", 2.0), ("8", 0.5), ("8", 0.4)]}  # gold 4: rm_best right, majority wrong
    for qid, items in spec.items():
        gold = "5" if qid == "q0" else "4"
        for i, (answer, score) in enumerate(items):
            rows.append(dict(qid=qid, question_lang="en", response_lang="en", sample_idx=i,
                             model="m", method="t", response="...", answer=answer, gold=gold,
                             correct=answer == gold, score=score))
    ev = evaluate(to_table(rows), config(budgets=[3], monte_carlo=5))
    at = {(r["selector"]): r["accuracy"] for r in ev.results if r["pool"] == "mono"}
    assert at["majority"] == 0.5 and at["rm_best"] == 0.5 and at["oracle"] == 1.0
    assert at["random"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert at["lang_prior"] == at["majority"]  # one language: the prior is plain majority
    assert ev.values[("en", "mono", "rm_best", 3)].tolist() == [0.0, 1.0]


def test_vote_weights():  # the endpoint's weights (no labels there)
    w = vote_weights(np.array([-1e4, -1.0, 0.0, 2.0, np.nan]))
    assert np.all(w > 0) and w[2] == 0.5 and w[1] < w[2] < w[3] and w[4] == w[0]


def test_deterministic_and_layout_independent(small_pool):
    rows, table = small_pool
    cfg = config(monte_carlo=40, bootstrap=30)
    first = evaluate(table, cfg).results
    assert evaluate(table, cfg).results == first
    shuffled = rows[:]
    random.Random(5).shuffle(shuffled)
    assert evaluate(to_table(shuffled), cfg).results == first  # canonical row order
    other = evaluate(table, config(monte_carlo=40, bootstrap=30, seed=1)).results
    changed = {r["selector"] for r, o in zip(first, other) if r["accuracy"] != o["accuracy"]}
    # only the Monte Carlo ones (and the folds of their fitted statistics) depend on the seed
    assert "majority" in changed and changed <= {"majority", "rm_vote", "lang_prior"}


def test_rm_best_ties_are_broken_reproducibly():
    rows = [dict(qid=f"q{q}", question_lang="en", response_lang="en", sample_idx=i, model="m",
                 method="t", response="...", answer=str(i), gold="0", correct=i == 0, score=1.0)
            for q in range(20) for i in range(4)]
    table = to_table(rows)
    a = evaluate(table, config(selectors=["rm_best"], budgets=[4], seed=3))
    b = evaluate(table, config(selectors=["rm_best"], budgets=[4], seed=3))
    values = a.values[("en", "mono", "rm_best", 4)]
    assert np.array_equal(values, b.values[("en", "mono", "rm_best", 4)])
    # a seeded pick among equal scores, not always the first row
    assert set(values.tolist()) == {0.0, 1.0} and 0 < values.mean() < 1
