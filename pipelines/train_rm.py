"""`bestofl train-rm`: candidate pools -> outcome reward model (Ray Train + DeepSpeed).

Wiring only: parse the config, check it and claim the output (no Ray yet), start or join
Ray, train. What it does: `bestofl.reward.crossfit`.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

from bestofl import models, preflight, storage
from bestofl.config import TrainRMConfig
from bestofl.plan import command_main
from bestofl.ray_runtime import init_ray
from bestofl.reward import crossfit


def run(cfg: TrainRMConfig) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, input=[storage.absolute(p) for p in cfg.input],
                              model=models.absolute_model(cfg.model),
                              output=storage.absolute(cfg.output),
                              storage_path=storage.absolute(cfg.storage_path) if cfg.storage_path else None)
    # Before anything else, Ray included: overwrite=true must never delete an input.
    storage.check_output_apart(cfg.output, [*cfg.input, cfg.model])
    preflight.require(cfg)  # fails in seconds where Ray Train would wait for workers forever
    job = crossfit.prepare(cfg)
    init_ray(cfg.ray)
    return crossfit.train(job)


def main(argv: Sequence[str] | None = None) -> int:
    return command_main("train_rm", argv, run)  # --dry-run: the plan


if __name__ == "__main__":
    sys.exit(main())
