"""Reward-model training data: pairs, pointwise examples, balancing, splits, metrics.

No Ray here: these are the pure functions `bestofl train-rm` builds its datasets with.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest

from bestofl import pool
from bestofl.reward.data import (load_pools, pairwise_examples, pointwise_examples,
                                 question_folds, response_rows, round_robin, split_questions,
                                 training_examples)
from bestofl.reward.model import encode, load_reward_model
from bestofl.reward.training import evaluate_scores, warmup_cosine


def make_rows(spec: dict[str, dict[str, str]]) -> list[dict]:
    """spec: qid -> lang -> a string of 'c' (correct) / 'x' (incorrect) / '?' (ungraded)."""
    rows = []
    for qid, langs in spec.items():
        for lang, marks in langs.items():
            for i, mark in enumerate(marks):
                rows.append({"rid": len(rows), "qid": qid, "response_lang": lang,
                             "prompt": f"question {qid} in {lang}",
                             "response": f"{lang}-{i}-{mark}",
                             "correct": {"c": True, "x": False, "?": None}[mark]})
    return rows


def lang_of(text: str) -> str:
    return text.split("-")[0]


def test_pair_scopes():
    rows = make_rows({"q1": {"en": "ccx", "de": "cxx", "fr": "cc"}})
    within = pairwise_examples(rows, "within", 100, seed=0)
    assert within and all(lang_of(p["response_a"]) == lang_of(p["response_b"]) for p in within)
    assert len(within) == 2 * 1 + 1 * 2  # en: 2 correct x 1 wrong, de: 1 x 2, fr: none
    cross = pairwise_examples(rows, "cross", 100, seed=0)
    assert cross and all(lang_of(p["response_a"]) != lang_of(p["response_b"]) for p in cross)
    both = pairwise_examples(rows, "both", 100, seed=0)
    assert len(both) == len(within) + len(cross)
    for p in both:  # a is the correct response, b the incorrect one, same question
        assert p["response_a"].endswith("c") and p["response_b"].endswith("x")
        assert p["qid"] == "q1" and p["prompt_a"].startswith("question q1")
    assert len({(p["response_a"], p["response_b"]) for p in both}) == len(both)


def test_both_scope_balances_within_and_cross():
    rows = make_rows({"q1": {lang: "ccxx" for lang in ("en", "de", "fr", "es", "ru", "zh")}})
    pairs = pairwise_examples(rows, "both", 8, seed=1)
    same = sum(lang_of(p["response_a"]) == lang_of(p["response_b"]) for p in pairs)
    assert len(pairs) == 8 and same == 4  # 6 within buckets vs 30 cross buckets, still half


@pytest.mark.parametrize("limit", [8, 20, 40])
def test_both_scope_is_half_within_half_cross_however_many_buckets(limit):
    # 6 within buckets (4 pairs each) against 30 cross buckets: half each at any limit.
    rows = make_rows({"q1": {lang: "ccxx" for lang in ("en", "de", "fr", "es", "ru", "zh")}})
    pairs = pairwise_examples(rows, "both", limit, seed=1)
    same = sum(lang_of(p["response_a"]) == lang_of(p["response_b"]) for p in pairs)
    assert len(pairs) == limit and same == limit // 2
    assert len({(p["response_a"], p["response_b"]) for p in pairs}) == limit
    # Within pairs spread over the languages (round-robin), not one language's four.
    within_langs = Counter(lang_of(p["response_a"]) for p in pairs
                           if lang_of(p["response_a"]) == lang_of(p["response_b"]))
    assert max(within_langs.values()) - min(within_langs.values()) <= 1


def test_cross_fraction_and_a_short_kind():
    rows = make_rows({"q1": {lang: "ccxx" for lang in ("en", "de", "fr", "es")}})
    pairs = pairwise_examples(rows, "both", 16, seed=0, cross_fraction=0.25)
    cross = sum(lang_of(p["response_a"]) != lang_of(p["response_b"]) for p in pairs)
    assert len(pairs) == 16 and cross == 4
    # Only 2 within pairs exist (en: 1 correct x 2 wrong): cross takes the rest of 10.
    rows = make_rows({"q1": {"en": "cxx", "de": "ccc", "fr": "xxx"}})
    pairs = pairwise_examples(rows, "both", 10, seed=0)
    same = sum(lang_of(p["response_a"]) == lang_of(p["response_b"]) for p in pairs)
    assert same == 2 and len(pairs) == 10


def test_max_pairs_makes_scopes_comparable():
    rows = make_rows({f"q{i}": {lang: "ccxx" for lang in ("en", "de", "fr")} for i in range(6)})
    sizes = {}
    for scope in ("within", "cross", "both"):
        examples, stats = training_examples(rows, "pairwise", scope, 16, seed=0, max_total=20)
        sizes[scope] = (len(examples), stats["examples"])
        assert len({(e["qid"], e["response_a"], e["response_b"]) for e in examples}) == len(examples)
    assert set(sizes.values()) == {(20, 20)}
    uncapped, _ = training_examples(rows, "pairwise", "within", 16, seed=0)
    assert len(uncapped) == 6 * 12  # 3 languages x 2 x 2 per question: the cap was binding
    points, _ = training_examples(rows, "pointwise", "both", 16, seed=0, max_total=5)
    assert len(points) == 5


def test_pairs_are_capped_and_spread_over_languages():
    rows = make_rows({f"q{i}": {"en": "c" * 20 + "x" * 20, "de": "cx"} for i in range(5)})
    pairs = pairwise_examples(rows, "within", 6, seed=0)
    per_q = Counter(p["qid"] for p in pairs)
    assert set(per_q.values()) == {6}
    # de has a single pair per question and en hundreds: round-robin still takes de's.
    assert Counter(lang_of(p["response_a"]) for p in pairs)["de"] == 5


def test_one_sided_questions_per_objective():
    rows = make_rows({"all_right": {"en": "ccc"}, "all_wrong": {"en": "xxx"},
                      "mixed": {"en": "cx"}, "ungraded": {"en": "??"}})
    pairs, stats = training_examples(rows, "pairwise", "both", 16, seed=0)
    assert {p["qid"] for p in pairs} == {"mixed"}  # no pair can be made from the others
    assert stats["questions"] == 3 and stats["questions_without_pairs"] == 2
    assert stats["one_sided_questions"] == 2
    points, stats = training_examples(rows, "pointwise", "both", 16, seed=0)
    # Pointwise keeps them: all-right and all-wrong questions are still labelled examples.
    assert Counter(p["qid"] for p in points) == {"all_right": 3, "all_wrong": 3, "mixed": 2}
    assert all(p["label"] == float(p["response"].endswith("c")) for p in points)


def test_pointwise_balances_languages_and_labels():
    rows = make_rows({"q1": {"en": "c" * 10 + "x" * 10, "de": "cx", "zh": "ccccx"}})
    points = pointwise_examples(rows, 6, seed=0)
    langs = Counter(lang_of(p["response"]) for p in points)
    assert langs == {"en": 2, "de": 2, "zh": 2}
    assert Counter(p["label"] for p in points) == {1.0: 3, 0.0: 3}


def test_round_robin():
    assert round_robin([[1, 2, 3], [4], [5, 6]], 10) == [1, 4, 5, 2, 6, 3]
    assert round_robin([[1, 2, 3], [4], [5, 6]], 2) == [1, 4]
    assert round_robin([], 3) == []


@pytest.mark.parametrize("n,fraction", [(2, 0.1), (10, 0.3), (101, 0.1)])
def test_question_split_has_no_overlap(n, fraction):
    qids = [f"q{i % n}" for i in range(5 * n)]  # every qid many times
    train, val = split_questions(qids, fraction, seed=3)
    assert not set(train) & set(val) and set(train) | set(val) == set(qids)
    assert val and train and len(val) == max(1, round(n * fraction))
    assert split_questions(qids, fraction, seed=3) == (train, val)  # deterministic


def test_question_folds_cover_every_question_once():
    qids = [f"q{i}" for i in range(23)] * 3
    folds = question_folds(qids, 4, seed=0)
    flat = [q for fold in folds for q in fold]
    assert sorted(flat) == sorted(set(qids)) and len(flat) == len(set(flat))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    with pytest.raises(ValueError, match="cv=4 needs at least 4 questions"):
        question_folds(["a", "b"], 4, seed=0)


def test_response_rows_skip_errors_and_blank_responses(tmp_path):
    base = dict(question_lang="en", response_lang="en", model="m", method="t", prompt="p")
    table = pool.to_table([
        dict(base, qid="q1", sample_idx=0, response="fine", correct=True),
        dict(base, qid="q1", sample_idx=1, response="", correct=False),
        dict(base, qid="q1", sample_idx=2, response="boom", error="engine died"),
        dict(base, qid="q2", sample_idx=0, response="no gold", correct=None),
    ])
    pool.write_pool(table, str(tmp_path / "a"))
    pool.write_pool(table.slice(0, 1), str(tmp_path / "b"))
    with pytest.raises(pool.PoolError, match="more than once"):
        load_pools([str(tmp_path / "a"), str(tmp_path / "b")])
    rows = response_rows(load_pools([str(tmp_path / "a")]))
    assert [(r["qid"], r["response"]) for r in rows] == [("q1", "fine"), ("q2", "no gold")]


def test_truncation_keeps_the_end_of_the_response(tiny_rm):
    _, tok = load_reward_model(str(tiny_rm))
    response = "step " * 500 + "so the answer is \\boxed{42}"
    ids = encode(tok, "How many?", response, max_length=64)
    assert len(ids) == 64
    text = tok.decode(ids)
    assert "\\boxed{42}" in text and text.rstrip().endswith("<|im_end|>")
    assert "How many" in text  # the question's start survives as well


def test_evaluate_scores_by_hand():
    rows = make_rows({"q1": {"en": "cx", "de": "xc"}, "q2": {"en": "xx", "de": "c?"}})
    # q1: en c=2 x=1; de x=0 c=3 | q2: en x=0.5 x=0.4; de c=0.1, ungraded 9
    scores = [2.0, 1.0, 0.0, 3.0, 0.5, 0.4, 0.1, 9.0]
    m = evaluate_scores(rows, scores, "within", "pairwise")
    assert m["val_pair_acc"] == 1.0 and m["val_pairs"] == 2  # (en c, en x), (de c, de x)
    cross = evaluate_scores(rows, scores, "cross", "pairwise")
    # q1: en c(2) > de x(0), de c(3) > en x(1); q2: de c(0.1) < en x(0.5), < en x(0.4)
    assert cross["val_pair_acc"] == 0.5 and cross["val_pairs"] == 4
    # Best-of-N within each (question, language): q1 en right, q1 de right, q2 en wrong,
    # q2 de right (the ungraded row does not count); across languages: q1 right, q2 wrong.
    assert m["val_bon_within"] == 0.75 and m["val_bon_cross"] == 0.5
    assert m["lang_accuracy"] == {"de": 1.0, "en": 0.5}
    assert m["val_mean_correct"] == pytest.approx(3 / 7)
    assert m["score_stats"]["de"]["n"] == 4  # statistics use every scored row
    assert m["score_stats"]["en"]["mean"] == pytest.approx((2 + 1 + 0.5 + 0.4) / 4)
    assert m["val_loss"] == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))) / 2)


def test_warmup_then_decay():
    f = warmup_cosine(4, 20)
    values = [f(s) for s in range(21)]
    assert values[:5] == sorted(values[:5]) and values[4] == pytest.approx(1.0)
    assert values[4:] == sorted(values[4:], reverse=True) and values[20] == pytest.approx(0.1)
