"""`bestofl <command>`: dispatch to the pipeline entry modules (the only place that does).

Every pipeline command takes `[--config FILE] key=value ...`; its pipelines/<name>.py
module is also a valid Ray job entrypoint (`python -m pipelines.sample ...`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# command -> entry module; each exposes main(argv) -> int
PIPELINES = {
    "sample": "pipelines.sample",
    "train-rm": "pipelines.train_rm",
    "score": "pipelines.score",
    "evaluate": "pipelines.evaluate",
    "serve": "pipelines.serve",
    "demo": "pipelines.end_to_end",
}
HELP = {
    "sample": "questions -> candidate pool (Ray Data + vLLM)",
    "import": "external generations -> candidate pool (formats: xling-traces, jsonl)",
    "train-rm": "candidate pools -> reward-model checkpoint (Ray Train + DeepSpeed)",
    "score": "candidate pool + reward model -> pool with `score` (Ray Data)",
    "evaluate": "scored or unscored pool -> report (selector x budget x language)",
    "serve": "the selector endpoint (Ray Serve)",
    "compare": "two evaluate reports -> paired differences of every shared row",
    "submit": "run any command as a Ray job on a cluster",
    "demo": "the whole loop on one machine, offline",
    "tiny-model": "write a tiny random causal LM or reward model (tests, smoke runs)",
}


def _usage() -> str:
    lines = ["usage: bestofl <command> [--config FILE] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, text in HELP.items()]
    lines += ["", "`bestofl <command> --help` for a command's own options."]
    return "\n".join(lines)


def _import_command(argv: Sequence[str]) -> int:
    from bestofl.importers import import_pool
    from bestofl.config import load_config

    parser = argparse.ArgumentParser(prog="bestofl import")
    parser.add_argument("src", help="source folder or file")
    parser.add_argument("out", help="output pool folder")
    parser.add_argument("--format", required=True, choices=["xling-traces", "jsonl"])
    parser.add_argument("--overwrite", action="store_true", help="replace a finished output")
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. columns.response=output")
    args = parser.parse_args(argv)
    overrides = [f"src={args.src}", f"output={args.out}", f"format={args.format}", *args.overrides]
    if args.overwrite:
        overrides.append("overwrite=true")
    import_pool(load_config("import", args.config, overrides))
    return 0


def _tiny_model_command(argv: Sequence[str]) -> int:
    from bestofl.tiny import write_tiny_model

    parser = argparse.ArgumentParser(prog="bestofl tiny-model")
    parser.add_argument("out", help="folder to write the model and tokenizer to")
    parser.add_argument("--kind", choices=["lm", "rm"], default="lm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_model(args.out, kind=args.kind, seed=args.seed))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in PIPELINES:
            return importlib.import_module(PIPELINES[command]).main(rest) or 0
        if command == "import":
            return _import_command(rest)
        if command == "tiny-model":
            return _tiny_model_command(rest)
        if command == "compare":
            return importlib.import_module("bestofl.compare").main(rest)
        if command == "submit":
            from bestofl.submit import main as submit_main

            return submit_main(rest)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # User errors (config, input files, finished outputs) read better without a traceback.
        if os.environ.get("BESTOFL_DEBUG"):
            raise
        print(f"bestofl {command}: error: {e}", file=sys.stderr)
        return 2
    print(f"bestofl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
