"""`bestofl` the installed command: help, unknown command, config errors exit 2 naming
the key before any work, import and tiny-model end to end."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestofl import cli

ROOT = Path(__file__).resolve().parents[1]
BESTOFL = Path(sys.executable).parent / "bestofl"  # the venv's console script


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    assert BESTOFL.exists(), f"console script not installed at {BESTOFL} (make install)"
    return subprocess.run([str(BESTOFL), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "BESTOFL_DEBUG": ""})


def test_help_lists_every_command(capsys):
    done = run("--help")
    assert done.returncode == 0
    assert cli.main(["-h"]) == 0 and capsys.readouterr().out == done.stdout
    for command in ("sample", "import", "train-rm", "score", "evaluate", "serve", "submit",
                    "demo", "tiny-model"):
        assert f"  {command} " in done.stdout


def test_unknown_command_exits_2():
    done = run("frobnicate", "x=1")
    assert done.returncode == 2
    assert "unknown command 'frobnicate'" in done.stderr and "usage: bestofl" in done.stderr


def test_config_error_exits_2_naming_the_key_before_any_work(tmp_path):
    src = tmp_path / "gens.jsonl"
    src.write_text(json.dumps({"qid": "a", "lang": "en", "response": "The answer is 2."}) + "\n")
    out = tmp_path / "pool"
    done = run("import", "--format", "jsonl", str(src), str(out), "colums.response=text")
    assert done.returncode == 2
    assert "bestofl import: error:" in done.stderr and "'colums'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    done = run("import", "--format", "csv", str(src), str(out))
    assert done.returncode == 2 and "invalid choice: 'csv'" in done.stderr


def test_import_then_refuse_then_overwrite(tmp_path, capsys):
    """In process through cli.main: the same argument parsing, no interpreter start."""
    src = tmp_path / "gens.jsonl"
    src.write_text(json.dumps({"qid": "a", "lang": "en", "response": "The answer is 2.", "gold": 2}) + "\n")
    out = tmp_path / "pool"
    assert cli.main(["import", "--format", "jsonl", str(src), str(out)]) == 0
    assert (out / "_SUCCESS").exists() and "wrote 1 rows" in capsys.readouterr().err
    assert cli.main(["import", "--format", "jsonl", str(src), str(out)]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert cli.main(["import", "--format", "jsonl", str(src), str(out), "--overwrite"]) == 0
    assert cli.main(["import", "--format", "jsonl", str(tmp_path / "none.jsonl"), str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def test_tiny_model_command(tmp_path):
    out = tmp_path / "rm"
    done = run("tiny-model", "--kind", "rm", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith(".bin") for name in files)  # safetensors only
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    with pytest.raises(SystemExit) as e:  # argparse rejects the kind before any work
        cli.main(["tiny-model", "--kind", "xl", str(tmp_path / "xl")])
    assert e.value.code == 2 and not (tmp_path / "xl").exists()


@pytest.mark.parametrize("command", sorted(cli.PIPELINES))
def test_pipeline_config_error_exits_2(command, capsys):
    """In process (no interpreter start per command); skipped until the module exists."""
    if importlib.util.find_spec(cli.PIPELINES[command]) is None:
        pytest.skip(f"{cli.PIPELINES[command]} not written yet")
    assert cli.main([command, "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert f"bestofl {command}: error:" in err and "no_such_key" in err
