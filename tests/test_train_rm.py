"""`bestofl train-rm` end to end: Ray Train + DeepSpeed ZeRO-2 / ZeRO-3 on CPU workers.

Data: a slice of the real s1.1-7B traces (4 languages x 5 methods), graded by their last
\\boxed{} number, with a verdict line appended to each response so that the tiny random
reward model has an easy, separable signal to learn in a few dozen steps. Two runs, each
shared by several tests (the trained models are the inputs of the later tests):
- ZeRO-2, pairwise, 2 workers, one per simulated node: a worker process killed from
  outside once a mid-epoch checkpoint exists; a rerun with a planted pickle in that
  checkpoint, refused; a rerun that resumes from it;
- ZeRO-3, pointwise, cv=2: fold 0 killed the same way and resumed from its mid-epoch
  checkpoint, then fold 1; out-of-fold scores for every row.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shlex
import signal
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
import ray.train
import torch
import yaml

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


class WorkerKiller(threading.Thread):
    """The fault: SIGKILL one Ray Train worker process once the run in `storage` has
    registered a checkpoint and `model_dir`'s metrics.jsonl shows a later step (so the
    rerun redoes a step the killed run logged)."""

    def __init__(self, storage, model_dir) -> None:
        super().__init__(daemon=True)
        self.storage, self.model_dir = storage, model_dir
        self.killed_after: int | None = None  # the checkpoint's step
        self.stop = threading.Event()

    def _checkpoint_step(self) -> int | None:
        steps = [int(m) for snapshot in self.storage.glob("*/checkpoint_manager_snapshot.json")
                 for m in re.findall(r"checkpoint-(\d{6})", snapshot.read_text())]
        return max(steps, default=None)

    def _logged_step(self) -> int:
        try:
            return max((m["step"] for m in metrics_lines(self.model_dir)), default=0)
        except (OSError, ValueError):  # not written yet, or being rewritten
            return 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            checkpoint = self._checkpoint_step()
            if checkpoint is None or self._logged_step() <= checkpoint:
                continue
            workers = [a["Pid"] for a in ray._private.state.actors().values()
                       if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                self.killed_after = checkpoint
                return


def run_killed(cfg, storage, model_dir) -> int:
    """Run `cfg` with a worker killed mid-run; returns the step of the checkpoint it had."""
    from pipelines.train_rm import run

    killer = WorkerKiller(storage, model_dir)
    killer.start()
    try:
        with pytest.raises(ray.train.TrainingFailedError):
            run(cfg)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_after, "the run finished before the fault was injected"
    return killer.killed_after


class Planted:
    """Unpickling this runs `touch MARKER`: what a hostile file in a checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def pool_dir(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "pool"
    pool.write_pool(trace_pool(shared_data), str(out))
    return out


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_rm, pool_dir, tmp_path_factory):
    """Pairwise, ZeRO-2, one worker per simulated node: a worker killed after the step-8
    checkpoint; a rerun with a planted pickle in it (refused); a rerun that resumes.
    Metrics also go to MLflow, a local file store in `mlflow_store(out)`."""
    from pipelines.train_rm import run

    out = tmp_path_factory.mktemp("rm") / "zero2"
    cfg = load_config("train_rm", None, [
        f"input={pool_dir}", f"model={tiny_rm}", f"output={out}", *COMMON,
        "objective=pairwise", "pair_scope=both", "epochs=2", "val_fraction=0.25",
        "log_every=4", "save_every=8", "eval_every=0", "resources_per_worker={sim_node: 1}",
        "deepspeed.zero_stage=2", "tracker=mlflow", "tracker_project=rm-tests"])
    with pytest.MonkeyPatch.context() as env:  # as a user sets them; the workers never see it
        env.setenv("MLFLOW_TRACKING_URI", f"file:{mlflow_store(out)}")
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
        return _zero2_runs(run, cfg, out)


def mlflow_store(out):
    return out.parent / "mlruns"


def _zero2_runs(run, cfg, out):
    checkpoint_step = run_killed(cfg, out / "ray", out)
    interrupted = metrics_lines(out)

    # A hostile file in the checkpoint: the genuine state plus an object whose unpickling
    # runs a command. The rerun must refuse it before building it.
    [state] = (out / "ray").glob(f"*/checkpoint-{checkpoint_step:06d}/state/mp_rank_00_model_states.pt")
    genuine = state.read_bytes()
    marker = out.parent / "planted-code-ran"
    planted = torch.load(state, weights_only=False)  # our own file
    planted["note"] = Planted(marker)
    torch.save(planted, state)
    with pytest.raises(ValueError) as refused:
        run(cfg)
    tampered = {"error": str(refused.value), "marker": marker.exists(),
                "lines": metrics_lines(out)}
    state.write_bytes(genuine)

    summary = run(cfg)
    return out, cfg, summary, interrupted, checkpoint_step, tampered


@pytest.fixture(scope="module")
def zero3_cv_run(ray_cluster, tiny_rm, pool_dir, tmp_path_factory):
    """Pointwise, ZeRO-3, cv=2: fold 0 killed after a mid-epoch checkpoint and resumed,
    then fold 1; out-of-fold scores for every row."""
    from pipelines.train_rm import run

    out = tmp_path_factory.mktemp("rm") / "zero3cv"
    cfg = load_config("train_rm", None, [
        f"input=[{pool_dir}]", f"model={tiny_rm}", f"output={out}", *COMMON,
        "objective=pointwise", "cv=2", "epochs=1", "log_every=8", "eval_every=-1",
        "save_every=6", "num_to_keep=1", "deepspeed.zero_stage=3"])
    checkpoint_step = run_killed(cfg, out / "ray", out / "fold-0")
    interrupted = metrics_lines(out / "fold-0")
    summary = run(cfg)
    return out, cfg, summary, interrupted, checkpoint_step


def assert_resumed(lines: list[dict], interrupted: list[dict], checkpoint_step: int) -> None:
    """The rerun continued from the checkpoint: each step reported once, and the steps
    both runs trained after the checkpoint have the same loss."""
    steps = [m["step"] for m in lines]
    assert steps == sorted(set(steps)) and steps[-1] == lines[-1]["total_steps"]
    assert all(m["resumed_from"] == 0 for m in lines if m["step"] <= checkpoint_step)
    assert all(m["resumed_from"] == checkpoint_step for m in lines if m["step"] > checkpoint_step)
    before = {m["step"]: m["loss"] for m in interrupted if m["step"] > checkpoint_step}
    after = {m["step"]: m["loss"] for m in lines if m["step"] in before}
    assert after, "no step logged by both runs after the checkpoint"
    assert after == pytest.approx(before, rel=1e-5, abs=1e-6)


def test_resume_continues_from_checkpoint(zero2_run):
    out, _, _, interrupted, checkpoint_step, _ = zero2_run
    assert checkpoint_step == 8  # mid-epoch (16 steps each)
    assert [m["step"] for m in interrupted][:2] == [4, 8]
    lines = metrics_lines(out)
    assert [m["step"] for m in lines] == list(range(4, lines[-1]["total_steps"] + 1, 4))
    assert_resumed(lines, interrupted, checkpoint_step)
    assert storage.is_finished(str(out)) and not (out / "ray").exists()


def test_mlflow_holds_the_metrics_of_both_attempts(zero2_run):
    """The killed run and the resumed one are two MLflow runs of one experiment (setup_mlflow
    starts a run per attempt; the killed one ended FAILED or KILLED, never FINISHED); the
    resumed one is tagged with its checkpoint's step, and together they hold metrics.jsonl's
    numbers at each step (the killed one also holds the steps after its checkpoint that the
    resumed one redid, up to where it was killed)."""
    from mlflow import MlflowClient

    out, cfg, _, interrupted, checkpoint_step, _ = zero2_run
    client = MlflowClient(f"file:{mlflow_store(out)}")
    experiment = client.get_experiment_by_name(cfg.tracker_project)
    killed, resumed = sorted(client.search_runs([experiment.experiment_id]),
                             key=lambda r: r.info.start_time)  # no run for the refused rerun
    assert killed.info.run_name == resumed.info.run_name == "zero2"
    assert killed.data.tags["resumed_from"] == "0"
    assert resumed.data.tags["resumed_from"] == str(checkpoint_step)
    # KILLED if rank 0 was the worker killed, FAILED if it saw its peer die
    assert killed.info.status in ("KILLED", "FAILED")
    assert resumed.info.status == "FINISHED"
    assert killed.data.tags["output"] == resumed.data.tags["output"] == str(out)
    for logged in (killed, resumed):
        assert logged.data.params["objective"] == "pairwise"
        assert logged.data.params["zero_stage"] == "2"
        assert float(logged.data.params["lr"]) == cfg.lr

    def history(logged, key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)}

    lines = metrics_lines(out)
    for key in ("loss", "lr", "val_loss", "val_pair_acc"):
        expected = {m["step"]: m[key] for m in lines if key in m}
        before = {k: v for k, v in expected.items() if k <= checkpoint_step}
        after = {k: v for k, v in expected.items() if k > checkpoint_step}
        assert history(resumed, key) == pytest.approx(after), key
        from_killed = history(killed, key)
        assert {k: v for k, v in from_killed.items() if k <= checkpoint_step} == \
            pytest.approx(before), key
        # The kill may land between metrics.jsonl's write and MLflow's: a subset.
        redone = {k: v for k, v in from_killed.items() if k > checkpoint_step}
        assert redone == pytest.approx({m["step"]: m[key] for m in interrupted
                                        if m["step"] in redone}), key


@pytest.mark.parametrize("uri, absolute", [
    ("mlruns", "file://{cwd}/mlruns"), ("file:./runs/mlruns", "file://{cwd}/runs/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"), ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"), ("databricks", "databricks")])
def test_workers_get_the_drivers_mlflow_store(uri, absolute, tmp_path, monkeypatch):
    """A Ray Train worker runs in its own folder without the command's environment: it gets
    the store MLflow resolves in the driver, a local path made absolute."""
    from bestofl.trackers import worker_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert worker_env("mlflow") == {"MLFLOW_TRACKING_URI": absolute.format(cwd=tmp_path),
                                    "MLFLOW_ALLOW_FILE_STORE": "true"}


def test_each_attempts_mlflow_run_ends_with_its_outcome(tiny_rm, pool_dir, tmp_path, monkeypatch):
    """An attempt whose workers all died left its run RUNNING: the next attempt on the same
    output marks it KILLED (another output's running run is left alone). An attempt that
    fails (a peer died) ends its run FAILED; one that completes, FINISHED."""
    from mlflow import MlflowClient

    from bestofl.reward.tracking import MetricsLog
    from bestofl.reward.training import WorkerConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient()
    experiment = client.create_experiment("attempts")
    out, other = str(tmp_path / "rm"), str(tmp_path / "elsewhere" / "rm")
    died, running = (client.create_run(experiment, tags={"output": o}).info.run_id
                     for o in (out, other))

    def attempt() -> MetricsLog:
        cfg = load_config("train_rm", None, [f"input={pool_dir}", f"model={tiny_rm}",
                                             f"output={out}", "tracker=mlflow",
                                             "tracker_project=attempts"])
        config = WorkerConfig.of(cfg, steps_per_epoch=2, output=out, fold=None)
        return MetricsLog(config, rank=0, resumed_step=0)

    attempt().close(failed=True)
    attempt().close()
    runs = sorted(client.search_runs([experiment]), key=lambda r: r.info.start_time)
    status = {r.info.run_id: r.info.status for r in runs}
    assert (status.pop(died), status.pop(running)) == ("KILLED", "RUNNING")
    assert list(status.values()) == ["FAILED", "FINISHED"]


def test_workers_get_the_drivers_wandb_settings(tiny_rm, pool_dir, tmp_path, monkeypatch,
                                                fresh_wandb):
    """tracker=wandb: the WANDB_* settings reach a worker through its config (WANDB_DIR made
    absolute, the API key left out), and rank 0's log writes its W&B run with them, offline.
    The worker side runs here, in its own folder, without the settings in its environment."""
    from bestofl.reward.tracking import MetricsLog
    from bestofl.reward.training import WorkerConfig
    from tests.test_evaluation import wandb_records

    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    env = {"WANDB_MODE": "offline", "WANDB_DIR": "wb", "WANDB_SILENT": "true"}
    for key, value in {**env, "WANDB_API_KEY": "not-for-workers"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    cfg = load_config("train_rm", None, [f"input={pool_dir}", f"model={tiny_rm}", f"output={out}",
                                         "tracker=wandb", "tracker_project=rm-tests"])
    config = WorkerConfig.of(cfg, steps_per_epoch=2, output=str(out), fold=None)
    assert config.tracker_env == {**env, "WANDB_DIR": str(tmp_path / "wb")}

    for key in [k for k in os.environ if k.startswith("WANDB_")]:  # the worker's environment
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_START_METHOD", "fork")  # as setup_wandb sets it: undone after
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "worker")
    log = MetricsLog(config, rank=0, resumed_step=0)
    sent = [{"step": step, "total_steps": 2, "epoch": step / 2, "fold": None, "loss": 1 / step,
             "lr": 1e-4, "examples_per_s": 8.0} for step in (1, 2)]
    for metrics in sent:
        log.record(metrics)
    log.close()
    [run_dir] = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    [info] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.project, info.display_name) == ("rm-tests", "out")
    logged = {(item.key or "/".join(item.nested_key), r.history.step.num):
              json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert {k: v for k, v in logged.items() if not k[0].startswith("_")} == pytest.approx(
        {(key, m["step"]): m[key] for m in sent for key in ("epoch", "loss", "lr",
                                                              "examples_per_s")})
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]


def test_planted_pickle_in_a_checkpoint_is_refused(zero2_run):
    out, _, _, interrupted, _, tampered = zero2_run
    assert not tampered["marker"]  # its code never ran
    assert "refusing to resume" in tampered["error"] and "posix.system" in tampered["error"]
    assert tampered["lines"] == interrupted  # the run did not continue from it


def test_zero3_resumes_from_a_mid_epoch_checkpoint(zero3_cv_run):
    out, _, _, interrupted, checkpoint_step = zero3_cv_run
    lines = metrics_lines(out / "fold-0")
    assert checkpoint_step % 6 == 0 and checkpoint_step < lines[-1]["total_steps"]  # mid-epoch
    assert_resumed(lines, interrupted, checkpoint_step)
    assert [m["step"] for m in lines] == [6, 8, 12, 16]  # saves and logs


def test_pairwise_learns_the_signal(zero2_run):
    out, _, summary, *_ = zero2_run
    lines = metrics_lines(out)
    assert lines[-1]["loss"] < lines[0]["loss"]
    evals = [m for m in lines if "val_pair_acc" in m]
    assert [m["step"] for m in evals] == [16, 32]  # each epoch end (the last is the final step)
    assert summary["val_pair_acc"] > 0.75  # chance is 0.5
    assert summary["val_bon_cross"] >= summary["val_mean_correct"]
    for m in lines:
        assert m["examples_per_s"] > 0 and m["peak_mem_mb"] > 0


def test_saved_model_scores_match_the_trainer(zero2_run, pool_dir):
    out, cfg, *_ = zero2_run
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


def tensorboard_scalars(folder) -> dict[str, set[int]]:
    """tag -> steps, read from the TFRecord event files (no TensorBoard needed)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, set[int]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, set()).add(event.step)
    return found


def test_model_card_and_tensorboard(zero2_run):
    out, cfg, summary, *_ = zero2_run
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == cfg.model and front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "text-classification" and "reward-model" in front["tags"]
    assert front["language"] == sorted(LANGS)
    meta = json.loads((out / "bestofl_rm.json").read_text())
    for lang in LANGS:  # validation metrics per language
        accuracy = meta["lang_accuracy"][lang]
        assert re.search(rf"^\| {lang} \| {accuracy:.3f} \|", text, re.M), lang
    assert f"pair accuracy {summary['val_pair_acc']:.3f}" in text
    # The exact command: its overrides give back this run's config.
    command = re.search(r"```\n(bestofl train-rm .*)\n```", text).group(1)
    assert load_config("train_rm", None, shlex.split(command)[2:]) == cfg
    scalars = tensorboard_scalars(out / "tensorboard")
    total = metrics_lines(out)[-1]["total_steps"]
    assert set(range(4, total + 1, 4)) <= scalars["train-rm/loss"]
    assert scalars["train-rm/val_pair_acc"] == {16, 32}


def test_cross_fitting_scores_every_row_once(zero3_cv_run, pool_dir):
    out, cfg, summary, *_ = zero3_cv_run
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
        assert f"cross-fitting fold {k}" in (out / f"fold-{k}" / "README.md").read_text()
    # The out-of-fold pool says where its scores come from (evaluate reads it).
    marker = json.loads((out / "pool" / "_SUCCESS").read_text())
    assert marker["score_provenance"] == "cross_fit" and marker["rows"] == source.num_rows


def test_zero3_checkpoint_scores_match_out_of_fold_scores(zero3_cv_run):
    out, cfg, *_ = zero3_cv_run
    meta = json.loads((out / "bestofl_rm.json").read_text())
    model, tok = load_reward_model(str(out / "fold-0"))
    held = set(meta["folds"][0])
    rows = [r for r in pool.read_pool(str(out / "pool")).to_pylist()
            if r["qid"] in held and r["score"] is not None]
    again = score(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows],
                  max_length=cfg.max_length)
    assert again == pytest.approx([r["score"] for r in rows], abs=1e-4)


def test_rerun_keeps_finished_folds(zero3_cv_run):
    """The driver died after the last fold: the rerun trains nothing and rebuilds the
    summary from the scores the folds wrote."""
    from pipelines.train_rm import run

    out, cfg, summary, *_ = zero3_cv_run
    meta = json.loads((out / "bestofl_rm.json").read_text())
    (out / "_SUCCESS").unlink()
    (out / "bestofl_rm.json").unlink()
    assert run(cfg) == summary
    assert json.loads((out / "bestofl_rm.json").read_text()) == meta


def test_finished_output_is_not_overwritten(zero3_cv_run):
    from pipelines.train_rm import run

    out, cfg, *_ = zero3_cv_run
    with pytest.raises(FileExistsError, match="overwrite"):
        run(cfg)


def test_bad_config_fails_before_any_work(tiny_rm, pool_dir, tmp_path, monkeypatch):
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
    for key in ("cross_fraction=1.5", "max_pairs=0", "num_to_keep=0", "tracker=neptune"):
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            load_config("train_rm", None, [*base, key])
    # Asked for, not installed (hidden here): say so.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ValueError, match="pip install wandb"):
        run(load_config("train_rm", None, [*base, "tracker=wandb"]))
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()  # nothing written, no Ray started
    # A partial output of another job (here: another seed) is not resumed by this one.
    storage.save_config(str(tmp_path / "out"), load_config("train_rm", None, [*base, "seed=7"]))
    with pytest.raises(ValueError, match="another job.*seed"):
        run(load_config("train_rm", None, base))
