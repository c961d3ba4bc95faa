"""Where training metrics go: stdout, metrics.jsonl, TensorBoard, and MLflow or W&B.

Rank 0 records each report. The log line carries the rates (examples/s) and the time
left, so the console shows progress without a bar per worker. TensorBoard event files go
to `<model folder>/tensorboard/` (tensorboardX, which Ray Train installs); MLflow and
Weights & Biases go through Ray's own integrations (`ray.air.integrations`) when
`tracker` asks for them, and need their package installed (bestofl/trackers.py).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any, Optional

import pyarrow.fs as pafs

from bestofl import storage

if TYPE_CHECKING:
    from bestofl.reward.training import WorkerConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def log_line(metrics: dict[str, Any], eta_s: Optional[float] = None) -> str:
    fold = f"fold {metrics['fold']} " if metrics.get("fold") is not None else ""
    line = (f"[train-rm] {fold}step {metrics['step']}/{metrics['total_steps']} "
            f"epoch {metrics['epoch']:.2f} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
            f"{metrics['examples_per_s']:.1f} ex/s")
    if eta_s is not None:
        line += f" eta {_duration(eta_s)}"
    if "val_loss" in metrics:
        line += (f" | val_loss {metrics['val_loss']:.4f} pair_acc {metrics['val_pair_acc']:.3f}"
                 f" bon_within {metrics['val_bon_within']:.3f}"
                 f" bon_cross {metrics['val_bon_cross']:.3f}"
                 f" (random {metrics['val_mean_correct']:.3f})")
    return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class MetricsLog:
    """Rank 0's record of every report; other ranks' calls do nothing."""

    def __init__(self, config: "WorkerConfig", rank: int, resumed_step: int) -> None:
        self.config = config
        self.enabled = rank == 0
        self.path = storage.join(config.output, METRICS_FILE)
        self.resumed_step = resumed_step
        self.started = time.perf_counter()
        self.history: list[str] = []
        self._tensorboard = self._tensorboard_dir = None
        self._tracker: Any = None
        if not self.enabled:
            return
        self.history = _metrics_history(self.path, resumed_step)
        if config.tensorboard:
            self._open_tensorboard()
        if config.tracker:
            self._open_tracker()

    def record(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        step = metrics["step"]
        done = step - self.resumed_step
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (metrics["total_steps"] - step) if done > 0 else None
        print(log_line(metrics, eta), flush=True)
        self.history.append(json.dumps(metrics, default=float))
        storage.write_text(self.path, "\n".join(self.history) + "\n")
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
                   and k not in ("step", "total_steps", "fold") and math.isfinite(float(v))}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"train-rm/{key}", value, step)
            self._tensorboard.flush()
        if self.config.tracker == "mlflow":
            self._tracker.log_metrics(scalars, step=step)
        elif self.config.tracker == "wandb":
            self._tracker.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        """Flush and close the logs; the tracker's run ends as FAILED if `failed`."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            if self._tensorboard_dir is not None:  # a URI output: upload the event files
                out_fs, out_path = storage.filesystem(storage.join(self.config.output,
                                                                   TENSORBOARD_DIR))
                out_fs.create_dir(out_path, recursive=True)
                pafs.copy_files(self._tensorboard_dir.name, out_path,
                                source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=out_fs)
                self._tensorboard_dir.cleanup()
            self._tensorboard = None
        if self.config.tracker == "mlflow" and self._tracker is not None:
            self._tracker.end_run(status="FAILED" if failed else "FINISHED")
        elif self.config.tracker == "wandb" and self._tracker is not None:
            import wandb

            self._tracker.finish(exit_code=1 if failed else 0)
            # finish() only tells W&B's service the run ended; teardown waits until its files
            # are written. Ray Train kills its workers, so their atexit teardown never runs.
            wandb.teardown()
        self._tracker = None

    def _open_tensorboard(self) -> None:
        from tensorboardX import SummaryWriter

        logdir = storage.join(self.config.output, TENSORBOARD_DIR)
        if "://" in logdir:
            self._tensorboard_dir = tempfile.TemporaryDirectory()
            logdir = self._tensorboard_dir.name
        # purge_step: a resumed run redoes the steps after its checkpoint; drop their old events.
        self._tensorboard = SummaryWriter(logdir=logdir, purge_step=self.resumed_step + 1
                                          if self.resumed_step else None)

    def _open_tracker(self) -> None:
        config = self.config
        run_name = os.path.basename(config.output.rstrip("/"))
        params = {"model": config.model, "objective": config.objective,
                  "pair_scope": config.pair_scope, "lr": config.lr, "epochs": config.epochs,
                  "batch_size": config.batch_size, "fold": config.fold,
                  "zero_stage": config.deepspeed.zero_stage}
        os.environ.update(config.tracker_env)  # the driver's settings (trackers.worker_env)
        if config.tracker == "mlflow":
            from ray.air.integrations.mlflow import setup_mlflow

            _end_killed_mlflow_runs(config.tracker_project, config.output)
            # A resumed run is a new MLflow run, tagged with the step it resumed from.
            self._tracker = setup_mlflow(config=params, experiment_name=config.tracker_project,
                                         run_name=run_name, create_experiment_if_not_exists=True,
                                         tags={"resumed_from": str(self.resumed_step),
                                               "output": config.output})
        else:
            from ray.air.integrations.wandb import setup_wandb

            if os.environ.get("WANDB_DIR"):  # W&B needs it to exist; a worker's node may lack it
                os.makedirs(os.environ["WANDB_DIR"], exist_ok=True)
            self._tracker = setup_wandb(config=params, project=config.tracker_project,
                                        name=run_name)


def _end_killed_mlflow_runs(experiment_name: str, output: str) -> None:
    """Mark this output's earlier runs that still say RUNNING as KILLED: their workers died
    (a crash, a preemption) before they could end the run, and this attempt replaces them."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return
    for run in client.search_runs([experiment.experiment_id],
                                  filter_string="attributes.status = 'RUNNING'"):
        if run.data.tags.get("output") == output:
            client.set_terminated(run.info.run_id, status="KILLED")


def _metrics_history(path: str, step: int) -> list[str]:
    """metrics.jsonl lines up to `step` (the resumed checkpoint): later ones are redone."""
    if step == 0 or not storage.exists(path):
        return []
    lines = [line for line in storage.read_text(path).splitlines() if line.strip()]
    return [line for line in lines if json.loads(line)["step"] <= step]
