"""`bestofl <command>`: dispatch through the one command registry (bestofl.commands).

Every command takes `[--config FILE] key=value ...`; a pipeline's pipelines/<name>.py
module is also a valid Ray job entrypoint (`python -m pipelines.sample ...`).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from bestofl import console, ray_runtime
from bestofl.commands import COMMANDS, check_args, parse_args
from bestofl.submit import auth_headers


def _usage() -> str:
    lines = ["usage: bestofl [--verbose] <command> [--config FILE] [key=value ...]", "",
             "commands:"]
    lines += [f"  {c.name:<11} {c.summary}" for c in COMMANDS.values()]
    lines += ["", "`bestofl <command> --help` for a command's own keys and defaults;",
              "--verbose (anywhere) shows Ray's and vLLM's own logs too."]
    return "\n".join(lines)


def import_main(argv: Sequence[str]) -> int:
    from bestofl.importers import import_pool

    import_pool(parse_args("import", argv))
    return 0


def tiny_model_main(argv: Sequence[str]) -> int:
    from bestofl.tiny import write_tiny_model

    cfg = parse_args("tiny-model", argv)
    print(write_tiny_model(cfg.output, kind=cfg.kind, seed=cfg.seed))
    return 0


def _fix_auth_mode(cfg: Any) -> None:
    """Ray turns token auth on by itself where a token exists, but only after it read the
    mode at import: the local instance's agents then run with auth off, and a worker's State
    API calls (Ray Train's PlacementGroupCleaner) hang until train-rm's shutdown times out
    with a traceback. Said before Ray loads, every process of that instance agrees. Only for
    an instance this command starts: a cluster it joins keeps the mode it runs with."""
    ray_cfg = getattr(cfg, "ray", None)
    if (ray_cfg is not None and "ray" not in sys.modules and "RAY_AUTH_MODE" not in os.environ
            and auth_headers() and ray_runtime.starts_local(ray_cfg.address)):
        os.environ["RAY_AUTH_MODE"] = "token"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv = [a for a in argv if a != "--verbose"]
        os.environ[console.VERBOSE_ENV] = "1"
    console.quiet_defaults()  # before any library reads its switches
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"bestofl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        _fix_auth_mode(check_args(command, rest))
        return COMMANDS[command].main()(rest) or 0
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        # User errors (config, input files, finished outputs) read better without a traceback.
        if os.environ.get("BESTOFL_DEBUG"):
            raise
        print(f"bestofl {command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
