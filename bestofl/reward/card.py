"""The model card (README.md) of a trained reward-model folder, so it can be shared as is:
Hugging Face front matter, the training data, validation metrics per language and the
command that trained it."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf

from bestofl.config import CONF_DIR, TrainRMConfig

MODEL_CARD = "README.md"


def command_line(cfg: TrainRMConfig) -> str:
    """`bestofl train-rm` with every key whose value differs from conf/train_rm.yaml."""
    defaults = _flat(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train_rm.yaml")))
    current = _flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    parts = [f"{key}={_value(value)}" for key, value in current.items()
             if key not in defaults or defaults[key] != value]
    return " ".join(["bestofl train-rm", *parts])


def model_card(cfg: TrainRMConfig, meta: dict[str, Any], train_rows: Sequence[dict],
               val_rows: Sequence[dict]) -> str:
    languages = sorted({r["response_lang"] for r in (*train_rows, *val_rows)})
    front = {
        "base_model": cfg.model,
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["reward-model", "outcome-reward-model", "bestofl", "best-of-l",
                 "math-reasoning", cfg.objective],
        "language": languages,
    }
    fold = meta.get("fold")
    metrics = meta["metrics"]
    stats = meta["data"]
    train_langs = Counter(r["response_lang"] for r in train_rows)
    val_langs = Counter(r["response_lang"] for r in val_rows)
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# Outcome reward model{f' (cross-fitting fold {fold})' if fold is not None else ''}",
        "",
        f"A scalar-head reward model on `{cfg.model}`, trained by "
        f"`bestofl train-rm` to rank math-reasoning responses "
        f"{'within and across languages' if cfg.pair_scope == 'both' else cfg.pair_scope + ' languages'} "
        f"({cfg.objective} objective). Load it with "
        "`AutoModelForSequenceClassification.from_pretrained(folder)` (safetensors) and read "
        "the score at the last real token (`bestofl.reward.model.score`).",
        "",
        "## Training data",
        "",
        f"- {stats.get('examples', 0)} {cfg.objective} examples from {stats.get('questions', 0)} "
        f"questions ({stats.get('one_sided_questions', 0)} with only correct or only incorrect "
        f"responses), at most {cfg.max_pairs_per_question} per question"
        + (f", {cfg.max_pairs} in all" if cfg.max_pairs else "") + ".",
        f"- Pools: {', '.join(f'`{p}`' for p in cfg.input)}.",
        f"- {len(train_rows)} training responses and {len(val_rows)} validation responses "
        f"({len(meta['val_qids'])} held-out questions, never trained on).",
        "",
        "| language | training responses | validation responses |",
        "|---|---|---|",
        *[f"| {code} | {train_langs.get(code, 0)} | {val_langs.get(code, 0)} |"
          for code in languages],
        "",
        "## Validation",
        "",
        f"At step {meta['step']}: pair accuracy {_num(metrics.get('val_pair_acc'))} "
        f"({metrics.get('val_pairs', 0)} pairs), Best-of-N within a language "
        f"{_num(metrics.get('val_bon_within'))}, across languages "
        f"{_num(metrics.get('val_bon_cross'))}, a random pick {_num(metrics.get('val_mean_correct'))}.",
        "",
        "| language | Best-of-N accuracy | score mean | score std | responses |",
        "|---|---|---|---|---|",
        *[f"| {code} | {_num(meta['lang_accuracy'].get(code))} | {_num(st['mean'])} | "
          f"{_num(st['std'])} | {st['n']} |" for code, st in meta["score_stats"].items()],
        "",
        "## Command",
        "",
        "```",
        command_line(cfg),
        "```",
        "",
        "Metrics per step: `metrics.jsonl`, and TensorBoard event files in `tensorboard/` "
        "(`tensorboard --logdir <this folder>`); everything else: `bestofl_rm.json`.",
        "",
    ]
    return "\n".join(lines)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _num(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"
