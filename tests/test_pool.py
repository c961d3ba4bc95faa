"""The candidate pool: schema, conform, partitioned write/read, identity, corrupt files."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bestofl.pool import (IDENTITY, POOL_SCHEMA, PoolError, check_identity, conform, languages,
                          read_pool, to_table, write_pool)


def _rows(n: int, lang: str = "en", model: str = "m") -> list[dict]:
    return [{"qid": f"q{i:03d}", "question_lang": lang, "response_lang": lang, "sample_idx": i % 2,
             "model": model, "method": "vllm", "response": f"The answer is {i}.", "answer": str(i),
             "gold": str(i), "correct": True, "num_tokens": 5} for i in range(n)]


def test_to_table_from_rows_and_columns():
    table = to_table(_rows(3))
    assert table.schema == POOL_SCHEMA
    assert table.column("score").null_count == 3 and table.column("sample_idx").to_pylist() == [0, 1, 0]
    columns = {"qid": ["a"], "question_lang": ["en"], "response_lang": ["de"], "sample_idx": [0],
               "model": ["m"], "method": ["x"], "response": ["r"]}
    assert to_table(columns).to_pylist()[0]["response_lang"] == "de"
    with pytest.raises(PoolError, match="not in the pool schema.*'bogus'"):
        to_table([{**_rows(1)[0], "bogus": 1}])
    assert to_table([]).num_rows == 0


def test_conform_casts_and_fills():
    raw = pa.table({"qid": ["a"], "question_lang": pa.array(["en"]).dictionary_encode(),
                    "response_lang": ["en"], "sample_idx": pa.array([1], pa.int32()),
                    "model": ["m"], "method": ["x"], "response": ["r"]})
    table = conform(raw)
    assert table.schema == POOL_SCHEMA
    assert table.column("question_lang").to_pylist() == ["en"] and table.column("correct").null_count == 1
    with pytest.raises(PoolError, match=r"required column\(s\) \['response'\]"):
        conform(raw.drop(["response"]))
    with pytest.raises(PoolError, match="column 'sample_idx' has type string"):
        conform(raw.set_column(3, "sample_idx", pa.array(["one"])))


def test_write_read_partitioned_and_appending(tmp_path):
    out = str(tmp_path / "pool")
    write_pool(to_table(_rows(4, "en")), out)
    write_pool(to_table(_rows(3, "de")), out)
    write_pool(to_table(_rows(2, "en", model="other")), out)
    parts = sorted(p.relative_to(tmp_path / "pool").parts[0] for p in (tmp_path / "pool").rglob("*.parquet"))
    assert parts == ["response_lang=de", "response_lang=en", "response_lang=en"]
    table = read_pool(out)
    assert table.schema == POOL_SCHEMA and table.num_rows == 9
    assert languages(table) == ["de", "en"]
    assert sorted(zip(table.column("model").to_pylist(), table.column("response_lang").to_pylist())).count(("m", "en")) == 4
    check_identity(table)
    assert read_pool(out, columns=["qid", "correct"]).column_names == ["qid", "correct"]
    # A single file and a flat (unpartitioned) folder read the same way.
    write_pool(to_table(_rows(2)), str(tmp_path / "flat"), partition_by=())
    (single,) = (tmp_path / "flat").glob("*.parquet")
    assert read_pool(str(single)).num_rows == read_pool(str(tmp_path / "flat")).num_rows == 2
    # Metadata and hidden files are not data.
    (tmp_path / "pool" / "_SUCCESS").write_text("{}")
    (tmp_path / "pool" / ".hidden.parquet").write_bytes(b"junk")
    assert read_pool(out).num_rows == 9


def test_empty_and_missing_pool(tmp_path):
    (tmp_path / "empty").mkdir()
    assert read_pool(str(tmp_path / "empty")).schema == POOL_SCHEMA
    with pytest.raises(PoolError, match="pool not found"):
        read_pool(str(tmp_path / "nope"))


def test_check_identity_names_the_duplicate():
    rows = _rows(3)
    check_identity(to_table(rows))
    with pytest.raises(PoolError, match="1 row identities written more than once.*'qid': 'q001'"):
        check_identity(to_table(rows + [dict(rows[1], response="another")]))
    # Any identity column tells rows apart.
    for col in IDENTITY:
        other = dict(rows[0], **{col: 7 if col == "sample_idx" else "zz"})
        check_identity(to_table(rows + [other]))


@pytest.mark.parametrize("damage", ["garbage", "bad page"])
def test_corrupt_file_is_named(tmp_path, damage):
    out = tmp_path / "pool"
    for _ in range(3):
        write_pool(to_table([dict(r, response="x" * 2000 + r["response"]) for r in _rows(50)]), str(out))
    files = sorted(out.rglob("*.parquet"))
    victim = files[1]
    data = bytearray(victim.read_bytes())
    if damage == "garbage":
        data = bytearray(b"garbage" * 10)
    else:  # the footer survives: only decoding the data finds the damage
        data[100:1000] = b"\x5a" * 900
    victim.write_bytes(bytes(data))
    if damage == "bad page":
        assert pq.read_metadata(victim).num_rows == 50  # still looks like Parquet
    with pytest.raises(PoolError) as e:
        read_pool(str(out))
    assert str(victim) in str(e.value)


def test_duplicate_identities_name_the_folders_they_come_from(tmp_path):
    from bestofl.pool import read_pools

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_pool(to_table(_rows(3)), a)
    write_pool(to_table(_rows(2)), b)
    with pytest.raises(PoolError, match="2 row identities appear more than once") as e:
        read_pools([a, b])
    assert f"in {a}, {b}:" in str(e.value)
    assert read_pools([a]).num_rows == 3 and read_pool(a, columns=["qid"]).column_names == ["qid"]
    write_pool(to_table(_rows(1)), a)  # the same row twice in one pool (e.g. a rerun bug)
    with pytest.raises(PoolError, match=f"1 row identities appear more than once .* in {a}:"):
        read_pool(a, columns=["qid"])  # checked even when identity columns are not asked for
