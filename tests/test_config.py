"""Config system: schema <- YAML <- overrides; errors name the key; every shipped YAML loads.

Presets (conf/presets/*.yaml) are whole config files for one command, used as
`bestofl <command> --config conf/presets/<name>.yaml`. Naming rule: the command is read
from the preset's header comment, which must show that command line (torchtune style);
`bestofl submit ... <command>` counts as <command>.
"""
from __future__ import annotations

import re
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from bestofl import storage
from bestofl.config import (CONF_DIR, SCHEMAS, ConfigError, SampleConfig, load_config,
                            merge_overrides, parse_command_line, to_yaml, value_range)

REQUIRED = ["questions=generated:4", "model=some/model", "output=runs/x"]


def test_defaults_and_overrides():
    cfg = load_config("sample", None, [*REQUIRED, "n=2", "languages=[en,de]", "sampling.temperature=0"])
    assert isinstance(cfg, SampleConfig)
    assert (cfg.n, cfg.languages, cfg.sampling.temperature) == (2, ["en", "de"], 0.0)
    assert cfg.skip_malformed is False and cfg.limit is None  # from conf/sample.yaml


@pytest.mark.parametrize("override, key", [
    ("bogus=1", "bogus"),
    ("sampling.temprature=0.5", "sampling.temprature"),
    ("engine.nope.deeper=1", "engine.nope"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"key '{key}'")):
        load_config("sample", None, [*REQUIRED, override])


@pytest.mark.parametrize("override, key", [
    ("n=four", "n"),
    ("limit=[1]", "limit"),
    ("sampling.max_tokens=1.5", "sampling.max_tokens"),
    ("languages=en", "languages"),
    ("overwrite=maybe", "overwrite"),
])
def test_bad_type_is_named(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"key '{key}'")):
        load_config("sample", None, [*REQUIRED, override])


@pytest.mark.parametrize("command, overrides, message", [
    ("sample", [*REQUIRED, "n=0"], "n must be >= 1"),
    ("sample", [*REQUIRED, "mode=sideways"], "mode must be 'parallel' or 'forcing'"),
    ("sample", [*REQUIRED, "limit=0"], "limit must be >= 1"),
    ("sample", [*REQUIRED, "sampling.temperature=-1"], "sampling.temperature must be >= 0"),
    ("import", ["src=a", "output=b", "format=csv"], "format must be 'xling-traces' or 'jsonl'"),
])
def test_bad_value_is_named(command, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(command, None, overrides)


def test_missing_required_values_are_listed():
    with pytest.raises(ConfigError, match=r"missing required config value\(s\): model, output, questions"):
        load_config("sample")
    with pytest.raises(ConfigError, match=r"not of the form key=value"):
        load_config("sample", None, [*REQUIRED, "n"])


def test_config_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(Path(CONF_DIR / "sample.yaml").read_text() + "\n")
    OmegaConf.save(OmegaConf.merge(OmegaConf.load(path), {
        "questions": "generated:8", "model": "m", "output": "o", "n": 3}), path)
    cfg = parse_command_line("sample", ["--config", str(path), "n=5"])
    assert (cfg.questions, cfg.n) == ("generated:8", 5)  # command line beats the file
    assert parse_command_line("sample", ["--config", str(path)]).n == 3
    path.write_text("questions: q\nmodel: m\noutput: o\nn: 1\nbogus: 2\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: key 'bogus'"):
        load_config("sample", path)
    path.write_text("n: [1\nmodel: : x\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML"):
        load_config("sample", path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("sample", tmp_path / "missing.yaml")


def test_config_file_needs_only_the_keys_it_changes(tmp_path):
    """--config layers over conf/<command>.yaml: keys the file leaves out keep their defaults
    (so an older run's _config.yaml loads after a key is added), and `???` in the file makes
    a key required again."""
    full = load_config("evaluate", None, ["input=p", "output=r"])
    old_run = OmegaConf.to_container(OmegaConf.structured(full))
    del old_run["tracker"], old_run["tracker_project"]  # written before these keys existed
    path = tmp_path / "_config.yaml"
    OmegaConf.save(OmegaConf.create(old_run), path)
    assert load_config("evaluate", path) == full
    path.write_text("bootstrap: 7\nplots: false\n")
    cfg = load_config("evaluate", path, ["input=p", "output=r", "plots=true"])
    assert (cfg.bootstrap, cfg.plots, cfg.monte_carlo) == (7, True, full.monte_carlo)
    path.write_text("tracker_project: ???\n")
    with pytest.raises(ConfigError, match=r"missing required config value\(s\): tracker_project"):
        load_config("evaluate", path, ["input=p", "output=r"])


def test_merge_overrides_on_a_dataclass():
    cfg = load_config("sample", None, REQUIRED)
    changed = merge_overrides(cfg, {"n": 7, "sampling": {"top_p": 0.5}})
    assert (changed.n, changed.sampling.top_p, changed.model) == (7, 0.5, "some/model")
    assert cfg.n != 7  # the original is untouched
    with pytest.raises(ConfigError, match="n must be >= 1"):
        merge_overrides(cfg, ["n=0"])


def test_effective_config_saved_beside_output(tmp_path):
    cfg = load_config("sample", None, [*REQUIRED, "n=9", "languages=[fr]", "engine.extra={swap_space: 1}"])
    out = str(tmp_path / "run")
    storage.prepare_output(out, overwrite=False)
    storage.save_config(out, cfg)
    saved = Path(out) / "_config.yaml"
    assert saved.read_text() == to_yaml(cfg)
    assert load_config("sample", saved) == cfg  # the saved file reproduces the run


# ---------------------------------------------------------------- every shipped YAML
def _header_command(path: Path) -> str | None:
    """The command a YAML's header comment shows (`bestofl <command> ...`)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if "bestofl " in line:
            for token in line.split("bestofl ", 1)[1].split():
                if token.replace("-", "_") in SCHEMAS:
                    return token.replace("-", "_")
    return None


def _load_with_placeholders(command: str, path: Path):
    """Load `path` for `command`, filling the keys it leaves to the command line (???)."""
    schema = SCHEMAS[command]
    merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    types = {f.name: str(f.type) for f in fields(schema)}
    overrides = []
    for key in sorted(OmegaConf.missing_keys(merged)):
        value = {"format": "jsonl", "questions": "generated:4"}.get(key, "placeholder")
        overrides.append(f"{key}=[{value}]" if types.get(key, "").startswith("list") else f"{key}={value}")
    return load_config(command, path, overrides)


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_command_yaml_loads(path):
    command = path.stem
    assert command in SCHEMAS, f"{path.name}: no schema named {command!r} in bestofl.config.SCHEMAS"
    assert _header_command(path) == command, f"{path.name}: header must show `bestofl {command} ...`"
    cfg = _load_with_placeholders(command, path)
    assert isinstance(cfg, SCHEMAS[command])


def test_every_command_has_a_yaml():
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == set(SCHEMAS)


@pytest.mark.parametrize("path", sorted((CONF_DIR / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(path):
    command = _header_command(path)
    assert command, (f"{path.name}: the header comment must show its command, e.g. "
                     f"`#   bestofl sample --config conf/presets/{path.name} ...`")
    cfg = _load_with_placeholders(command, path)
    assert isinstance(cfg, SCHEMAS[command])


def test_preset_rule(tmp_path):
    """The header rule itself, on presets written here (conf/presets may still be empty)."""
    preset = tmp_path / "cluster.yaml"
    body = OmegaConf.merge(OmegaConf.load(CONF_DIR / "train_rm.yaml"), {"num_workers": 8, "use_gpu": True})
    preset.write_text("# A GPU cluster.\n"
                      "#   bestofl submit --address http://head:8265 train-rm --config conf/presets/cluster.yaml\n"
                      + OmegaConf.to_yaml(body))
    assert _header_command(preset) == "train_rm"
    cfg = _load_with_placeholders("train_rm", preset)
    assert (cfg.num_workers, cfg.use_gpu, cfg.input) == (8, True, ["placeholder"])
    preset.write_text("# no command shown here\nn: 2\n")
    assert _header_command(preset) is None


# ---------------------------------------------------------------- every key, out of range
def _leaves(schema: type, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, type, dataclass field) of every leaf key of a schema."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in fields(schema):
        kind = hints[f.name]
        if is_dataclass(kind):
            out += _leaves(kind, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, kind, f))
    return out


def _bad_value(key: str, kind: Any, fld: Any) -> str:
    """A value of the right shape but out of range (or of the wrong type where every value
    of the type is fine)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if typing.get_origin(kind) is typing.Union else kind
    if base is bool:
        return "maybe"
    if base in (int, float):
        rule = value_range(key, fld)
        if rule.ge is not None:
            return str(rule.ge - 1)
        if rule.gt is not None:
            return str(rule.gt)
        if rule.le is not None:
            return str(rule.le + 1)
        return "nan" if base is float else "abc"
    if base is str:
        return "''"
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return "[0]" if item is int else "['']"
    return "5"  # dicts and free-form keys: not a mapping / not a pool


CASES = [(command, key, kind, fld) for command, schema in SCHEMAS.items()
         for key, kind, fld in _leaves(schema)]


@pytest.mark.parametrize("command, key, kind, fld", CASES, ids=[f"{c}:{k}" for c, k, _, _ in CASES])
def test_every_key_refuses_an_out_of_range_value(command, key, kind, fld):
    """Each key of each schema, set to a value it must not take, is a ConfigError naming
    the key at parse time (lr=-1, top_p=5, temperature=nan, max_model_len=-4, ...)."""
    good = _load_with_placeholders(command, CONF_DIR / f"{command}.yaml")
    bad = _bad_value(key, kind, fld)
    with pytest.raises(ConfigError) as e:
        merge_overrides(good, [f"{key}={bad}"])
    assert key.rsplit(".", 1)[-1] in str(e.value), str(e.value)


@pytest.mark.parametrize("key, value", [
    ("lr", "-1"), ("max_grad_norm", "-1"), ("max_grad_norm", "0"), ("ray.num_cpus", "0"),
    ("cpus_per_worker", "0"), ("val_fraction", "1.5"), ("lr", "inf")])
def test_issue_examples_are_refused_with_the_key(key, value):
    good = _load_with_placeholders("train_rm", CONF_DIR / "train_rm.yaml")
    with pytest.raises(ConfigError, match=re.escape(key)):
        merge_overrides(good, [f"{key}={value}"])
    sample = _load_with_placeholders("sample", CONF_DIR / "sample.yaml")
    for key, value in (("sampling.temperature", "nan"), ("sampling.top_p", "5"),
                       ("engine.max_model_len", "-4"), ("actors.num_cpus", "0")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            merge_overrides(sample, [f"{key}={value}"])
    serve = _load_with_placeholders("serve", CONF_DIR / "serve.yaml")
    with pytest.raises(ConfigError, match="scorer_num_cpus"):
        merge_overrides(serve, ["scorer_num_cpus=-2"])


def test_yaml_comments_rule(tmp_path):
    """The comment of a key: on its line (with continuation lines below), else the block
    right above it at its indentation; the header belongs to no key."""
    from bestofl.config import yaml_comments

    path = tmp_path / "x.yaml"
    path.write_text("# header: bestofl x\n#   bestofl x a=1\n"
                    "a: 1           # the first\n"
                    "               # goes on here\n"
                    "b: [1, 2]\n"
                    "# about c\n"
                    "c: x#y\n"
                    "d:\n"
                    "  # inner\n"
                    "  e: null     # deep\n"
                    "  f: 2\n")
    assert yaml_comments(path) == {"a": "the first goes on here", "c": "about c", "d.e": "deep"}
