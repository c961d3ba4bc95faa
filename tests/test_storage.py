"""Outputs and pools on pyarrow-filesystem URIs: file:// and S3 (a local moto server).

The same semantics must hold on every filesystem a cluster job may write to: pools append
uniquely named parts and read back whole; an unfinished output resumes; a finished one is
refused unless overwrite is asked, and then replaced.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pytest

from bestofl import pool, storage

BUCKET = "bestofl-test"  # created by the s3_server fixture (conftest.py)


def _rows(lang: str, n: int, offset: int = 0) -> list[dict]:
    return [dict(qid=f"q{i}", question_lang=lang, response_lang=lang, sample_idx=0, model="m",
                 method="hand", response=f"the answer is {i}", answer=str(i), gold=str(i),
                 correct=True) for i in range(offset, offset + n)]


@pytest.fixture(params=["file", "s3"])
def base(request, tmp_path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}"
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{tmp_path.name}"


def test_pool_round_trip(base):
    uri = storage.join(base, "pool")
    assert not storage.exists(uri)
    pool.write_pool(pool.to_table(_rows("en", 3)), uri)
    pool.write_pool(pool.to_table(_rows("de", 2) + _rows("en", 2, offset=3)), uri)
    table = pool.read_pool(uri)
    assert table.schema == pool.POOL_SCHEMA
    assert table.num_rows == 7
    pool.check_identity(table)
    assert sorted(zip(table.column("response_lang").to_pylist(), table.column("qid").to_pylist())) == sorted(
        [("en", f"q{i}") for i in range(5)] + [("de", "q0"), ("de", "q1")])
    files = pool.parquet_files(uri)
    assert len(files) == 3 and all("response_lang=" in f for f in files)  # one part per write x language
    with pytest.raises(pool.PoolError, match="not found"):
        pool.read_pool(storage.join(base, "missing"))


def test_output_lifecycle(base):
    out = storage.join(base, "out")
    assert storage.prepare_output(out, overwrite=False) is False  # fresh
    pool.write_pool(pool.to_table(_rows("en", 2)), out)
    assert storage.prepare_output(out, overwrite=False) is True  # unfinished: resume
    assert pool.read_pool(out).num_rows == 2  # resuming keeps what was written
    storage.save_config(out, {"output": out})
    storage.mark_finished(out, {"rows": 2})
    assert storage.is_finished(out)
    assert json.loads(storage.read_text(storage.join(out, storage.FINISHED))) == {"rows": 2}
    fs, path = storage.filesystem(out)
    names = {os.path.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(path))}
    assert {"_config.yaml", "_SUCCESS", "response_lang=en"} <= names
    assert not any(n.endswith(".tmp") for n in names)  # atomic writes leave no temporaries

    with pytest.raises(storage.OutputExistsError, match="overwrite=true"):
        storage.prepare_output(out, overwrite=False)
    assert pool.read_pool(out).num_rows == 2  # a refused run touches nothing
    assert storage.prepare_output(out, overwrite=True) is False  # replaced: starts empty
    assert not storage.is_finished(out)
    assert pool.read_pool(out).num_rows == 0


def test_file_uri_and_plain_path_are_the_same_place(tmp_path):
    pool.write_pool(pool.to_table(_rows("en", 2)), f"file://{tmp_path}/p")
    assert pool.read_pool(str(tmp_path / "p")).num_rows == 2
    storage.write_text(str(tmp_path / "x" / "note.txt"), "hi")
    assert storage.read_text(f"file://{tmp_path}/x/note.txt") == "hi"


# ---------------------------------------------------------------- the usual readers
def read_with_every_tool(folder: str) -> dict[str, int]:
    """Rows of an output folder (or one Parquet file) read as is by pandas, pyarrow.dataset
    and DuckDB-style globbing (every `**/*.parquet` file; duckdb itself when installed)."""
    import glob
    import os

    import pandas as pd
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    counts = {"pandas": len(pd.read_parquet(folder)),
              "pyarrow.dataset": pads.dataset(folder).count_rows(),
              "glob": sum(pq.read_metadata(f).num_rows
                          for f in ([folder] if os.path.isfile(folder) else
                                    glob.glob(f"{folder}/**/*.parquet", recursive=True)))}
    try:
        import duckdb
    except ImportError:
        return counts
    pattern = folder if os.path.isfile(folder) else f"{folder}/**/*.parquet"
    counts["duckdb"] = duckdb.sql(f"select count(*) from '{pattern}'").fetchone()[0]
    return counts


def test_pool_and_report_folders_read_as_is_by_the_usual_tools(tmp_path):
    """A pool (with its _config.yaml and _SUCCESS) and the report's per-question table read
    with pandas, pyarrow datasets and globbing, no filter needed."""
    from bestofl import cli

    src = tmp_path / "gens.jsonl"
    src.write_text("".join(json.dumps({"qid": f"q{i}", "lang": lang, "gold": str(i),
                                       "response": f"The answer is {i + s % 2}.", "sample_idx": s})
                           + "\n" for i in range(3) for lang in ("en", "de") for s in range(2)))
    out = tmp_path / "pool"
    assert cli.main(["import", "format=jsonl", f"src={src}", f"output={out}"]) == 0
    assert {"_config.yaml", "_SUCCESS"} <= {p.name for p in out.iterdir()}
    assert set(read_with_every_tool(str(out)).values()) == {12}
    report = tmp_path / "report"
    assert cli.main(["evaluate", f"input={out}", f"output={report}", "plots=false",
                     "bootstrap=10", "selectors=[majority]"]) == 0
    counts = read_with_every_tool(str(report / "per_question.parquet"))  # the report's table
    assert len(set(counts.values())) == 1 and counts["pandas"] > 0, counts


def test_outputs_of_the_first_layout_still_resume(tmp_path):
    """Outputs written before the `_` names hold `config.yaml`: it is still read."""
    out = str(tmp_path / "old")
    storage.write_text(storage.join(out, storage.LEGACY_CONFIG), "seed: 1\n")
    assert storage.saved_config(out) == "seed: 1\n"
    storage.write_text(storage.join(out, storage.CONFIG), "seed: 2\n")
    assert storage.saved_config(out) == "seed: 2\n"  # the new name wins where both exist


@dataclass
class Inner:
    seed: int = 0


@dataclass
class Job:
    model: str = "m"
    n: int = 4
    inner: Inner = field(default_factory=Inner)


def test_resume_same_job_compares_the_saved_keys(tmp_path):
    """One rule for sample, score and train-rm: the saved config must agree on the job's
    keys (dotted paths too); a key an older output did not save counts as equal."""
    out = str(tmp_path / "out")
    assert storage.resume_same_job(out, Job(), ["model"], False)  # nothing saved yet
    storage.save_config(out, Job())
    storage.write_text(storage.join(out, "part-0.parquet"), "x")
    assert storage.resume_same_job(out, Job(n=8), ["model", "inner.seed"], False)
    with pytest.raises(ValueError, match=r"another job \(different model, inner.seed\)"):
        storage.resume_same_job(out, Job(model="x", inner=Inner(1)), ["model", "inner.seed"], False)
    storage.write_text(storage.join(out, storage.CONFIG), "n: 4\n")  # an older output: no model key
    assert storage.resume_same_job(out, Job(model="x"), ["model"], False)
    storage.write_text(storage.join(out, storage.CONFIG), "model: m\n")
    assert not storage.resume_same_job(out, Job(model="x"), ["model"], True)  # cleared
    assert os.listdir(out) == []


def test_absolute_paths_for_actors_on_other_nodes(tmp_path, monkeypatch):
    from bestofl import models

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lm").mkdir()
    assert storage.absolute("out") == str(tmp_path / "out")
    assert storage.absolute("s3://b/out") == "s3://b/out"
    assert models.absolute_model("lm") == str(tmp_path / "lm")
    assert models.absolute_model("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"  # a hub id: a name
    assert models.absolute_model("s3://b/rm") == "s3://b/rm"
