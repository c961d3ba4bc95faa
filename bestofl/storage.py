"""Outputs on local paths or pyarrow-filesystem URIs (s3://, gs://, file://, ...).

Every command writes into one output folder: its data, `config.yaml` (the effective
config) and, last, `_SUCCESS`. A folder with `_SUCCESS` is finished and is never replaced
unless the user says `overwrite=true`; one without it is resumable.
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs

from bestofl.config import to_yaml

FINISHED = "_SUCCESS"


class OutputExistsError(FileExistsError):
    """The output folder holds a finished result and overwrite was not asked for."""


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
    fs.create_dir(path, recursive=True)
    return resuming


def save_config(output: str, cfg: Any) -> None:
    write_text(join(output, "config.yaml"), to_yaml(cfg))


def mark_finished(output: str, summary: dict[str, Any] | None = None) -> None:
    write_text(join(output, FINISHED), json.dumps(summary or {}, indent=2, default=str) + "\n")
