"""`bestofl import`: xling-traces round trip on a subset of the real traces, the generic
jsonl format with a column mapping, refusing a finished output, malformed sources."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from bestofl import storage
from bestofl.config import load_config
from bestofl.importers import SourceError, import_pool
from bestofl.pool import check_identity, read_pool
from bestofl.questions import load_questions, mgsm_qid
from bestofl.storage import OutputExistsError

LINES = 30  # per file: the first MGSM problems, enough to see every mapping at work
SUBSET = {("s1.1-14B", "system"): ["de", "zh"], ("s1.1-14B", "nxn-en-query"): ["de", "en"],
          ("s1.1-14B", "wait"): ["de"]}


def _cfg(src, output, fmt="xling-traces", *overrides):
    return load_config("import", None, [f"src={src}", f"output={output}", f"format={fmt}", *overrides])


@pytest.fixture(scope="module")
def traces(shared_data, tmp_path_factory) -> Path:
    """A model folder holding the first LINES lines of a few real trace files."""
    root = tmp_path_factory.mktemp("xling") / "s1.1-14B"
    for (model, method), langs in SUBSET.items():
        (root / method).mkdir(parents=True)
        for lang in langs:
            src = shared_data / "xling-traces" / model / method / f"{lang}.jsonl.gz"
            with gzip.open(src, "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(LINES)]
            with gzip.open(root / method / f"{lang}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(lines)
    return root


@pytest.fixture(scope="module")
def imported(traces, tmp_path_factory):
    out = tmp_path_factory.mktemp("pools") / "pool"
    assert import_pool(_cfg(traces, out)) == str(out)
    return out, read_pool(str(out))


def _source(traces: Path, method: str, lang: str) -> list[dict]:
    with gzip.open(traces / method / f"{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_round_trip_counts_and_identity(imported):
    out, table = imported
    check_identity(table)
    rows = table.to_pylist()
    counts = Counter((r["method"], r["response_lang"]) for r in rows)
    assert counts == {(m, lang): LINES for (_, m), langs in SUBSET.items() for lang in langs}
    assert {r["model"] for r in rows} == {"s1.1-14B"} and {r["sample_idx"] for r in rows} == {0}
    assert storage.is_finished(str(out))
    done = json.loads((out / "_SUCCESS").read_text())
    assert done["rows"] == len(rows) and done["files"] == 5
    assert load_config("import", out / "_config.yaml",
                       ["src=x", "output=y"]).format == "xling-traces"  # effective config saved


def test_rows_match_the_source_lines(imported, traces):
    _, table = imported
    rows = {(r["method"], r["response_lang"], r["qid"]): r for r in table.to_pylist()}
    for method, lang in [("system", "zh"), ("nxn-en-query", "de")]:
        for i, rec in enumerate(_source(traces, method, lang)):
            row = rows[(method, lang, mgsm_qid(i))]
            assert row["prompt"] == rec["prompt"]
            assert row["gold"] == str(rec["gold_answer"])
            # Only what the model wrote: the echoed system prompt and question are gone...
            assert "<|im_start|>system" not in row["response"]
            assert "<|im_start|>user" not in row["response"]
            assert rec["prompt"] not in row["response"][:len(rec["prompt"]) + 50]
            # ...and it is the transcript's tail.
            assert row["response"] in rec["output"]
            assert row["correct"] == (row["answer"] == row["gold"])


def test_question_language_mapping(imported):
    _, table = imported
    pairs = Counter((r["method"], r["question_lang"], r["response_lang"]) for r in table.to_pylist())
    assert pairs == {("system", "de", "de"): LINES, ("system", "zh", "zh"): LINES,
                     ("wait", "de", "de"): LINES, ("nxn-en-query", "en", "de"): LINES,
                     ("nxn-en-query", "en", "en"): LINES}


def test_pool_joins_mgsm_questions_and_grades_well(imported, mgsm_dir):
    _, table = imported
    questions = {(q["qid"], q["lang"]): q for q in load_questions(str(mgsm_dir), ["de", "en", "zh"],
                                                                     limit=LINES)}
    for r in table.to_pylist():
        q = questions[(r["qid"], r["question_lang"])]
        assert q["gold"] == r["gold"]
        if r["question_lang"] != "en" or r["method"] == "nxn-en-query":
            assert q["question"] == r["prompt"].strip()
    # s1.1-14B solves most of the first MGSM problems; grading must see that.
    assert sum(table.column("correct").to_pylist()) > 0.7 * table.num_rows


def test_refuses_finished_output_then_overwrites(imported, traces):
    out, table = imported
    before = sorted(p.name for p in out.rglob("*.parquet"))
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        import_pool(_cfg(traces, out))
    assert sorted(p.name for p in out.rglob("*.parquet")) == before
    import_pool(_cfg(traces, out, "xling-traces", "overwrite=true", "model=s1.1-14B-again"))
    again = read_pool(str(out))
    assert again.num_rows == table.num_rows  # replaced, not appended
    assert set(again.column("model").to_pylist()) == {"s1.1-14B-again"}


def test_unfinished_output_is_rebuilt_not_duplicated(traces, tmp_path):
    out = tmp_path / "pool"
    import_pool(_cfg(traces, out))
    n = read_pool(str(out)).num_rows
    (out / "_SUCCESS").unlink()  # as if the first run died before finishing
    import_pool(_cfg(traces, out))
    again = read_pool(str(out))
    check_identity(again)
    assert again.num_rows == n
    stranger = tmp_path / "not-ours"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="holds no bestofl output"):
        import_pool(_cfg(traces, stranger))
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_malformed_trace_file(traces, tmp_path):
    src = tmp_path / "s1.1-7B"
    (src / "system").mkdir(parents=True)
    good = gzip.open(traces / "system" / "de.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    broken = good[:3] + [good[3][:100]] + good[4:]
    with gzip.open(src / "system" / "de.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(broken) + "\n")
    out = tmp_path / "pool"
    with pytest.raises(SourceError, match=r"system/de\.jsonl\.gz:4: invalid JSON"):
        import_pool(_cfg(src, out))
    assert not out.exists()  # nothing written, nothing marked finished
    rec = json.loads(good[0])
    del rec["gold_answer"]
    with gzip.open(src / "system" / "de.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    with pytest.raises(SourceError, match=r"de\.jsonl\.gz:1: missing key\(s\) gold_answer"):
        import_pool(_cfg(src, out))
    (src / "system" / "de.jsonl.gz").rename(src / "system" / "xx.jsonl.gz")
    with pytest.raises(SourceError, match="xx.jsonl.gz.*unknown language code 'xx'"):
        import_pool(_cfg(src, out))
    assert not storage.is_finished(str(out))


def test_malformed_import_keeps_a_finished_output(traces, tmp_path):
    out = tmp_path / "pool"
    import_pool(_cfg(traces, out))
    before = read_pool(str(out)).num_rows
    bad = tmp_path / "bad" / "m" / "system"
    bad.mkdir(parents=True)
    (bad / "de.jsonl").write_text("{not json}\n")
    with pytest.raises(SourceError, match="de.jsonl:1"):
        import_pool(_cfg(bad.parent, out, "xling-traces", "overwrite=true"))
    assert storage.is_finished(str(out)) and read_pool(str(out)).num_rows == before


# ---------------------------------------------------------------- generic jsonl
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


GENERATIONS = [
    {"id": 7, "lang": "en", "text": "2 + 2 = 4. The answer is 4.", "target": 4},
    {"id": 7, "lang": "en", "text": "I think it is \\boxed{5}.", "target": 4},
    {"id": 7, "lang": "de", "reason_lang": "en", "text": "Die Antwort lautet 4.", "target": "4"},
    {"id": 8, "lang": "zh", "text": "答案是 1,000。", "target": 1000, "seed": 3},
    {"id": 9, "lang": "fr", "text": "La réponse est 12.", "idx": 5},
]


def test_jsonl_with_column_mapping(tmp_path):
    src = _jsonl(tmp_path / "gens.jsonl", GENERATIONS)
    out = tmp_path / "pool"
    import_pool(_cfg(src, out, "jsonl", "columns.qid=id", "columns.response=text",
                     "columns.gold=target", "columns.response_lang=reason_lang",
                     "columns.sample_idx=idx", "model=tiny"))
    rows = sorted(read_pool(str(out)).to_pylist(), key=lambda r: (r["qid"], r["question_lang"], r["sample_idx"]))
    assert [(r["qid"], r["question_lang"], r["response_lang"], r["sample_idx"]) for r in rows] == [
        ("7", "de", "en", 0), ("7", "en", "en", 0), ("7", "en", "en", 1), ("8", "zh", "zh", 0),
        ("9", "fr", "fr", 5)]
    assert [(r["answer"], r["gold"], r["correct"]) for r in rows] == [
        ("4", "4", True), ("4", "4", True), ("5", "4", False), ("1000", "1000", True), ("12", None, None)]
    assert {r["model"] for r in rows} == {"tiny"} and {r["method"] for r in rows} == {"gens"}
    assert rows[3]["seed"] == 3
    check_identity(read_pool(str(out)))


def test_jsonl_keeps_given_answers_and_pool_names(tmp_path):
    rows = [{"qid": "a", "question_lang": "en", "response": "blah", "answer": "3", "gold": "3",
             "model": "m", "method": "vllm", "sample_idx": 0, "num_tokens": 12.0}]
    import_pool(_cfg(_jsonl(tmp_path / "x.jsonl", rows), tmp_path / "pool", "jsonl"))
    (row,) = read_pool(str(tmp_path / "pool")).to_pylist()
    assert (row["answer"], row["correct"], row["model"], row["method"], row["num_tokens"]) == (
        "3", True, "m", "vllm", 12)


@pytest.mark.parametrize("row, overrides, problem", [
    ({"qid": "a", "lang": "en"}, [], r"x\.jsonl:2: missing 'response'.*columns\.response=KEY"),
    ({"qid": "a", "lang": "en", "text": "hi"}, ["columns.response=output"], r"x\.jsonl:2: missing 'output'"),
    ({"qid": "a", "lang": "en", "response": "hi", "sample_idx": "first"}, [], r"x\.jsonl:2: 'sample_idx'.*not a valid int64"),
    ({"qid": "a", "lang": "english", "response": "hi"}, [], r"x\.jsonl:2: unknown language code 'english'"),
    ({"qid": "a", "lang": "en", "response": "hi"}, ["columns.respons=text"], r"columns\.respons: not a pool column"),
])
def test_jsonl_errors(tmp_path, row, overrides, problem):
    good = {"qid": "z", "lang": "en", "response": "The answer is 1.", "output": "The answer is 1."}
    out = tmp_path / "pool"
    with pytest.raises(SourceError, match=problem):
        import_pool(_cfg(_jsonl(tmp_path / "x.jsonl", [good, row]), out, "jsonl", *overrides))
    assert not storage.is_finished(str(out))


def test_jsonl_duplicate_identity_is_refused(tmp_path):
    rows = [{"qid": "a", "lang": "en", "response": "1", "sample_idx": 0}] * 2
    with pytest.raises(ValueError, match="identities written more than once"):
        import_pool(_cfg(_jsonl(tmp_path / "x.jsonl", rows), tmp_path / "pool", "jsonl"))
    assert not (tmp_path / "pool").exists()


# ---------------------------------------------------------------- num_tokens from a tokenizer
def test_tokenizer_fills_num_tokens_and_token_budgets_work(imported, traces, tiny_lm, tmp_path):
    from transformers import AutoTokenizer

    from bestofl.evaluation import evaluate

    _, plain = imported
    assert set(plain.column("num_tokens").to_pylist()) == {None}  # the traces give no counts
    out = tmp_path / "pool"
    import_pool(_cfg(traces, out, "xling-traces", f"tokenizer={tiny_lm}"))
    table = read_pool(str(out))
    assert table.drop(["num_tokens"]).equals(plain.drop(["num_tokens"]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    rows = table.to_pylist()
    for r in rows[::37]:
        assert r["num_tokens"] == len(tokenizer(r["response"], add_special_tokens=False)["input_ids"])
    assert min(r["num_tokens"] for r in rows) > 0

    cfg = load_config("evaluate", None, ["input=unused", "output=unused", "budget_unit=tokens",
                                         "selectors=[oracle]", "budgets=[1]", "languages=[de]",
                                         "bootstrap=10", "plots=false"])
    ev = evaluate(table, cfg)
    per_q: dict[str, list[int]] = {}
    for r in rows:
        if r["response_lang"] == "de":
            per_q.setdefault(r["qid"], []).append(r["num_tokens"])
    (mono,) = [r for r in ev.results if (r["pool"], r["budget"]) == ("mono", 1)]
    assert mono["tokens"] == pytest.approx(sum(sum(v) / len(v) for v in per_q.values()) / len(per_q))


def test_bad_tokenizer_is_a_clear_error(tmp_path, capsys):
    from bestofl import cli

    src = _jsonl(tmp_path / "gens.jsonl", GENERATIONS)
    out = tmp_path / "pool"
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    for bad, problem in [(tmp_path / "nowhere", "tokenizer not found"),
                         (empty, "cannot be loaded")]:
        assert cli.main(["import", "--format", "jsonl", str(src), str(out), f"tokenizer={bad}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bestofl import: error:") and problem in err and str(bad) in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
