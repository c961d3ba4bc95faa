"""Experiment trackers (MLflow, Weights & Biases): which one a run asks for, where MLflow
writes, and the evaluate report's headline numbers sent to it.

Off by default; `tracker=mlflow|wandb` needs that package. The trackers' own settings
apply (MLFLOW_TRACKING_URI, MLFLOW_ALLOW_FILE_STORE, WANDB_MODE=offline, ...).
"""
from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from typing import Any, Optional

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the package it needs
# The MLflow settings a Ray Train worker needs to write where the driver would: a worker
# does not see the environment of the command that started the job.
MLFLOW_WORKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")
# W&B's credentials stay out of the job's config: a cluster's workers log in their own way.
WANDB_SECRETS = ("WANDB_API_KEY",)


def check_name(tracker: Optional[str]) -> None:
    """The config's rule for the `tracker` key (train_rm, evaluate)."""
    if tracker is not None and tracker not in TRACKERS:
        raise ValueError(f"tracker must be null, mlflow or wandb, got {tracker!r}")


def check_tracker(tracker: Optional[str]) -> None:
    """A clear error before any work when the asked-for tracker is unknown or not installed."""
    check_name(tracker)
    if tracker is None:
        return
    if importlib.util.find_spec(TRACKERS[tracker]) is None:
        raise ValueError(f"tracker={tracker} needs the {TRACKERS[tracker]} package: "
                         f"pip install {TRACKERS[tracker]} (or set tracker=null)")
    if tracker == "mlflow":
        _check_mlflow_store()


def _check_mlflow_store() -> None:
    """Open MLflow's tracking store here, so that one MLflow refuses (MLflow 3's file store
    without MLFLOW_ALLOW_FILE_STORE, sqlite without sqlalchemy) fails before any work."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except (MlflowException, ImportError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"tracker=mlflow cannot use the tracking store "
                         f"{mlflow.get_tracking_uri()} (MLFLOW_TRACKING_URI): {first}") from None


def worker_env(tracker: Optional[str]) -> dict[str, str]:
    """The tracker's settings as this process sees them, for the training workers. MLflow:
    the tracking URI it resolves here (MLFLOW_TRACKING_URI, else its default); W&B: the
    WANDB_* variables (WANDB_MODE, WANDB_DIR, ...). A local path is made absolute so that it
    names the same place from a worker's own working folder."""
    if tracker == "mlflow":
        import mlflow

        env = {k: os.environ[k] for k in MLFLOW_WORKER_ENV if k in os.environ}
        env["MLFLOW_TRACKING_URI"] = _absolute(mlflow.get_tracking_uri())
        return env
    if tracker == "wandb":
        env = {k: v for k, v in os.environ.items()
               if k.startswith("WANDB_") and k not in WANDB_SECRETS}
        if env.get("WANDB_DIR"):
            env["WANDB_DIR"] = os.path.abspath(env["WANDB_DIR"])
        return env
    return {}


def _absolute(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    scheme = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", uri)
    if uri == "databricks" or (scheme and not uri.startswith("file:")):
        return uri  # a server, a database, databricks: not a path
    path = re.sub(r"^file:(//)?", "", uri)
    return "file://" + os.path.abspath(path)


def log_report(report: dict[str, Any], folder: str, tracker: str, project: str,
               run_name: str) -> None:
    """One tracker run holding the report's headline numbers, each with step=budget:
    `cross_minus_mono/<selector>` (the mean paired difference over targets) and
    `accuracy/<pool>/<selector>/<target>`; report.json and report.html as artifacts."""
    by_budget: dict[int, dict[str, float]] = {}
    for d in report["mean_differences"]:
        by_budget.setdefault(d["budget"], {})[f"cross_minus_mono/{d['selector']}"] = d["diff"]
    for r in report["results"]:
        key = f"accuracy/{r['pool']}/{r['selector']}/{r['target_lang']}"
        by_budget.setdefault(r["budget"], {})[key] = r["accuracy"]
    params = {k: report["config"][k] for k in ("input", "selectors", "allocation",
                                                "budget_unit", "score_provenance", "seed")}
    from bestofl import storage  # not at the top: the config schema imports this module

    def copy_report(local: str) -> list[str]:
        """report.json and report.html copied into a local folder (the report's may be a URI)."""
        paths = [os.path.join(local, name) for name in ("report.json", "report.html")]
        for path in paths:
            with open(path, "w") as f:
                f.write(storage.read_text(storage.join(folder, os.path.basename(path))))
        return paths

    if tracker == "mlflow":
        import mlflow

        mlflow.set_experiment(project)
        with mlflow.start_run(run_name=run_name), tempfile.TemporaryDirectory() as local:
            mlflow.log_params(params)
            for budget in sorted(by_budget):
                mlflow.log_metrics(by_budget[budget], step=budget)
            for path in copy_report(local):
                mlflow.log_artifact(path)
    elif tracker == "wandb":
        import wandb

        with wandb.init(project=project, name=run_name, config=params) as run:
            for budget in sorted(by_budget):  # W&B wants steps in increasing order
                run.log(by_budget[budget], step=budget)
            # Into the run's own folder: W&B links saved files from there, and an offline run
            # uploads them only when synced, long after a temporary folder is gone.
            for path in copy_report(run.dir):
                run.save(path, base_path=run.dir, policy="now")
