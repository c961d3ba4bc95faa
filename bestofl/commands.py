"""Every `bestofl` command, once: the CLI dispatches from here, `submit` checks a job's
command against it, and a command's `config` names its schema (config.SCHEMAS) and its
defaults file (conf/<config>.yaml)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    entry: str  # "module:function"; the function takes argv and returns an exit code
    config: str | None  # schema / conf file name; None: the command parses its own arguments
    dry_run: bool = False  # takes --dry-run [--platform] (bestofl.plan.command_main)

    def main(self) -> Callable[[Sequence[str]], int]:
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("sample", "questions -> candidate pool (Ray Data + vLLM)", "pipelines.sample:main",
            "sample", dry_run=True),
    Command("import", "external generations -> candidate pool (formats: xling-traces, jsonl)",
            "bestofl.cli:import_main", "import"),
    Command("train-rm", "candidate pools -> reward-model checkpoint (Ray Train + DeepSpeed)",
            "pipelines.train_rm:main", "train_rm", dry_run=True),
    Command("score", "candidate pool + reward model -> pool with `score` (Ray Data)",
            "pipelines.score:main", "score", dry_run=True),
    Command("evaluate", "scored or unscored pool -> report (selector x budget x language)",
            "pipelines.evaluate:main", "evaluate"),
    Command("serve", "the selector endpoint (Ray Serve)", "pipelines.serve:main", "serve", dry_run=True),
    Command("compare", "two evaluate reports -> paired differences of every shared row",
            "bestofl.compare:main", None),
    Command("submit", "run any command as a Ray job on a cluster", "bestofl.submit:main", None),
    Command("demo", "the whole loop on one machine, offline", "pipelines.end_to_end:main", "demo"),
    Command("tiny-model", "write a tiny random causal LM or reward model (tests, smoke runs)",
            "bestofl.cli:tiny_model_main", "tiny_model"),
)}

# The first argument forms of import and tiny-model, still accepted:
#   import SRC OUT --format F [--overwrite]      tiny-model OUT [--kind K] [--seed S]
_POSITIONAL = {"import": ("src", "output"), "tiny-model": ("output",)}
_FLAGS = {"--format": "format", "--kind": "kind", "--seed": "seed"}


def key_value_args(command: str, argv: Sequence[str]) -> list[str]:
    """argv with the old positional and flag forms rewritten as key=value overrides."""
    names = _POSITIONAL.get(command)
    if not names:
        return list(argv)
    out, positional, it = [], [], iter(argv)
    for arg in it:
        flag, _, value = arg.partition("=")
        if flag in _FLAGS:
            out.append(f"{_FLAGS[flag]}={value if value else next(it, '')}")
        elif arg == "--overwrite":
            out.append("overwrite=true")
        elif arg == "--config":
            out += [arg, next(it, "")]
        elif arg.startswith("-") or "=" in arg:
            out.append(arg)
        else:
            positional.append(arg)
    if len(positional) > len(names):
        raise ValueError(f"unexpected argument(s) {positional[len(names):]}: give key=value")
    return [f"{k}={v}" for k, v in zip(names, positional)] + out


def check_args(command: str, argv: Sequence[str]) -> Any:
    """Answer --help and refuse a bad config from the config module alone, before the
    command's module (torch, transformers, vLLM: seconds to import) is loaded; returns the
    config (None for a command that parses its own arguments)."""
    from bestofl.config import command_parser, load_config

    spec = COMMANDS[command]
    if spec.config is None:
        return None
    args = command_parser(spec.config, spec.dry_run).parse_args(key_value_args(command, argv))
    return load_config(spec.config, args.config, args.overrides)


def parse_args(command: str, argv: Sequence[str]) -> Any:
    """`[--config FILE] key=value ...` of a command with a config -> its validated config."""
    from bestofl.config import parse_command_line

    spec = COMMANDS[command]
    if spec.config is None:
        raise ValueError(f"{command} takes no config")
    return parse_command_line(spec.config, key_value_args(command, argv))
