"""Question loaders: MGSM folder, JSONL, Parquet, hf: (error path), generated:; limit and
languages; malformed rows named by file and line, or skipped and counted."""
from __future__ import annotations

import json
import logging
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestofl.languages import UnknownLanguageError
from bestofl.questions import QuestionError, load_questions, mgsm_qid


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"qid": "q10", "lang": "en", "question": "Ten apples minus one?", "gold": 9},
    {"qid": "q2", "lang": "de", "question": "Zwei plus zwei?", "gold": "4"},
    {"qid": "q2", "lang": "en", "question": "Two plus two?", "gold": "4"},
    {"qid": "q1", "lang": "en", "question": "One plus one?", "gold": "2,000"},
    {"qid": "q1", "lang": "de", "question": "Eins plus eins?", "gold": None},
]


# ---------------------------------------------------------------- MGSM folder
def test_mgsm_folder_is_aligned_and_sorted(mgsm_dir):
    rows = load_questions(str(mgsm_dir), ["zh", "en"], limit=3)
    assert [(r["qid"], r["lang"]) for r in rows] == [
        (mgsm_qid(i), lang) for i in range(3) for lang in ("en", "zh")]
    first = rows[:2]
    assert first[0]["question"].startswith("Janet")  # line 1 of mgsm_en.tsv
    assert first[0]["gold"] == first[1]["gold"] == "18"  # same problem in every language
    assert all(set(r) == {"qid", "lang", "question", "gold"} for r in rows)


def test_mgsm_all_languages_and_gold_normalised(mgsm_dir):
    rows = load_questions(str(mgsm_dir))
    assert {r["lang"] for r in rows} == {"bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"}
    assert len(rows) == 11 * 250
    en = {r["qid"]: r["gold"] for r in rows if r["lang"] == "en"}
    # mgsm_en.tsv writes some answers with thousands commas ("2,125"); gold is canonical.
    raw = [line.split("\t")[1] for line in (mgsm_dir / "mgsm_en.tsv").read_text().splitlines()]
    assert any("," in g for g in raw)
    assert [en[mgsm_qid(i)] for i in range(250)] == [g.replace(",", "") for g in raw]
    assert [r["qid"] for r in rows] == sorted(r["qid"] for r in rows)


def _mgsm(tmp_path, en: str, de: str):
    folder = tmp_path / "mgsm"
    folder.mkdir()
    (folder / "mgsm_en.tsv").write_text(en, encoding="utf-8")
    (folder / "mgsm_de.tsv").write_text(de, encoding="utf-8")
    return folder


GOOD_EN = "One plus one?\t2\nTwo plus two?\t4\nThree plus three?\t6\n"
GOOD_DE = "Eins plus eins?\t2\nZwei plus zwei?\t4\nDrei plus drei?\t6\n"


@pytest.mark.parametrize("bad_line, problem", [
    ("Two plus two?\t4\textra", "expected 2 tab-separated columns"),
    ("Two plus two? 4", "expected 2 tab-separated columns"),
    ("   \t4", "empty question"),
    ("Two plus two?\tfour", "is not a number"),
    ("Two plus two?\t", "missing answer"),
])
def test_mgsm_malformed_row_names_file_and_line(tmp_path, bad_line, problem):
    en = GOOD_EN.replace("Two plus two?\t4", bad_line)
    folder = _mgsm(tmp_path, en, GOOD_DE)
    with pytest.raises(QuestionError) as e:
        load_questions(str(folder))
    assert f"{folder / 'mgsm_en.tsv'}:2" in str(e.value)
    assert problem in str(e.value)
    assert "skip_malformed" in str(e.value)


def test_mgsm_skip_malformed_counts_and_keeps_alignment(tmp_path, caplog):
    en = GOOD_EN.replace("Two plus two?\t4", "Two plus two?\tfour")
    folder = _mgsm(tmp_path, en, GOOD_DE)
    with caplog.at_level(logging.WARNING, logger="bestofl.questions"):
        rows = load_questions(str(folder), skip_malformed=True)
    assert "skipped 1 malformed" in caplog.text and "mgsm_en.tsv:2" in caplog.text
    keys = [(r["qid"], r["lang"]) for r in rows]
    assert ("mgsm-0001", "en") not in keys and ("mgsm-0001", "de") in keys
    # Line 3 keeps its qid: a skipped line never shifts the problems after it.
    assert {r["question"] for r in rows if r["qid"] == "mgsm-0002"} == {"Three plus three?", "Drei plus drei?"}


def test_mgsm_missing_and_unknown_language(tmp_path):
    folder = _mgsm(tmp_path, GOOD_EN, GOOD_DE)
    with pytest.raises(QuestionError, match=r"no questions in language\(s\) fr.*it has: de, en"):
        load_questions(str(folder), ["en", "fr"])
    with pytest.raises(UnknownLanguageError, match="'xx'"):
        load_questions(str(folder), ["en", "xx"])


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_questions(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuestionError, match="no mgsm_<lang>.tsv, .jsonl or .parquet"):
        load_questions(str(tmp_path / "empty"))


# ---------------------------------------------------------------- JSONL / Parquet
def test_jsonl_natural_qid_order_limit_and_languages(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", ROWS)
    rows = load_questions(str(path))
    assert [(r["qid"], r["lang"]) for r in rows] == [
        ("q1", "de"), ("q1", "en"), ("q2", "de"), ("q2", "en"), ("q10", "en")]
    assert [r["gold"] for r in rows] == [None, "2000", "4", "4", "9"]
    assert [r["qid"] for r in load_questions(str(path), ["en"], limit=2)] == ["q1", "q2"]
    # limit counts questions, not rows: both languages of the first question
    assert len(load_questions(str(path), limit=1)) == 2


def test_parquet_and_folder_of_tables(tmp_path):
    table = pa.Table.from_pylist([{**r, "gold": None if r["gold"] is None else str(r["gold"])}
                                  for r in ROWS])
    pq.write_table(table, tmp_path / "q.parquet")
    from_parquet = load_questions(str(tmp_path / "q.parquet"))
    from_jsonl = load_questions(str(_write_jsonl(tmp_path / "q.jsonl", ROWS)))
    assert from_parquet == from_jsonl
    folder = tmp_path / "split"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", ROWS[:2])
    pq.write_table(pa.Table.from_pylist(ROWS[2:3]), folder / "b.parquet")
    assert len(load_questions(str(folder))) == 3


def test_parquet_missing_column_and_corrupt_file(tmp_path):
    pq.write_table(pa.table({"qid": ["a"], "question": ["?"]}), tmp_path / "nolang.parquet")
    with pytest.raises(QuestionError, match=r"nolang.parquet: missing column\(s\) lang"):
        load_questions(str(tmp_path / "nolang.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(QuestionError, match="bad.parquet: cannot read Parquet"):
        load_questions(str(tmp_path / "bad.parquet"))


@pytest.mark.parametrize("line, problem", [
    ('{"qid": "q3", "lang": "en", "question": "Why?", ', "invalid JSON"),
    ('{"qid": "q3", "question": "Why?"}', "missing or empty lang"),
    ('{"qid": "q3", "lang": "en", "question": "   "}', "empty question"),
    ('{"qid": "q3", "lang": "en", "question": "Why?", "gold": "many"}', "is not a number"),
    ('["q3", "en"]', "expected a JSON object"),
    ('{"qid": "q2", "lang": "en", "question": "Again?"}', "repeats"),
])
def test_jsonl_malformed_line(tmp_path, caplog, line, problem):
    path = _write_jsonl(tmp_path / "q.jsonl", ROWS)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n" + line + "\n")  # a blank line 6, then the bad line 7
    with pytest.raises(QuestionError) as e:
        load_questions(str(path))
    assert f"{path}:7" in str(e.value) and problem in str(e.value)
    with caplog.at_level(logging.WARNING, logger="bestofl.questions"):
        rows = load_questions(str(path), skip_malformed=True)
    assert len(rows) == len(ROWS)
    assert "skipped 1 malformed" in caplog.text


def test_unregistered_language_in_source(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", ROWS + [{"qid": "q1", "lang": "xx", "question": "?"}])
    with pytest.raises(UnknownLanguageError, match="q.jsonl.*'xx'"):
        load_questions(str(path))
    assert {r["lang"] for r in load_questions(str(path), ["en"])} == {"en"}


def test_bad_limit():
    with pytest.raises(QuestionError, match="limit"):
        load_questions("generated:3", limit=0)


# ---------------------------------------------------------------- generated
def test_generated_source():
    rows = load_questions("generated:6:7", ["fr", "en"], limit=4)
    assert len(rows) == 8 and {r["lang"] for r in rows} == {"en", "fr"}
    assert rows == load_questions("generated:6:7", ["en", "fr"], limit=4)
    assert rows != load_questions("generated:6:8", ["en", "fr"], limit=4)
    assert {r["lang"] for r in load_questions("generated:2")} >= {"en", "de", "es", "fr", "zh"}
    with pytest.raises(QuestionError, match="no questions in language.*bn"):
        load_questions("generated:2", ["bn"])
    with pytest.raises(QuestionError, match="generated:<n>"):
        load_questions("generated:many")
    easy = load_questions("generated:3:easy", ["en"])
    assert [r["qid"] for r in easy] == ["easy0-0000", "easy0-0001", "easy0-0002"]
    assert load_questions("generated:3:0:easy", ["en"]) == easy
    with pytest.raises(QuestionError, match="generated:<n>"):
        load_questions("generated:3:hard")


# ---------------------------------------------------------------- Hugging Face
def test_hf_without_datasets_or_hub_is_a_clear_error():
    # Here `datasets` is not installed and the hub is offline: either way a clear error.
    with pytest.raises(QuestionError, match=r"hf:juletxara/mgsm.*(datasets|hub)"):
        load_questions("hf:juletxara/mgsm", ["en"])


def test_hf_hub_unreachable(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'juletxara/mgsm' on the Hub")

    # Fault injection: a `datasets` whose hub calls fail the way they do offline.
    fake = types.SimpleNamespace(load_dataset=unreachable, get_dataset_config_names=unreachable)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(QuestionError) as e:
        load_questions("hf:juletxara/mgsm:test", ["en"])
    message = str(e.value)
    assert "'juletxara/mgsm' split 'test'" in message and "ConnectionError" in message
    assert "hub reachable" in message
