"""`bestofl` the installed command: help, unknown command, config errors exit 2 naming
the key before any work, import and tiny-model end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestofl import cli
from bestofl.commands import COMMANDS

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
    done = run("import", "format=csv", f"src={src}", f"output={out}")
    assert done.returncode == 2 and "format must be 'xling-traces' or 'jsonl', got 'csv'" in done.stderr


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
    # key=value like every other command; the flag forms above stay as they were
    assert cli.main(["import", "format=jsonl", f"src={src}", f"output={out}", "overwrite=true"]) == 0
    assert cli.main(["import", "format=jsonl", str(src), str(out), "extra"]) == 2
    assert "unexpected argument(s) ['extra']" in capsys.readouterr().err
    assert cli.main(["import", "--format", "jsonl", str(tmp_path / "none.jsonl"), str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def test_tiny_model_command(tmp_path):
    out = tmp_path / "rm"
    done = run("tiny-model", "kind=rm", f"output={out}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(name.endswith(".bin") for name in files)  # safetensors only
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    # the first form (positional folder, flags) still works; a bad kind fails before any work
    assert cli.main(["tiny-model", "--kind", "xl", str(tmp_path / "xl")]) == 2
    assert not (tmp_path / "xl").exists()


@pytest.mark.parametrize("command", sorted(c.name for c in COMMANDS.values() if c.config))
def test_command_config_error_exits_2(command, capsys):
    """In process (no interpreter start per command)."""
    assert cli.main([command, "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert f"bestofl {command}: error:" in err and "no_such_key" in err


# ---------------------------------------------------------------- outputs apart from inputs
def _finished_pool(path: Path) -> Path:
    from bestofl import pool, storage

    rows = [dict(qid=f"q{i}", question_lang="en", response_lang="en", sample_idx=0, model="m",
                 method="hand", response=f"The answer is {i}.", answer=str(i), gold=str(i),
                 correct=True) for i in range(4)]
    pool.write_pool(pool.to_table(rows), str(path))
    storage.mark_finished(str(path), {"rows": 4})
    return path


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _command_args(command: str, inputs: Path, output: Path) -> list[str]:
    """The command with `inputs` as its data input and `output` as its output; everything
    else is valid enough to get past parsing (the guard must fire before it is used)."""
    if command == "sample":
        return ["sample", f"questions={inputs}", "model=/nonexistent/model", f"output={output}"]
    if command == "import":
        return ["import", f"src={inputs}", f"output={output}", "format=jsonl"]
    if command == "train-rm":
        return ["train-rm", f"input=[{inputs}]", "model=/nonexistent/model", f"output={output}"]
    if command == "score":
        return ["score", f"input={inputs}", "model=/nonexistent/rm", f"output={output}"]
    return ["evaluate", f"input={inputs}", f"output={output}"]


@pytest.mark.parametrize("relation", ["equal", "inside", "contains"])
@pytest.mark.parametrize("command", ["sample", "import", "train-rm", "score", "evaluate"])
def test_output_overlapping_an_input_is_refused_and_the_input_kept(command, relation, tmp_path, capsys):
    """`overwrite=true` with output=input deleted the input pool (evaluate, train-rm); an
    output inside the input nested one pool in another. Both exit 2, the input intact."""
    if command in ("sample", "import"):  # a questions / generations file as the input
        base = tmp_path / "data"
        base.mkdir()
        inputs = base / "in.jsonl"
        inputs.write_text(json.dumps({"qid": "a", "lang": "en", "question": "1+1?", "gold": "2",
                                      "response": "The answer is 2."}) + "\n")
    else:
        inputs = _finished_pool(tmp_path / "data" / "pool")
    output = {"equal": inputs, "inside": inputs / "nested",
              "contains": inputs.parent}[relation]
    before = _snapshot(tmp_path / "data")
    assert cli.main([*_command_args(command, inputs, output), "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert f"bestofl {command}: error:" in err and "apart from every input" in err, err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path / "data") == before


def test_inputs_that_are_no_place_never_block_an_output(tmp_path, monkeypatch):
    """A hub id or a `generated:` spec is not on disk: an output whose path happens to
    spell it is no overlap."""
    from bestofl import storage

    monkeypatch.chdir(tmp_path)
    storage.check_output_apart("Qwen", ["Qwen/Qwen2.5-7B-Instruct", "generated:16:easy"])
    (tmp_path / "Qwen" / "Qwen2.5-7B-Instruct").mkdir(parents=True)  # now a local folder
    with pytest.raises(storage.OutputError, match="contains the input Qwen/Qwen2.5-7B-Instruct"):
        storage.check_output_apart("Qwen", ["Qwen/Qwen2.5-7B-Instruct"])


def test_nested_pool_is_refused_by_readers_naming_both_folders(tmp_path, capsys):
    """A pool written inside another (by an older version, or by hand) reads every row twice:
    evaluate refuses it, naming the folders, instead of reporting doubled budgets."""
    outer = _finished_pool(tmp_path / "pool")
    _finished_pool(outer / "scored")
    assert cli.main(["evaluate", f"input={outer}", f"output={tmp_path / 'report'}"]) == 2
    err = capsys.readouterr().err
    assert "4 row identities appear more than once" in err
    assert f"{outer}," in err and str(outer / "scored") in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("where", ["file-in-path", "read-only"])
def test_unwritable_output_is_one_line_exit_2(where, tmp_path, capsys):
    """An output nobody can write ends in exit 2 and one line, not a traceback. Root ignores
    permission bits, so as root the read-only place is sysfs (refuses new entries to root too)."""
    inputs = _finished_pool(tmp_path / "pool")
    if where == "file-in-path":
        (tmp_path / "a-file").write_text("x")
        output = tmp_path / "a-file" / "report"
    elif os.geteuid() == 0:
        output = Path("/sys/bestofl-test-report")
        if output.exists() or not Path("/sys").is_dir():
            pytest.skip("no sysfs to stand for a read-only place")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        output = locked / "report"
    assert cli.main(["evaluate", f"input={inputs}", f"output={output}", "plots=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bestofl evaluate: error: cannot write output {output}") and err.count("\n") == 1


def test_config_file_whose_top_level_is_a_list_is_one_line_exit_2(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- input: a\n- output: b\n")
    done = run("evaluate", "--config", str(config))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"bestofl evaluate: error: {config}: the top level must be "
                                   "a mapping of keys (key: value), not a list")


@pytest.mark.parametrize("command", sorted(c.name for c in COMMANDS.values() if c.config))
def test_command_help_lists_every_key_with_default_and_comment(command, capsys):
    """`bestofl <command> --help`: each key of the schema, its default from the conf YAML
    and that YAML's comment for it (the one source of both)."""
    from omegaconf import OmegaConf

    from bestofl.config import CONF_DIR, yaml_comments

    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    conf = CONF_DIR / f"{COMMANDS[command].config}.yaml"
    comments = yaml_comments(conf)
    assert comments, f"{conf.name} has no key comments"
    for key, comment in comments.items():
        assert (f"{key}=" in text or f"{key}:" in text) and " ".join(comment.split()) in text, key
    loaded = OmegaConf.load(conf)
    for key in ("output", "model", "input"):  # a required key shows as ???
        if key in loaded and OmegaConf.is_missing(loaded, key):
            assert f" {key}=??? " in f" {text} "


def test_registry_is_one_and_has_no_import_circle():
    """One command registry: submit checks against it and does not import the CLI."""
    import ast

    from bestofl.config import CONF_DIR, SCHEMAS

    for name, spec in COMMANDS.items():
        assert spec.main(), name  # the entry resolves
        if spec.config:
            assert spec.config in SCHEMAS and (CONF_DIR / f"{spec.config}.yaml").is_file()
    tree = ast.parse((ROOT / "bestofl" / "submit.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "bestofl.cli" not in imported and "bestofl.commands" in imported
    tree = ast.parse((ROOT / "bestofl" / "storage.py").read_text())
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "bestofl.config"
                   for n in ast.walk(tree))


def test_verbose_flag_anywhere_is_taken_out_and_turns_ray_logs_on(tmp_path, monkeypatch):
    """`--verbose` is the CLI's own switch: the command never sees it, init_ray reads it.
    Quiet by default: the libraries' switches are set here and for every Ray worker."""
    from bestofl import console, ray_runtime

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    for key in {**console.QUIET_ENV, **console.WORKER_ENV}:  # the quiet mode sets them
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")  # a user's own setting wins
    assert cli.main(["tiny-model", f"output={tmp_path / 'lm'}"]) == 0
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR" and "RAY_DATA_LOG_LEVEL" not in os.environ
    args = ray_runtime._init_args()
    assert args["logging_config"].log_level == "ERROR"
    workers = args["runtime_env"]["env_vars"]
    assert workers["RAY_DATA_LOG_LEVEL"] == "ERROR" and workers["VLLM_LOGGING_LEVEL"] == "INFO"
    # Only a local instance, which nothing drains, turns Ray Train's preemption watcher off.
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in workers
    local = ray_runtime._init_args(local=True)["runtime_env"]["env_vars"]
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"

    assert cli.main(["tiny-model", f"output={tmp_path / 'lm2'}", "--verbose"]) == 0
    assert os.environ.get(console.VERBOSE_ENV) == "1"
    assert (tmp_path / "lm2" / "config.json").exists()
    args = ray_runtime._init_args()
    assert "logging_config" not in args  # Ray's own logs, and workers follow the driver
    assert args["runtime_env"]["env_vars"] == {console.VERBOSE_ENV: "1"}


def test_help_and_config_errors_answer_before_torch_is_imported():
    """--help and a bad key are answered from the config module: the command's own module
    (torch, transformers, vLLM) is not loaded for them."""
    probe = ("import sys\nfrom bestofl.cli import main\n"
             "try:\n    main(['train-rm', '--help'])\nexcept SystemExit:\n    pass\n"
             "code = main(['score', 'input=p', 'model=m', 'output=o', 'no_such_key=1'])\n"
             "print(code, sorted(m for m in ('torch', 'transformers', 'vllm', 'pipelines.score') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "--dry-run" in out.stdout and "no_such_key" in out.stderr, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2 []"
