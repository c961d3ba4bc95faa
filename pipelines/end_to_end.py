"""`bestofl demo`: the whole Best-of-L loop on one machine, offline.

    questions -> sample (vLLM, several languages) -> train-rm with cv=K (Ray Train +
    DeepSpeed; out-of-fold scores) -> evaluate (mono vs cross, every budget) -> report

Each stage writes its own output folder under `output`; a finished stage (its _SUCCESS)
is reused on a rerun, so a second `bestofl demo` only redoes what did not finish.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from bestofl import smollm2, storage
from bestofl.config import DemoConfig, RayConfig, load_config, merge_overrides, parse_command_line
from bestofl.ray_runtime import init_ray
from pipelines import evaluate, sample, train_rm


def _stage(name: str, output: str, module: Any, overrides: list[str], extra: dict,
           ray: RayConfig | None = None) -> Any:
    """Run one pipeline unless its output is finished; returns the stage's config. A stage
    that needs Ray gets the demo's instance, started by the first stage that runs: a
    rerun of a finished demo starts none."""
    cfg = merge_overrides(load_config(name, None, overrides), extra, source=f"demo.{name}")
    if storage.is_finished(output):
        print(f"[demo] {name}: reusing the finished output in {output}")
        return cfg
    if ray is not None:
        init_ray(ray)
    print(f"[demo] {name} -> {output}")
    start = time.time()
    module.run(cfg)
    print(f"[demo] {name} done in {time.time() - start:.0f} s")
    return cfg


def run(cfg: DemoConfig) -> dict[str, str]:
    start = time.time()
    generator = smollm2.resolve(cfg.generator, cfg.cache_dir)
    reward_model = smollm2.resolve(cfg.reward_model, cfg.cache_dir)
    out = {name: storage.join(cfg.output, name) for name in ("pool", "rm", "report")}
    languages = "[" + ",".join(cfg.languages) + "]"
    limit = "null" if cfg.limit is None else str(cfg.limit)

    _stage("sample", out["pool"], sample,
           [f"questions={cfg.questions}", f"model={generator}", f"languages={languages}",
            f"limit={limit}", f"output={out['pool']}"], cfg.sample, cfg.ray)
    train_cfg = _stage("train_rm", out["rm"], train_rm,
                       [f"input=[{out['pool']}]", f"model={reward_model}", f"output={out['rm']}"],
                       cfg.train_rm, cfg.ray)
    # Cross-fitting writes the pool with out-of-fold scores: no question is scored by a
    # model that trained on it. Without it, evaluate sees the unscored pool.
    scored = [f"input={storage.join(out['rm'], 'pool')}", "score_provenance=cross_fit",
              f"rm_stats={out['rm']}"] if train_cfg.cv else [f"input={out['pool']}"]
    _stage("evaluate", out["report"], evaluate, [*scored, f"output={out['report']}"], cfg.evaluate)

    print(f"\n[demo] finished in {time.time() - start:.0f} s. Report: "
          f"{storage.join(out['report'], 'report.md')}")
    print("[demo] serve the trained selector (the fold-0 reward model) with:\n"
          f"    bestofl serve model={storage.join(out['rm'], 'fold-0')}\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_command_line("demo", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
