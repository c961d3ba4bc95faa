"""External generations -> candidate pool: `bestofl import --format NAME SRC OUT`.

    xling-traces  SRC/<method>/<lang>.jsonl.gz (or .jsonl), line i = MGSM problem i, keys
                  language, prompt, output (the whole chat transcript), gold_answer.
                  The s1.1 traces of Yong et al. (2025); `nxn-en-query` holds English
                  questions answered in <lang>. Each method is one sample of its question.
    jsonl         one row per line; `columns` maps pool columns to source keys (defaults:
                  the pool names; `lang` for question_lang, `question` for prompt).

With `tokenizer` set, num_tokens is each response's token count under that tokenizer
(replacing any count the source gives), so token budgets work on imported pools.

Every source file is read and validated before anything is written, so a malformed file
leaves the output untouched; the pool then goes out in one write, then _SUCCESS.
"""
from __future__ import annotations

import json
import os
import posixpath
import sys
from collections import Counter
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from bestofl import pool, storage
from bestofl.answers import extract_answer, grade, is_correct, model_response
from bestofl.config import ImportConfig
from bestofl.languages import get_language
from bestofl.models import HUB_ID, local_model
from bestofl.questions import mgsm_qid

EN_QUERY_METHOD = "nxn-en-query"  # English question, reasoning forced into the file's language
XLING_KEYS = ("prompt", "output", "gold_answer")
SUFFIXES = (".jsonl.gz", ".jsonl")
TOKEN_BATCH = 256  # responses per fast-tokenizer call (Rust, parallel inside a call)


class SourceError(ValueError):
    """A source file is malformed; the message names the file and line."""


def import_pool(cfg: ImportConfig) -> str:
    """Read, grade and write `cfg.src` as a candidate pool at `cfg.output`; returns it."""
    storage.check_output_apart(cfg.output, [cfg.src])
    if storage.is_finished(cfg.output) and not cfg.overwrite:
        storage.prepare_output(cfg.output, overwrite=False)  # refuses before any reading
    tokenizer = _load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if cfg.format == "xling-traces":
        table, files = _read_xling(cfg)
    elif cfg.format == "jsonl":
        table, files = _read_jsonl(cfg)
    else:
        raise ValueError(f"unknown import format {cfg.format!r}; known: xling-traces, jsonl")
    pool.check_identity(table)
    if tokenizer is not None:
        table = _count_tokens(table, tokenizer, cfg.tokenizer)
    if storage.prepare_output(cfg.output, cfg.overwrite):
        _clear_unfinished(cfg.output)
    storage.save_config(cfg.output, cfg)
    pool.write_pool(table, cfg.output)
    correct = table.column("correct").to_pylist()
    summary = {"rows": table.num_rows, "files": files,
               "graded": sum(c is not None for c in correct), "correct": sum(c is True for c in correct)}
    storage.mark_finished(cfg.output, summary)
    print(f"[import] wrote {table.num_rows} rows from {files} file(s) to {cfg.output}",
          file=sys.stderr, flush=True)
    return cfg.output


def _load_tokenizer(name: str) -> Any:
    """The tokenizer of a model folder, a URI (copied by local_model) or a hub id."""
    from transformers import AutoTokenizer

    local = local_model(name)
    if not os.path.isdir(local) and (os.path.exists(local) or not HUB_ID.match(local)):
        raise FileNotFoundError(f"tokenizer not found: {name} (tokenizer= takes a model folder, "
                                "a URI such as s3://bucket/model, or a hub id)")
    try:
        return AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"tokenizer {name} cannot be loaded: {e}") from None


def _count_tokens(table: pa.Table, tokenizer: Any, name: str) -> pa.Table:
    """`table` with num_tokens = the tokens of each response (no special tokens added)."""
    texts = [t or "" for t in table.column("response").to_pylist()]
    counts: list[int] = []
    for start in range(0, len(texts), TOKEN_BATCH):
        ids = tokenizer(texts[start:start + TOKEN_BATCH], add_special_tokens=False, verbose=False,
                        return_attention_mask=False)["input_ids"]
        counts += [len(x) for x in ids]
    print(f"[import] num_tokens from {name}: {sum(counts)} tokens in all", file=sys.stderr, flush=True)
    index = table.schema.get_field_index("num_tokens")
    return table.set_column(index, table.schema.field(index), pa.array(counts, pa.int64()))


def _clear_unfinished(output: str) -> None:
    """An earlier import into `output` stopped before _SUCCESS: its rows are rebuilt from
    the source, so its part files go. A folder that is not a bestofl output is refused."""
    if storage.saved_config(output) is None:
        raise storage.OutputExistsError(
            f"{output} is not empty and holds no bestofl output; choose an empty folder")
    fs, _ = storage.filesystem(output)
    for file in pool.parquet_files(output):
        fs.delete_file(file)


def _source_files(src: str, depth: int) -> tuple[pafs.FileSystem, str, list[str]]:
    """The .jsonl(.gz) files `depth` levels below a folder (or the one file given)."""
    fs, root = storage.filesystem(src)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"import source not found: {src}")
    if info.type == pafs.FileType.File:
        return fs, root, [root]
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(SUFFIXES)
                   and f.path[len(root):].strip("/").count("/") == depth - 1)
    return fs, root, files


def _lines(fs: pafs.FileSystem, file: str) -> Iterator[tuple[str, str]]:
    """(file:line, text) of every line; only "\\n" ends a line (JSON may hold U+2028)."""
    try:
        with fs.open_input_stream(file) as f:  # .gz is decompressed by pyarrow (by extension)
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{file}: cannot read ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        yield f"{file}:{i + 1}", line


def _record(where: str, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise SourceError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _language(code: Any, where: str) -> str:
    try:
        return get_language(str(code)).code
    except ValueError as e:
        raise SourceError(f"{where}: {e}") from None


def _progress(file: str, rows: list[dict]) -> None:
    correct = sum(r["correct"] is True for r in rows)
    print(f"[import] {file}: {len(rows)} rows, {correct} correct", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- xling-traces
def _read_xling(cfg: ImportConfig) -> tuple[pa.Table, int]:
    fs, root, files = _source_files(cfg.src, depth=2)
    if not files or files == [root]:
        raise SourceError(f"{cfg.src}: expected a folder of <method>/<lang>.jsonl.gz files")
    model = cfg.model or posixpath.basename(root.rstrip("/"))
    tables = []
    for file in files:
        method = posixpath.basename(posixpath.dirname(file))
        name = posixpath.basename(file)
        lang = _language(name[: -len(next(s for s in SUFFIXES if name.endswith(s)))], file)
        rows = []
        for i, (where, line) in enumerate(_lines(fs, file)):
            rec = _record(where, line)
            missing = [k for k in XLING_KEYS if k not in rec]
            if missing:
                raise SourceError(f"{where}: missing key(s) {', '.join(missing)}")
            response = model_response(str(rec["output"]))
            gold = None if rec["gold_answer"] is None else str(rec["gold_answer"])
            answer, correct = grade(response, gold, lang)
            rows.append({
                "qid": mgsm_qid(i), "question_lang": "en" if method == EN_QUERY_METHOD else lang,
                "response_lang": lang, "sample_idx": 0, "model": model, "method": method,
                "prompt": rec["prompt"], "response": response, "answer": answer, "gold": gold,
                "correct": correct,
            })
        _progress(file, rows)
        tables.append(pool.to_table(rows))
    return pa.concat_tables(tables), len(files)


# ---------------------------------------------------------------- generic jsonl
def _read_jsonl(cfg: ImportConfig) -> tuple[pa.Table, int]:
    unknown = sorted(set(cfg.columns) - set(pool.POOL_SCHEMA.names))
    if unknown:
        raise SourceError(f"columns.{unknown[0]}: not a pool column; pool columns are "
                          f"{', '.join(pool.POOL_SCHEMA.names)}")
    mapping = {name: cfg.columns.get(name, name) for name in pool.POOL_SCHEMA.names}
    fallback = {c: k for c, k in (("question_lang", "lang"), ("prompt", "question"))
                if c not in cfg.columns}
    fs, root, files = _source_files(cfg.src, depth=1)
    if not files:
        raise SourceError(f"{cfg.src}: no .jsonl or .jsonl.gz files in it")
    name = posixpath.basename(root.rstrip("/"))
    for suffix in SUFFIXES:
        name = name.removesuffix(suffix)
    next_idx: Counter = Counter()
    tables = []
    for file in files:
        rows = []
        for where, line in _lines(fs, file):
            if line.strip():
                rows.append(_jsonl_row(_record(where, line), where, mapping, fallback,
                                       cfg.model or name, name, next_idx))
        _progress(file, rows)
        tables.append(pool.to_table(rows))
    return pa.concat_tables(tables), len(files)


def _jsonl_row(rec: dict, where: str, mapping: dict[str, str], fallback: dict[str, str],
               model: str, method: str, next_idx: Counter) -> dict[str, Any]:
    row = {}
    for fld in pool.POOL_SCHEMA:
        key = mapping[fld.name] if mapping[fld.name] in rec else fallback.get(fld.name)
        row[fld.name] = _coerce(rec.get(key), fld.type, f"{where}: {key!r}")
    for col in ("qid", "question_lang", "response"):
        if row[col] is None:
            raise SourceError(f"{where}: missing {mapping[col]!r} (the pool's {col}; "
                              f"map another key with columns.{col}=KEY)")
    row["question_lang"] = _language(row["question_lang"], where)
    row["response_lang"] = _language(row["response_lang"] or row["question_lang"], where)
    row["model"] = row["model"] or model
    row["method"] = row["method"] or method
    if row["sample_idx"] is None:  # numbered in file order within each identity
        group = tuple(row[c] for c in pool.IDENTITY if c != "sample_idx")
        row["sample_idx"] = next_idx[group]
        next_idx[group] += 1
    if row["answer"] is None:
        row["answer"] = extract_answer(row["response"], row["response_lang"])
    if row["correct"] is None:
        row["correct"] = is_correct(row["answer"], row["gold"])
    return row


def _coerce(value: Any, typ: pa.DataType, where: str) -> Any:
    """A JSON value as the pool column's type; SourceError when it cannot be one."""
    if value is None:
        return None
    if pa.types.is_string(typ):
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
    if pa.types.is_boolean(typ) and isinstance(value, bool):
        return value
    if pa.types.is_integer(typ) and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
    if pa.types.is_floating(typ) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise SourceError(f"{where}: {value!r} is not a valid {typ}")
