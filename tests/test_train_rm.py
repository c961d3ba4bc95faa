"""`bestofl train-rm` end to end: Ray Train + DeepSpeed ZeRO-2 / ZeRO-3 on CPU workers.

Data: a slice of the real s1.1-7B traces (4 languages x 5 methods), graded by their last
\\boxed{} number, with a verdict line appended to each response so that the tiny random
reward model has an easy, separable signal to learn in a few dozen steps. Two runs (four
Ray Train fits in all), each shared by several tests:
- ZeRO-2, pairwise, 2 workers, one per simulated node; a fault injected after the first
  checkpoint, then a rerun that resumes from it;
- ZeRO-3, pointwise, cv=2 (two fits): out-of-fold scores for every row.
"""
from __future__ import annotations

import gzip
import json
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray.train

from bestofl import pool, storage
from bestofl.config import load_config
from bestofl.reward.model import load_reward_model, score
from bestofl.reward.training import evaluate_scores

pytestmark = pytest.mark.slow  # Ray Train fits

LANGS = ("en", "de", "zh", "bn")
METHODS = ("system", "wait", "prefix", "combined", "combined_en_only")
N_QUESTIONS = 32
COMMON = ["max_length=96", "batch_size=4", "max_pairs_per_question=8", "lr=2e-3",
          "warmup_ratio=0.1", "num_workers=2", "cpus_per_worker=1", "seed=0"]


def trace_pool(shared_data, n_questions: int = N_QUESTIONS) -> pa.Table:
    """Pool rows from the real traces: the model's own text (no echoed chat), graded."""
    rows = []
    for method in METHODS:
        for lang in LANGS:
            path = shared_data / "xling-traces" / "s1.1-7B" / method / f"{lang}.jsonl.gz"
            if not path.exists():
                continue
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for i, line in zip(range(n_questions), f):
                    r = json.loads(line)
                    response = r["output"].rsplit("<|im_start|>assistant\n", 1)[-1]
                    boxed = re.findall(r"\\boxed\{([^{}]*)\}", response)
                    answer = re.sub(r"[^0-9.\-]", "", boxed[-1]) if boxed else None
                    correct = answer == str(r["gold_answer"])
                    verdict = "\nVERDICT: RIGHT" if correct else "\nVERDICT: WRONG"
                    rows.append(dict(qid=f"mgsm-{i:03d}", question_lang=lang, response_lang=lang,
                                     sample_idx=0, model="s1.1-7B", method=method,
                                     prompt=r["prompt"], response=response[-300:] + verdict,
                                     answer=answer, gold=str(r["gold_answer"]), correct=correct))
    # Rows training must skip but cross-fitting must still carry: a failed one, an ungraded one.
    rows.append(dict(rows[0], sample_idx=1, response="", error="context too long", correct=None))
    rows.append(dict(rows[1], sample_idx=1, gold=None, answer=None, correct=None))
    return pool.to_table(rows)


def metrics_lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pool_dir(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "pool"
    pool.write_pool(trace_pool(shared_data), str(out))
    return out


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_rm, pool_dir, tmp_path_factory):
    """Pairwise, ZeRO-2, one worker per simulated node; fails after step 8, then resumes."""
    from pipelines.train_rm import FAULT_ENV, run

    out = tmp_path_factory.mktemp("rm") / "zero2"
    cfg = load_config("train_rm", None, [
        f"input={pool_dir}", f"model={tiny_rm}", f"output={out}", *COMMON,
        "objective=pairwise", "pair_scope=both", "epochs=2", "val_fraction=0.25",
        "log_every=4", "save_every=8", "eval_every=0", "resources_per_worker={sim_node: 1}",
        "deepspeed.zero_stage=2"])
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ray.train.TrainingFailedError):
        mp.setenv(FAULT_ENV, "8")
        run(cfg)
    interrupted = metrics_lines(out)
    summary = run(cfg)
    return out, cfg, summary, interrupted


@pytest.fixture(scope="module")
def zero3_cv_run(ray_cluster, tiny_rm, pool_dir, tmp_path_factory):
    """Pointwise, ZeRO-3, cv=2: two fits, out-of-fold scores for every row."""
    from pipelines.train_rm import run

    out = tmp_path_factory.mktemp("rm") / "zero3cv"
    cfg = load_config("train_rm", None, [
        f"input=[{pool_dir}]", f"model={tiny_rm}", f"output={out}", *COMMON,
        "objective=pointwise", "cv=2", "epochs=2", "log_every=0", "eval_every=-1",
        "save_every=-1", "deepspeed.zero_stage=3"])
    summary = run(cfg)
    return out, cfg, summary


def test_resume_continues_from_checkpoint(zero2_run):
    out, cfg, _, interrupted = zero2_run
    assert [m["step"] for m in interrupted] == [4, 8]  # the fault came right after step 8
    lines = metrics_lines(out)
    steps = [m["step"] for m in lines]
    assert steps == list(range(4, lines[-1]["total_steps"] + 1, 4))  # each report once
    assert [m["resumed_from"] for m in lines[:2]] == [0, 0]
    assert all(m["resumed_from"] == 8 for m in lines[2:])  # not restarted from scratch
    assert storage.is_finished(str(out)) and not (out / "ray").exists()


def test_pairwise_learns_the_signal(zero2_run):
    out, _, summary, _ = zero2_run
    lines = metrics_lines(out)
    assert lines[-1]["loss"] < lines[0]["loss"]
    evals = [m for m in lines if "val_pair_acc" in m]
    assert [m["step"] for m in evals] == [16, 32]  # each epoch end (the last is the final step)
    assert summary["val_pair_acc"] > 0.75  # chance is 0.5
    assert summary["val_bon_cross"] >= summary["val_mean_correct"]
    for m in lines:
        assert m["examples_per_s"] > 0 and m["peak_mem_mb"] > 0


def test_saved_model_scores_match_the_trainer(zero2_run, pool_dir):
    out, cfg, _, _ = zero2_run
    meta = json.loads((out / "bestofl_rm.json").read_text())
    assert meta["objective"] == "pairwise" and meta["step"] == metrics_lines(out)[-1]["step"]
    assert not set(meta["train_qids"]) & set(meta["val_qids"])
    assert set(meta["score_stats"]) == set(LANGS) == set(meta["lang_accuracy"])
    model, tok = load_reward_model(str(out))  # AutoModelForSequenceClassification, safetensors
    assert (out / "model.safetensors").exists()
    table = pool.read_pool(str(pool_dir))
    rows = [r for r in table.to_pylist() if r["qid"] in set(meta["val_qids"]) and not r["error"]]
    scores = score(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows],
                   max_length=cfg.max_length)
    again = evaluate_scores(rows, scores, "both", "pairwise")
    for key, value in meta["metrics"].items():
        assert again[key] == pytest.approx(value, abs=1e-4), key
    for lang, st in meta["score_stats"].items():
        assert again["score_stats"][lang]["mean"] == pytest.approx(st["mean"], abs=1e-4)


def test_cross_fitting_scores_every_row_once(zero3_cv_run, pool_dir):
    out, cfg, summary = zero3_cv_run
    source = pool.read_pool(str(pool_dir))
    scored = pool.read_pool(str(out / "pool"))
    pool.check_identity(scored)
    assert sorted(pool.identities(scored)) == sorted(pool.identities(source))
    errors = scored.filter(pc.is_valid(scored.column("error")))
    assert errors.num_rows == 1 and errors.column("score").null_count == 1
    assert scored.column("score").null_count == 1  # the ungraded row is scored too
    meta = json.loads((out / "bestofl_rm.json").read_text())
    folds = meta["folds"]
    assert len(folds) == 2 and not set(folds[0]) & set(folds[1])
    assert set(folds[0]) | set(folds[1]) == set(source.column("qid").to_pylist())
    assert summary["val_pair_acc"] > 0.6
    for k in range(2):
        fold_meta = json.loads((out / f"fold-{k}" / "bestofl_rm.json").read_text())
        assert sorted(fold_meta["val_qids"]) == sorted(folds[k])
        assert not set(fold_meta["train_qids"]) & set(folds[k])


def test_zero3_checkpoint_scores_match_out_of_fold_scores(zero3_cv_run):
    out, cfg, _ = zero3_cv_run
    meta = json.loads((out / "bestofl_rm.json").read_text())
    model, tok = load_reward_model(str(out / "fold-0"))
    held = set(meta["folds"][0])
    rows = [r for r in pool.read_pool(str(out / "pool")).to_pylist()
            if r["qid"] in held and r["score"] is not None]
    again = score(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows],
                  max_length=cfg.max_length)
    assert again == pytest.approx([r["score"] for r in rows], abs=1e-4)


def test_finished_output_is_not_overwritten(zero3_cv_run):
    from pipelines.train_rm import run

    out, cfg, _ = zero3_cv_run
    with pytest.raises(FileExistsError, match="overwrite"):
        run(cfg)


def test_bad_config_fails_before_any_work(tiny_rm, pool_dir, tmp_path):
    from bestofl.config import ConfigError
    from pipelines.train_rm import run

    base = [f"input={pool_dir}", f"model={tiny_rm}", f"output={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="objective"):
        load_config("train_rm", None, [*base, "objective=listwise"])
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config("train_rm", None, [*base, "learning_rate=1"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config("train_rm", None, [*base, "val_fraction=0"])
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        run(load_config("train_rm", None, [*base[:1], f"model={tmp_path}/no/such/model",
                                           base[2]]))
    unlabelled = tmp_path / "unlabelled"
    pool.write_pool(pool.read_pool(str(pool_dir)).drop_columns(["correct"]), str(unlabelled))
    with pytest.raises(ValueError, match="correct"):
        run(load_config("train_rm", None, [f"input={unlabelled}", *base[1:]]))
    assert not (tmp_path / "out").exists()  # nothing written, no Ray started
    # A partial output of another job (here: another seed) is not resumed by this one.
    storage.save_config(str(tmp_path / "out"), load_config("train_rm", None, [*base, "seed=7"]))
    with pytest.raises(ValueError, match="another job.*seed"):
        run(load_config("train_rm", None, base))
