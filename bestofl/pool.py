"""The candidate pool: one Parquet row per sampled response (columns: POOL_SCHEMA)."""
from __future__ import annotations

import uuid
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bestofl import storage

POOL_SCHEMA = pa.schema([
    ("qid", pa.string()),
    ("question_lang", pa.string()),
    ("response_lang", pa.string()),
    ("sample_idx", pa.int64()),
    ("model", pa.string()),
    ("method", pa.string()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("response", pa.string()),
    ("answer", pa.string()),
    ("gold", pa.string()),
    ("correct", pa.bool_()),
    ("num_tokens", pa.int64()),
    ("finish_reason", pa.string()),
    ("error", pa.string()),
    ("score", pa.float64()),
])
REQUIRED = ("qid", "question_lang", "response_lang", "sample_idx", "model", "method", "response")
IDENTITY = ("qid", "question_lang", "response_lang", "model", "method", "sample_idx")


class PoolError(ValueError):
    """A pool file is missing, malformed, or breaks row identity."""


def to_table(rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> pa.Table:
    """Rows (list of dicts) or columns (dict of lists) -> a table in pool schema order.

    Columns the input lacks are null; columns outside the schema are an error.
    """
    columns = rows if isinstance(rows, Mapping) else _columns(rows)
    unknown = set(columns) - set(POOL_SCHEMA.names)
    if unknown:
        raise PoolError(f"columns not in the pool schema: {sorted(unknown)}")
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for fld in POOL_SCHEMA:
        values = columns.get(fld.name)
        arrays.append(pa.array(values if values is not None else [None] * n, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=POOL_SCHEMA)


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    names = {k for r in rows for k in r}
    return {k: [r.get(k) for r in rows] for k in names}


def conform(table: pa.Table, names: Sequence[str] | None = None) -> pa.Table:
    """Cast a table read from disk to the pool schema, or to its `names` columns (partition
    columns come back as dictionaries; absent optional columns become null)."""
    schema = POOL_SCHEMA if names is None else pa.schema([POOL_SCHEMA.field(n) for n in names])
    missing = [c for c in REQUIRED if c in schema.names and c not in table.column_names]
    if missing:
        raise PoolError(f"pool lacks required column(s) {missing}")
    arrays = []
    for fld in schema:
        if fld.name in table.column_names:
            col = table.column(fld.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            try:
                arrays.append(col.cast(fld.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise PoolError(f"column {fld.name!r} has type {col.type}, expected {fld.type}: {e}")
        else:
            arrays.append(pa.nulls(table.num_rows, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def parquet_files(uri: str) -> list[str]:
    """Every data file of a pool folder (or the one file), skipping _/. metadata."""
    fs, path = storage.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise PoolError(f"pool not found: {uri}")
    if info.type == pafs.FileType.File:
        return [path]
    files = [
        f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        and not any(p.startswith(("_", ".")) for p in f.path[len(path):].split("/") if p)
    ]
    return sorted(files)


def read_pool(uri: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a pool folder (hive-partitioned or flat) or a single Parquet file; only
    `columns` (typed as in POOL_SCHEMA) when given, so the texts can stay on disk.
    A row identity that appears twice is a PoolError naming the folder(s) it comes from."""
    return read_pools([uri], columns)


def read_pools(uris: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Several pools as one table (see read_pool); identities must be unique across all."""
    names = list(columns) if columns else list(POOL_SCHEMA.names)
    need = names + [c for c in IDENTITY if c not in names]
    parts = [_read_one(uri, need) for uri in uris]
    table = pa.concat_tables([t for t, _ in parts]) if len(parts) > 1 else parts[0][0]
    _check_unique(table, [(uri, files) for uri, (_, files) in zip(uris, parts)])
    return table.select(names)


def _read_one(uri: str, names: list[str]) -> tuple[pa.Table, pa.ChunkedArray]:
    """`names` of one pool, and the part file each row comes from."""
    fs, path = storage.filesystem(uri)
    files = parquet_files(uri)
    if not files:
        return conform(POOL_SCHEMA.empty_table(), names), pa.chunked_array([], pa.string())
    try:
        dataset = pads.dataset(files, filesystem=fs, format="parquet",
                               partitioning=pads.partitioning(flavor="hive"),
                               partition_base_dir=path if len(files) > 1 or files[0] != path else None)
        present = [n for n in names if n in dataset.schema.names]
        table = dataset.to_table(columns=[*present, "__filename"])
    except (pa.ArrowInvalid, OSError) as e:
        for file in files:  # name the culprit: a bad footer names it, a bad data page does not
            try:
                pq.read_table(file, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as file_error:
                raise PoolError(f"cannot read pool {uri}: {file}: {file_error}") from None
        raise PoolError(f"cannot read pool {uri}: {e}") from None
    return conform(table.drop_columns(["__filename"]), names), table.column("__filename")


def _folder(uri: str, file: str) -> str:
    """The folder of a part file without hive partition levels (`pool/scored`, not
    `pool/scored/response_lang=en`): what a user recognises."""
    _, path = storage.filesystem(uri)
    rel = [p for p in file[len(path):].split("/")[:-1] if p and "=" not in p]
    return storage.join(uri, *rel) if rel else uri


def _duplicates(table: pa.Table) -> tuple[pa.Array, pa.Array, dict[str, Any]]:
    """Every row's identity key, the keys that appear more than once, and one such
    identity as a dict (empty when there is none)."""
    keys = identity_keys(table)
    counts = pc.value_counts(keys)
    dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if not len(dup):
        return keys, dup, {}
    first = pc.index(keys, dup[0]).as_py()
    return keys, dup, dict(zip(IDENTITY, (table.column(c)[first].as_py() for c in IDENTITY)))


def _check_unique(table: pa.Table, sources: list[tuple[str, pa.ChunkedArray]]) -> None:
    keys, dup, example = _duplicates(table)
    if not len(dup):
        return
    hit = pc.is_in(keys, value_set=dup)
    uris = [uri for uri, files in sources for _ in range(len(files))]
    files = pa.concat_arrays([f.combine_chunks() for _, f in sources if len(f)])
    folders = sorted({_folder(uris[i], files[i].as_py())
                      for i in pc.indices_nonzero(hit).to_pylist()})
    raise PoolError(f"{len(dup)} row identities appear more than once (e.g. {example}), in "
                    f"{', '.join(folders)}: a pool written inside another, or the same rows in "
                    f"two inputs ({', '.join(u for u, _ in sources)})")


def identity_keys(table: pa.Table) -> pa.Array:
    """One string per row that joins the row identity (for vectorised set lookups)."""
    parts = [pc.cast(table.column(c), pa.string()) for c in IDENTITY]
    keys = pc.binary_join_element_wise(*parts, "\x1f")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def write_pool(table: pa.Table, uri: str, partition_by: Sequence[str] = ("response_lang",),
               basename: str | None = None) -> None:
    """Write (append) one part of a pool; each call writes new, uniquely named files.

    Files are written under a `_staging-*` folder (readers skip `_` names) and then moved
    into place, so a crash mid-write never leaves a truncated part file in the pool.
    """
    fs, path = storage.filesystem(uri)
    table = conform(table)
    name = (basename or f"part-{uuid.uuid4().hex[:12]}") + "-{i}.parquet"
    staging = f"{path.rstrip('/')}/_staging-{uuid.uuid4().hex[:12]}"
    pq.write_to_dataset(table, staging, filesystem=fs, partition_cols=list(partition_by) or None,
                        basename_template=name, existing_data_behavior="overwrite_or_ignore")
    for info in fs.get_file_info(pafs.FileSelector(staging, recursive=True)):
        if info.type == pafs.FileType.File:
            target = f"{path.rstrip('/')}/{info.path[len(staging) + 1:]}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.move(info.path, target)
    fs.delete_dir(staging)


def drop_staging(uri: str) -> None:
    """Delete the `_staging-*` folders of writes that never finished (a killed writer)."""
    fs, path = storage.filesystem(uri)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("_staging-"):
            fs.delete_dir(info.path)


def identities(table: pa.Table) -> list[tuple]:
    cols = [table.column(c).to_pylist() for c in IDENTITY]
    return list(zip(*cols))


def check_identity(table: pa.Table) -> None:
    """Raise PoolError if any row identity of an in-memory table appears twice (a pool
    read from disk is checked by read_pool, which also names the folders)."""
    _, dup, example = _duplicates(table)
    if len(dup):
        raise PoolError(f"{len(dup)} row identities written more than once, e.g. {example}")


def languages(table: pa.Table, column: str = "response_lang") -> list[str]:
    return sorted(set(table.column(column).to_pylist()))

