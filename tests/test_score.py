"""`bestofl score`: a hand-made pool through Ray Data reward-model actors.

One run (module fixture: two actors, one per simulated worker node, the reward model on a
local S3 server) that resumes a crashed partial output backs the row, score, null, resume,
model-copy and layout checks. Expected scores come from `reward.model.score` run in this
process on the same rows, from the local folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os

import numpy as np
import pytest

from bestofl import pool, storage
from bestofl.cli import main as cli_main
from bestofl.config import load_config

LANGS = {
    "en": "Janet has 16 eggs and sells the rest for 2 dollars each.",
    "de": "Janet hat 16 Eier und verkauft den Rest für 2 Dollar.",
    "zh": "珍妮特有16个鸡蛋，剩下的每个卖2美元。",
    "sw": "Janet ana mayai 16 na kuuza yaliyobaki kwa dola 2.",
}
MAX_LENGTH = 192  # the longest rows exceed it: middle truncation is exercised too
N_QIDS, N_SAMPLES = 4, 18  # 4 x 4 x 18 = 288 rows


def _rows() -> list[dict]:
    rows = []
    for q in range(N_QIDS):
        for lang, text in LANGS.items():
            for s in range(N_SAMPLES):
                reps = 1 + (q * 7 + s * 5) % 40  # 1..40 repetitions: short to over max_length
                rows.append(dict(
                    qid=f"q{q}", question_lang=lang, response_lang=lang, sample_idx=s,
                    model="tiny", method="hand", seed=s, prompt=f"Q{q}: {text}",
                    response=" ".join([text] * reps) + f" \\boxed{{{q + s}}}",
                    answer=str(q + s), gold=str(q), correct=s == 0, num_tokens=reps * 12,
                    finish_reason="stop"))
    rows[5].update(response="", error="prompt longer than the context", finish_reason=None)
    rows[77].update(response="   ")   # blank, no error
    rows[150].update(prompt=None)      # unknown prompt still scores (empty question)
    return rows


def _key(row: dict) -> tuple:
    return tuple(row[c] for c in pool.IDENTITY)


def _cfg(pool_dir, tiny_rm, output, *extra):
    return load_config("score", None, [
        f"input={pool_dir}", f"model={tiny_rm}", f"output={output}", f"max_length={MAX_LENGTH}",
        "forward_batch_size=8", "sort_window=64", "actors.batch_size=32",
        "actors.num_actors=2", "actors.resources={sim_node: 1}",  # one per simulated node
        *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rows = _rows()
    path = tmp_path_factory.mktemp("score") / "pool"
    # Two appends: several files per language partition, as `sample` leaves them.
    pool.write_pool(pool.to_table(rows[:140]), str(path))
    pool.write_pool(pool.to_table(rows[140:]), str(path))
    return path, rows


@pytest.fixture(scope="module")
def expected(source, tiny_rm):
    """Scores of the same rows from the reward model in this process, by identity."""
    from bestofl.reward.model import load_reward_model, score

    _, rows = source
    model, tokenizer = load_reward_model(str(tiny_rm))
    live = [r for r in rows if not r.get("error") and r["response"].strip()]
    values = score(model, tokenizer, [r["prompt"] or "" for r in live],
                   [r["response"] for r in live], max_length=MAX_LENGTH, batch_size=8)
    out = {_key(r): None for r in rows}
    out.update({_key(r): v for r, v in zip(live, values)})
    return out


SENTINEL = 1234.5


@pytest.fixture(scope="module")
def scored(ray_cluster, s3_server, rm_on_s3, source, tmp_path_factory):
    """One run that resumes a crashed earlier one: a third of the rows are already in the
    output (with a sentinel score) next to a half-written file; the rest must be scored.
    The reward model is the tiny one on S3: the driver checks it and each actor copies it
    (safetensors only) into its node's cache. Returns the driver's last bar too."""
    from bestofl.models import CACHE_ENV
    from pipelines.score import run

    _, rows = source
    base = tmp_path_factory.mktemp("score")
    output, cache = base / "scored", base / "cache"
    first = [dict(r, score=SENTINEL) for r in rows if r["sample_idx"] % 3 == 1]
    pool.write_pool(pool.to_table(first), str(output))
    (output / "response_lang=en" / "torn.parquet").write_bytes(b"PAR1 half a file")
    env = {**s3_server, CACHE_ENV: str(cache)}  # actors started before the server
    cfg = _cfg(source[0], rm_on_s3, output)  # two actors, one per node
    bar = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(bar):
        mp.setenv(CACHE_ENV, str(cache))  # the driver's check copies it too
        summary = run(dataclasses.replace(cfg, actors=dataclasses.replace(cfg.actors, env_vars=env)))
    return output, summary, {_key(r) for r in first}, cache, bar.getvalue().rsplit("\r", 1)[-1]


def test_every_row_once_with_unchanged_columns(source, scored):
    _, rows = source
    output, summary, first, *_ = scored
    table = pool.read_pool(str(output))
    pool.check_identity(table)
    got = {_key(r): r for r in table.to_pylist()}
    assert table.num_rows == len(rows) and set(got) == {_key(r) for r in rows}
    for row in rows:  # every pool column survives untouched
        out = got[_key(row)]
        assert {k: out[k] for k in row} == {k: row.get(k) for k in row}
    assert summary["rows"] == len(rows) and summary["already_scored"] == len(first)
    assert summary["scored_now"] == len(rows) - len(first) and summary["rows_per_s"] > 0


def test_scores_match_in_process_model(scored, expected):
    output, summary, first, *_ = scored
    got = {_key(r): r["score"] for r in pool.read_pool(str(output)).to_pylist()}
    assert all(got[k] == SENTINEL for k in first)  # resumed rows are not scored again
    nulls = [k for k, v in expected.items() if v is None]
    assert len(nulls) == 2 and all(got[k] is None for k in nulls)  # error row, blank row
    assert summary["null_score"] == 2
    keys = [k for k, v in expected.items() if v is not None and k not in first]
    assert all(got[k] is not None and math.isfinite(got[k]) for k in keys)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys],
                               rtol=1e-4, atol=1e-4)
    assert np.std([got[k] for k in keys]) > 1e-3  # scores differ by row: not a constant


def test_output_is_a_partitioned_finished_pool(scored, rm_on_s3):
    output, *_ = scored
    parts = sorted(p for p in os.listdir(output) if p.startswith("response_lang="))
    assert parts == [f"response_lang={lang}" for lang in sorted(LANGS)]
    for part in parts:
        assert any(f.endswith(".parquet") for f in os.listdir(output / part))
    assert not (output / "response_lang=en" / "torn.parquet").exists()
    assert storage.is_finished(str(output))
    saved = load_config("score", output / "_config.yaml")
    assert saved.model == rm_on_s3 and saved.max_length == MAX_LENGTH


def test_finished_output_refuses_rerun(source, tiny_rm, scored, capsys):
    from pipelines.score import run

    output = scored[0]
    before = sorted(os.walk(output))
    with pytest.raises(storage.OutputExistsError, match="overwrite=true"):
        run(_cfg(source[0], tiny_rm, output))
    assert cli_main(["score", f"input={source[0]}", f"model={tiny_rm}", f"output={output}"]) == 2
    assert "already holds a finished result" in capsys.readouterr().err
    assert sorted(os.walk(output)) == before


def test_partial_output_of_another_job_is_refused(source, tiny_rm, tmp_path):
    from pipelines.score import run

    output = tmp_path / "other"
    storage.prepare_output(str(output), False)
    storage.save_config(str(output), _cfg(source[0], tiny_rm, output, "max_length=64"))
    with pytest.raises(ValueError, match="different max_length"):
        run(_cfg(source[0], tiny_rm, output))
    stranger = tmp_path / "stranger"  # rows the input does not hold: not a partial of it
    pool.write_pool(pool.to_table([dict(source[1][0], qid="elsewhere")]), str(stranger))
    with pytest.raises(pool.PoolError, match="not in"):
        run(_cfg(source[0], tiny_rm, stranger))


def test_bad_model_path_fails_before_ray(source, tmp_path, monkeypatch):
    import pipelines.score as score_pipeline

    def no_ray(*_):
        raise AssertionError("Ray work started before the model was checked")

    monkeypatch.setattr(score_pipeline, "init_ray", no_ray)
    output = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="reward model not found: .*nope"):
        score_pipeline.run(_cfg(source[0], tmp_path / "nope", output))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        score_pipeline.run(_cfg(source[0], tmp_path / "empty", output))
    assert not output.exists()


def test_the_model_is_copied_once_and_the_bar_counts_rows(scored, expected):
    """Both actors (one per simulated node, one machine) share the node's one copy of the
    S3 model; the driver's bar counts the rows as the actors write them, with a rate."""
    _, _, first, cache, bar = scored
    assert len(os.listdir(cache)) == 2  # the copy and its lock
    todo = len(expected) - len(first)
    assert "scored: 100%" in bar and f"{todo}/{todo}" in bar and "row/s" in bar, bar


def test_sort_by_length_drops_done_rows_and_groups_lengths(source):
    from bestofl import scoring

    rows = source[1][:60]
    table = pool.to_table(rows)
    out = scoring.sort_by_length(table, scoring.identity_keys(table.slice(0, 10)))
    assert sorted(_key(r) for r in out.to_pylist()) == sorted(_key(r) for r in rows[10:])
    lengths = [len(r["prompt"] or "") + len(r["response"]) for r in out.to_pylist()]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_scored_output_reads_as_is_by_the_usual_tools(scored):
    """The scored pool (Ray Data's part files beside _config.yaml and _SUCCESS) reads with
    pandas, pyarrow datasets and globbing, no filter needed."""
    from test_storage import read_with_every_tool

    output, summary, *_ = scored
    assert set(read_with_every_tool(str(output)).values()) == {summary["rows"]}
