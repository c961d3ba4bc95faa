"""Reward-model scoring of a candidate pool, as two Ray Data stages.

`sort_by_length` runs over windows of `sort_window` rows: it drops rows that a partial
output already holds and sorts the rest by prompt + response length, so the actor batches
cut from a window hold similar lengths (little padding) while the job still streams,
with no global sort barrier. `PoolScorer` is the actor class that holds the reward model;
inside each call `reward.model.score` sorts again and runs length-grouped forward passes.

The reward model reads (question, response) with the pool's `prompt` as the question.
Rows with `error` set or an empty response get score null: there is nothing to judge.
"""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from bestofl import pool, storage
from bestofl.models import local_model
from bestofl.pool import identity_keys
from bestofl.reward.model import load_reward_model, score


def drop_partial_files(uri: str) -> list[str]:
    """Delete Parquet files a crash left half written (no readable footer); their rows
    are simply scored again. Returns what was deleted."""
    fs, _ = storage.filesystem(uri)
    dropped = []
    for path in pool.parquet_files(uri):
        try:
            pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError):
            fs.delete_file(path)
            dropped.append(path)
    return dropped


def sort_by_length(batch: pa.Table, done: pa.Array | None = None) -> pa.Table:
    """A window of pool rows in the pool schema, minus `done` identities, shortest first."""
    batch = pool.conform(batch)
    if done is not None and len(done):
        batch = batch.filter(pc.invert(pc.is_in(identity_keys(batch), value_set=done)))
    length = pc.add(pc.fill_null(pc.utf8_length(batch.column("prompt")), 0),
                    pc.fill_null(pc.utf8_length(batch.column("response")), 0))
    return batch.take(pc.sort_indices(length))


def needs_score(table: pa.Table) -> np.ndarray:
    """Rows the reward model reads: no error and a non-blank response."""
    text = pc.utf8_length(pc.utf8_trim_whitespace(table.column("response")))
    ok = pc.and_(pc.is_null(table.column("error")), pc.greater(text, 0))
    return pc.fill_null(ok, False).to_numpy(zero_copy_only=False)


class PoolScorer:
    """Ray Data actor: holds the reward model, adds `score` to pool batches and writes each
    as its own part of the output pool (no write stage after it: no task workers to start);
    a one-row count goes back to the driver."""

    def __init__(self, model: str, dtype: str, max_length: int, batch_size: int, output: str,
                 use_gpu: bool = False, threads: int | None = None,
                 trust_remote_code: bool = False) -> None:
        if threads:
            # Ray pins OMP threads to the actor's num_cpus; say it explicitly for torch.
            torch.set_num_threads(threads)
        self.model, self.tokenizer = load_reward_model(local_model(model), dtype, trust_remote_code)
        self.model.to("cuda" if use_gpu else "cpu").eval()
        self.max_length, self.batch_size, self.output = max_length, batch_size, output

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = pool.conform(batch)
        keep = needs_score(batch)
        idx = np.flatnonzero(keep)
        prompts = batch.column("prompt").take(idx).to_pylist()
        responses = batch.column("response").take(idx).to_pylist()
        values = np.zeros(batch.num_rows)
        values[idx] = score(self.model, self.tokenizer, [p or "" for p in prompts], responses,
                            self.max_length, self.batch_size)
        column = pa.array(values, type=pa.float64(), mask=~keep)
        pool.write_pool(batch.set_column(batch.schema.get_field_index("score"), "score", column),
                        self.output)
        return pa.table({"rows": [batch.num_rows]})

