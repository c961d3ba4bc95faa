"""What a run prints: our own lines, progress bars with rates, errors. The libraries' own
chatter (Ray's, vLLM's, torch's, transformers') stays out of the console unless
`bestofl --verbose` (BESTOFL_VERBOSE=1) asks for it; their log files keep what they write
at their levels. No Ray import here: the CLI sets this up before any library loads."""
from __future__ import annotations

import os

VERBOSE_ENV = "BESTOFL_VERBOSE"

# The libraries' own switches, for the driver and (through the job's runtime_env) every
# Ray worker; a value the user set wins.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    # torch warns "Triton not available" in every CPU vLLM engine (triton has no CPU backend)
    "TORCH_LOGS": "-torch._library.triton",
    # transformers' per-load bars and its LOAD REPORT (a reward model's new score head is
    # expected: train-rm initialises it)
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    # Ray Train routes a worker's print through a logger that echoes it twice
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# Workers only: Ray Data inside Ray Train workers ("Progress bars disabled", "Dataset ...
# execution finished" per worker and split); the driver's Ray Data keeps its warnings.
WORKER_ENV = {"RAY_DATA_LOG_LEVEL": "ERROR"}


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


def quiet_defaults() -> dict[str, str]:
    """Set the quiet defaults in this process's environment (before the libraries read
    them) and return the env_vars a Ray job's workers should get; under --verbose, only
    the switch itself, so workers are verbose too."""
    if verbose():
        return {VERBOSE_ENV: os.environ[VERBOSE_ENV]}  # workers follow the driver
    env = {key: os.environ.setdefault(key, value) for key, value in QUIET_ENV.items()}
    return {**env, **{key: os.environ.get(key, value) for key, value in WORKER_ENV.items()}}
