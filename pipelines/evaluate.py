"""`bestofl evaluate`: scored or unscored pool -> report (selector x budget x language).

Pure numpy on the driver (a 250 x 11 x 64 pool takes seconds), so no Ray graph: as a Ray
job entrypoint it runs on the head node and reads the pool from any pyarrow URI.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from bestofl import storage
from bestofl.config import EvaluateConfig, parse_command_line
from bestofl.evaluation import evaluate, load_rm_info
from bestofl.pool import read_pool
from bestofl.report import summary, write_report
from bestofl.trackers import check_tracker, log_report


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    # Everything that can fail on user input fails before the output folder is touched;
    # a finished report is replaced only after the new one is computed.
    storage.check_output_apart(cfg.output, [cfg.input, cfg.rm_stats])
    check_tracker(cfg.tracker)
    if storage.is_finished(cfg.output) and not cfg.overwrite:
        raise storage.OutputExistsError(
            f"{cfg.output} already holds a finished result; pass overwrite=true to replace it")
    table = read_pool(cfg.input)
    if cfg.score_provenance is None:
        cfg.score_provenance = recorded_provenance(cfg.input)
    rm_info = load_rm_info(cfg.rm_stats) if cfg.rm_stats else None
    ev = evaluate(table, cfg, rm_info)
    storage.prepare_output(cfg.output, cfg.overwrite)
    report = write_report(cfg.output, ev, cfg)
    storage.save_config(cfg.output, cfg)
    storage.mark_finished(cfg.output, {"results": len(ev.results), "notices": ev.notices})
    if cfg.tracker:
        log_report(report, cfg.output, cfg.tracker, cfg.tracker_project,
                   run_name=os.path.basename(cfg.output.rstrip("/")))
    for notice in ev.notices:
        print(f"notice: {notice}", file=sys.stderr)
    print(summary(ev))
    print(f"report: {storage.join(cfg.output, 'report.md')}")
    return report


def recorded_provenance(pool: str) -> str | None:
    """The score provenance a scored pool records in its `_SUCCESS` summary (train-rm cv=K
    writes "cross_fit" for its out-of-fold pool), or None."""
    marker = storage.join(pool, storage.FINISHED)
    if not storage.exists(marker):
        return None
    try:
        value = json.loads(storage.read_text(marker) or "{}").get("score_provenance")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if value in ("cross_fit", "held_out", "in_sample") else None


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_command_line("evaluate", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
