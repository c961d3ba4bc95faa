"""Generated word problems: deterministic, exact integer answers (recomputed from the
English text), the same problem in every language, mostly one step."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from bestofl.problems import LANGUAGES, TEMPLATES, generate_problems, ru

N = 300


@pytest.fixture(scope="module")
def rows():
    return generate_problems(N, LANGUAGES, seed=1)


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _recompute(question: str) -> int:
    """The answer from the English text alone, one rule per kind of problem."""
    n = _numbers(question)
    rules = [
        ("more", lambda a, b: a + b),                                 # add
        ("gives", lambda a, b: a - b),                                # subtract
        ("bill", lambda a, p, b: b - a * p),                          # change (two steps)
        ("for $", lambda a, p: a * p),                                # shopping
        ("shares", lambda t, k: t // k if t % k == 0 else None),      # sharing
        ("rides", lambda d, v: d // v if d % v == 0 else None),       # travel time
        ("train", lambda v, t: v * t),                                # speed
        ("years", lambda a, d, y: a + d + y),                         # ages (two steps)
    ]
    if "boxes" in question:                                           # boxes (two steps)
        k, m, e = n
        return k * m + e
    for key, rule in rules:
        if key in question:
            return rule(*n)
    raise AssertionError(f"no rule for {question!r}")


def test_answers_are_exact_integers(rows):
    english = [r for r in rows if r["lang"] == "en"]
    assert len(english) == N
    for r in english:
        assert re.fullmatch(r"[1-9]\d*", r["gold"]), r
        assert _recompute(r["question"]) == int(r["gold"]), r["question"]


def test_same_problem_in_every_language(rows):
    by_qid: dict[str, list[dict]] = {}
    for r in rows:
        by_qid.setdefault(r["qid"], []).append(r)
    assert len(by_qid) == N
    for qid, group in by_qid.items():
        assert sorted(r["lang"] for r in group) == sorted(LANGUAGES)
        assert len({r["gold"] for r in group}) == 1
        # The same numbers appear in every translation ("1 个 / 1 人" counters aside).
        numbers = {r["lang"]: Counter(x for x in _numbers(r["question"]) if x != 1) for r in group}
        assert all(c == numbers["en"] for c in numbers.values()), (qid, numbers)
        assert len({r["question"] for r in group}) == len(LANGUAGES)


def test_deterministic_and_independent_of_languages(rows):
    again = generate_problems(N, LANGUAGES, seed=1)
    assert again == rows
    # Asking for fewer languages never changes the problems.
    two = generate_problems(N, ["fr", "zh"], seed=1)
    assert two == [r for r in rows if r["lang"] in ("fr", "zh")]
    # A longer run keeps the first problems.
    assert generate_problems(N + 5, ["en"], seed=1)[:N] == [r for r in rows if r["lang"] == "en"]
    other = generate_problems(N, ["en"], seed=2)
    assert [r["question"] for r in other] != [r["question"] for r in rows if r["lang"] == "en"]
    assert other[0]["qid"] != rows[0]["qid"]  # qids name the seed


def test_mostly_one_step_and_varied(rows):
    english = [r["question"] for r in rows if r["lang"] == "en"]
    two_step = sum(("bill" in q) or ("boxes" in q) or ("years" in q) for q in english)
    assert 0.1 * N < two_step < 0.35 * N
    assert len({q.split()[1] for q in english}) >= 5  # several templates in use
    assert len(TEMPLATES) >= 8


def test_rows_are_sorted_and_well_formed(rows):
    assert [(r["qid"], r["lang"]) for r in rows] == sorted((r["qid"], r["lang"]) for r in rows)
    assert all(set(r) == {"qid", "lang", "question", "gold"} for r in rows)
    assert all(r["question"].strip() == r["question"] and "{" not in r["question"] for r in rows)


def test_native_phrasing_examples():
    by_lang = {r["lang"]: r["question"] for r in generate_problems(1, LANGUAGES, seed=0)}
    assert "?" in by_lang["en"] and "？" in by_lang["zh"] and "？" in by_lang["ja"]
    assert by_lang["es"].count("¿") == 1
    assert re.search(r"[а-я]", by_lang["ru"]) and re.search(r"[\u3040-\u30ff]", by_lang["ja"])


def test_russian_number_forms():
    forms = ("яблоко", "яблока", "яблок")
    assert [ru(n, forms) for n in (1, 2, 5, 11, 12, 21, 24, 25, 111)] == [
        "1 яблоко", "2 яблока", "5 яблок", "11 яблок", "12 яблок", "21 яблоко",
        "24 яблока", "25 яблок", "111 яблок"]


def test_unsupported_language():
    with pytest.raises(ValueError, match="not in bn"):
        generate_problems(3, ["en", "bn"])


def test_easy_level_is_one_step_with_small_numbers():
    easy = generate_problems(200, LANGUAGES, seed=1, easy=True)
    english = [r for r in easy if r["lang"] == "en"]
    assert {r["qid"].split("-")[0] for r in english} == {"easy1"}  # never a gen1-* qid
    for r in english:
        assert _recompute(r["question"]) == int(r["gold"]) > 0, r["question"]
        assert max(_numbers(r["question"])) <= 15, r["question"]
        assert not any(k in r["question"] for k in ("bill", "boxes", "years"))
    assert {q["question"].split()[1] for q in english} >= {"has", "buys"}  # several templates
    assert generate_problems(200, LANGUAGES, seed=1, easy=True) == easy
    assert len({r["lang"] for r in easy}) == len(LANGUAGES)
