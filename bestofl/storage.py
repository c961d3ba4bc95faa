"""Outputs on local paths or pyarrow-filesystem URIs (s3://, gs://, file://, ...).

Every command writes into one output folder: its data, `_config.yaml` (the effective
config) and, last, `_SUCCESS`; bookkeeping names start with `_` so that pandas, pyarrow
datasets and Ray Data read the folder as data only. A folder with `_SUCCESS` is finished
and is never replaced unless the user says `overwrite=true`; one without it is resumable.
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Sequence

import pyarrow.fs as pafs
from omegaconf import OmegaConf

FINISHED = "_SUCCESS"
CONFIG = "_config.yaml"
LEGACY_CONFIG = "config.yaml"  # outputs written before the `_` names; still read


class OutputExistsError(FileExistsError):
    """The output folder holds a finished result and overwrite was not asked for."""


class OutputError(ValueError):
    """The output cannot be written where asked: it overlaps an input, or is not writable."""


def _place(uri: str) -> tuple[str, str]:
    """(scheme, normalised absolute path): pure string work, no filesystem call (an s3://
    URI would cost a network round trip). Local paths resolve symlinks."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        if scheme == "file":
            return "file", os.path.realpath(rest)
        return scheme, posixpath.normpath("/" + rest)
    return "file", os.path.realpath(uri)


def check_output_apart(output: str, inputs: Sequence[str | None], name: str = "output") -> None:
    """Refuse an output that equals, lies inside, or contains any input, before anything is
    touched: writing there would delete the input (overwrite=true) or nest one pool in
    another (a reader then sees every row twice). An input that is neither a URI nor on
    disk (a hub id, `generated:...`, `hf:...`) is no place and cannot be overwritten."""
    scheme, out = _place(output)
    for given in inputs:
        if not given or ("://" not in given and not os.path.exists(given)):
            continue
        s, inp = _place(given)
        if s != scheme:
            continue
        if out == inp:
            relation = "is"
        elif out.startswith(inp.rstrip("/") + "/"):
            relation = "lies inside"
        elif inp.startswith(out.rstrip("/") + "/"):
            relation = "contains"
        else:
            continue
        raise OutputError(f"{name}={output} {relation} the input {given}: choose an output "
                          "folder apart from every input")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and the path inside it, for a local path or any pyarrow URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if "://" in uri else os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write through a temporary name then move, so a crash never leaves half a file."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    fs.move(tmp, path)


def is_finished(output: str) -> bool:
    return exists(join(output, FINISHED))


def prepare_output(output: str, overwrite: bool) -> bool:
    """Make `output` ready to write; returns True when it resumes earlier partial work."""
    fs, path = filesystem(output)
    if is_finished(output):
        if not overwrite:
            raise OutputExistsError(
                f"{output} already holds a finished result; pass overwrite=true to replace it"
            )
        fs.delete_dir(path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise OutputExistsError(f"{output} is a file, not an output folder")
    resuming = info.type == pafs.FileType.Directory and bool(
        fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    )
    try:  # a read-only place, or a file where a folder should be, fails here, not mid-run
        fs.create_dir(path, recursive=True)
        probe = posixpath.join(path, "_write-probe")
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except OSError as e:
        raise OutputError(f"cannot write output {output}: {' '.join(str(e).split())}") from None
    return resuming


def save_config(output: str, cfg: Any) -> None:
    write_text(join(output, CONFIG), OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def saved_config(output: str) -> str | None:
    """The effective config an earlier run wrote into `output` (either name), or None."""
    for name in (CONFIG, LEGACY_CONFIG):
        if exists(join(output, name)):
            return read_text(join(output, name))
    return None


def absolute(uri: str) -> str:
    """A local path made absolute (actors on other nodes run in other folders); URIs stay."""
    return uri if "://" in uri else os.path.abspath(uri)


_UNSAVED = object()


def resume_same_job(output: str, cfg: Any, keys: Sequence[str], overwrite: bool) -> bool:
    """Whether the partial work in `output` may be continued by `cfg`: yes unless the config
    saved there differs on one of `keys` (dotted paths; a key an older output did not save
    counts as equal). Another job's output is refused, or cleared when `overwrite`."""
    text = saved_config(output)
    if text is None:
        return True
    saved, now = OmegaConf.create(text), OmegaConf.structured(cfg)
    diff = [k for k in keys if OmegaConf.select(saved, k, default=_UNSAVED) not in
            (_UNSAVED, OmegaConf.select(now, k))]
    if not diff:
        return True
    if not overwrite:
        raise ValueError(f"{output} holds a partial result of another job (different "
                         f"{', '.join(diff)}); pass overwrite=true to start it over, "
                         "or use another output")
    fs, path = filesystem(output)
    fs.delete_dir_contents(path)
    return False


def mark_finished(output: str, summary: dict[str, Any] | None = None) -> None:
    write_text(join(output, FINISHED), json.dumps(summary or {}, indent=2, default=str) + "\n")
