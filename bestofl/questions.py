"""Question sources for `sample`: rows {qid, lang, question, gold}, sorted by (qid, lang).

    <folder>                 MGSM layout: mgsm_<lang>.tsv, "question<TAB>answer", no header;
                             line i is the same problem in every file (qid mgsm-<i:04d>)
    <file>.jsonl / .parquet  columns qid, lang, question, gold (gold may be null);
                             a folder of such files works too
    hf:<dataset id>[:split]  a Hugging Face dataset (needs `datasets`, in the gpu extra, and a hub)
    generated:<n>[:seed][:easy]  the project's own word problems (bestofl.problems)

Local paths or pyarrow URIs (s3://...). Gold answers are normalised ("2,125" -> "2125")
so they compare with graded pool rows.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import re
from typing import Any, Iterable, Sequence

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bestofl import storage
from bestofl.answers import normalize_number
from bestofl.languages import LANGUAGES, UnknownLanguageError, resolve_languages

log = logging.getLogger(__name__)

MGSM_FILE = re.compile(r"^mgsm_([A-Za-z-]+)\.tsv$")
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class QuestionError(ValueError):
    """A question source is missing, malformed or lacks a requested language."""


def mgsm_qid(index: int) -> str:
    """qid of MGSM line `index` (0-based); zero-padded so string order is line order.
    Shared with the xling-traces importer so pools and questions join."""
    return f"mgsm-{index:04d}"


def qid_order(qid: str) -> list:
    """Natural order: "q2" before "q10"; same as string order for zero-padded ids."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", qid)]


def load_questions(source: str, languages: Sequence[str] | None = None,
                   limit: int | None = None, skip_malformed: bool = False) -> list[dict]:
    """Question rows of the requested languages (default: all the source has), first
    `limit` questions by qid. Malformed rows raise QuestionError naming file and line,
    or are skipped and counted in the log when `skip_malformed`."""
    if limit is not None and limit < 1:
        raise QuestionError(f"limit must be >= 1 or None, got {limit}")
    wanted = list(languages) if languages else None
    if wanted:
        resolve_languages(wanted)  # unknown codes fail before any file is read
    bad: list[str] = []
    if source.startswith("generated:"):
        from bestofl.problems import LANGUAGES as GENERATED, generate_problems

        n, seed, easy = _generated_spec(source)
        langs = _check_available(wanted, GENERATED, source)
        rows = generate_problems(n, langs, seed=seed, easy=easy)
    elif source.startswith("hf:"):
        rows = _from_hub(source, wanted, bad)
    else:
        rows = _from_files(source, wanted, bad)
    if bad:
        if not skip_malformed:
            raise QuestionError(bad[0] + " (set skip_malformed=true to skip such rows)")
        log.warning("skipped %d malformed question row(s) in %s; first: %s", len(bad), source, bad[0])
    langs = _check_available(wanted, {r["lang"] for r in rows}, source)
    rows = [r for r in rows if r["lang"] in langs]
    qids = sorted({r["qid"] for r in rows}, key=qid_order)
    if limit is not None:
        keep = set(qids[:limit])
        rows = [r for r in rows if r["qid"] in keep]
    rows.sort(key=lambda r: (qid_order(r["qid"]), r["lang"]))
    return rows


def _check_available(wanted: list[str] | None, available: Iterable[str], source: str) -> list[str]:
    available = set(available)
    try:
        langs = resolve_languages(wanted, available)
    except UnknownLanguageError as e:
        raise UnknownLanguageError(f"{source}: {e}") from None
    missing = [code for code in langs if code not in available]
    if missing:
        raise QuestionError(f"{source} has no questions in language(s) {', '.join(missing)}; "
                            f"it has: {', '.join(sorted(available)) or 'none'}")
    return langs


def _generated_spec(source: str) -> tuple[int, int, bool]:
    """generated:<n>[:<seed>][:easy] -> (n, seed, easy)."""
    parts = source.split(":")[1:]
    easy = parts[-1:] == ["easy"]
    parts = parts[:-1] if easy else parts
    try:
        if not 1 <= len(parts) <= 2:
            raise ValueError
        n, seed = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise QuestionError(f"{source!r}: expected generated:<n>[:<seed>][:easy], "
                            f"e.g. generated:40:0 or generated:16:easy") from None
    if n < 1:
        raise QuestionError(f"{source!r}: the number of problems must be >= 1")
    return n, seed, easy


def _gold(value: Any) -> str | None:
    """Canonical gold answer, None when absent; ValueError when it is not a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    gold = normalize_number(str(value))
    if gold is None:
        raise ValueError(f"gold answer {value!r} is not a number")
    return gold


# ---------------------------------------------------------------- files
def _from_files(source: str, wanted: list[str] | None, bad: list[str]) -> list[dict]:
    fs, path = storage.filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"question source not found: {source}")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        listing = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path))
                         if f.type == pafs.FileType.File)
        mgsm = {m.group(1): p for p in listing if (m := MGSM_FILE.match(posixpath.basename(p)))}
        if mgsm:
            langs = _check_available(wanted, mgsm, source)
            return _read_mgsm({lang: mgsm[lang] for lang in langs}, fs, bad)
        files = [p for p in listing if p.endswith(TABLE_SUFFIXES)]
        if not files:
            raise QuestionError(f"{source}: no mgsm_<lang>.tsv, .jsonl or .parquet files in it")
    rows: list[dict] = []
    seen: dict[tuple[str, str], str] = {}
    for file in files:
        if file.endswith(".parquet"):
            records = _parquet_records(fs, file)
        elif file.endswith((".jsonl", ".jsonl.gz")):
            records = _jsonl_records(fs, file, bad)
        else:
            raise QuestionError(f"{file}: unknown question file type (want a folder of "
                                f"mgsm_<lang>.tsv, .jsonl or .parquet)")
        rows += _from_records(records, seen, bad)
    return rows


def _read_mgsm(files: dict[str, str], fs: pafs.FileSystem, bad: list[str]) -> list[dict]:
    rows, counts = [], {}
    for lang, file in files.items():
        lines = _read_text(fs, file).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        counts[lang] = len(lines)
        for i, line in enumerate(lines):
            where = f"{file}:{i + 1}"
            cols = line.rstrip("\r").split("\t")
            if len(cols) != 2:
                bad.append(f"{where}: expected 2 tab-separated columns (question, answer), "
                           f"found {len(cols)}")
                continue
            question, answer = cols[0].strip(), cols[1].strip()
            if not question:
                bad.append(f"{where}: empty question")
                continue
            try:
                gold = _gold(answer)
            except ValueError as e:
                bad.append(f"{where}: {e}")
                continue
            if gold is None:
                bad.append(f"{where}: missing answer")
                continue
            # qid from the line number, so a skipped line never shifts the alignment.
            rows.append({"qid": mgsm_qid(i), "lang": lang, "question": question, "gold": gold})
    if len(set(counts.values())) > 1:
        log.warning("MGSM files have different line counts (line i should be the same "
                    "problem in every language): %s", counts)
    return rows


def _read_text(fs: pafs.FileSystem, file: str) -> str:
    try:
        with fs.open_input_stream(file) as f:  # .gz is decompressed by pyarrow (by extension)
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QuestionError(f"{file}: cannot read ({e})") from None


def _jsonl_records(fs: pafs.FileSystem, file: str, bad: list[str]) -> list[tuple[str, Any]]:
    records = []
    for i, line in enumerate(io.StringIO(_read_text(fs, file))):
        if not line.strip():
            continue
        where = f"{file}:{i + 1}"
        try:
            records.append((where, json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
    return records


def _parquet_records(fs: pafs.FileSystem, file: str) -> list[tuple[str, Any]]:
    try:
        table = pq.read_table(file, filesystem=fs)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise QuestionError(f"{file}: cannot read Parquet ({e})") from None
    missing = [c for c in ("qid", "lang", "question") if c not in table.column_names]
    if missing:
        raise QuestionError(f"{file}: missing column(s) {', '.join(missing)}; "
                            f"need qid, lang, question (and gold)")
    return [(f"{file}: row {i}", r) for i, r in enumerate(table.to_pylist())]


def _from_records(records: Iterable[tuple[str, Any]], seen: dict[tuple[str, str], str],
                  bad: list[str]) -> list[dict]:
    """Validate (where, record) pairs into question rows; problems go to `bad`."""
    rows = []
    for where, rec in records:
        if not isinstance(rec, dict):
            bad.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        missing = [k for k in ("qid", "lang", "question") if rec.get(k) in (None, "")]
        if missing:
            bad.append(f"{where}: missing or empty {', '.join(missing)}")
            continue
        question = str(rec["question"]).strip()
        if not question:
            bad.append(f"{where}: empty question")
            continue
        try:
            gold = _gold(rec.get("gold"))
        except ValueError as e:
            bad.append(f"{where}: {e}")
            continue
        key = (str(rec["qid"]), str(rec["lang"]))
        if key in seen:
            bad.append(f"{where}: qid {key[0]!r} in {key[1]!r} repeats {seen[key]}")
            continue
        seen[key] = where
        rows.append({"qid": key[0], "lang": key[1], "question": question, "gold": gold})
    return rows


# ---------------------------------------------------------------- Hugging Face hub
def _from_hub(source: str, wanted: list[str] | None, bad: list[str]) -> list[dict]:
    """`hf:<id>[:split]`. A dataset with a `lang` column loads as is; otherwise each
    language is a config (the juletxara/mgsm layout) and qids are <name>-<row:04d>."""
    dataset_id, _, split = source[3:].partition(":")
    split = split or "test"
    try:
        import datasets
    except ImportError:
        raise QuestionError(
            f"{source}: Hugging Face sources need the `datasets` library, which the gpu extra "
            f"installs (`make install EXTRA=gpu`, `pip install -e '.[gpu]'`, `bestofl submit "
            f"--extra gpu`; elsewhere `pip install datasets`), and a reachable hub. Offline, save "
            f"the dataset as .jsonl/.parquet (qid, lang, question, gold) and point at the file."
        ) from None
    name = dataset_id.split("/")[-1].lower()
    try:
        per_language = [c for c in datasets.get_dataset_config_names(dataset_id) if c in LANGUAGES]
        parts = ([(lang, datasets.load_dataset(dataset_id, lang, split=split))
                  for lang in per_language if wanted is None or lang in wanted]
                 if per_language else [(None, datasets.load_dataset(dataset_id, split=split))])
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise QuestionError(
            f"{source}: cannot load Hugging Face dataset {dataset_id!r} split {split!r} "
            f"({type(e).__name__}: {e}). Is the hub reachable (HF_HUB_OFFLINE unset)? "
            f"Offline, use a local .jsonl/.parquet file instead."
        ) from None
    records = []
    for lang, ds in parts:
        for i, rec in enumerate(ds):
            gold = next((rec[k] for k in ("gold", "answer_number", "answer") if rec.get(k) is not None), None)
            records.append((f"{source} ({lang or 'all'}) row {i}", {
                "qid": rec.get("qid", f"{name}-{i:04d}"), "lang": rec.get("lang", lang),
                "question": rec.get("question"), "gold": gold}))
    return _from_records(records, {}, bad)

