"""Models read from anywhere a cluster keeps them: a local folder, a hub id, or any pyarrow
URI (s3://, gs://, file://, ...), copied once per node into a local cache.

A hub id stays a name: transformers and vLLM fetch it into the Hugging Face cache
(HF_HOME, HF_TOKEN), once per node. A URI is copied into
$BESTOFL_MODEL_CACHE (default ~/.cache/bestofl/models)/<hash of the URI and its listing>,
so a model rewritten at the same URI is fetched again. Only safetensors weights are
copied: pickled ones (.bin, .pt, ...) never reach this machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid

import pyarrow.fs as pafs

from bestofl import storage

CACHE_ENV = "BESTOFL_MODEL_CACHE"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name on the Hugging Face hub
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")


def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "bestofl", "models")


def absolute_model(model: str) -> str:
    """A model on disk made absolute (actors on other nodes run in other folders); a URI or
    a name not on disk (a hub id; else its check names it) stays as given."""
    return os.path.abspath(model) if "://" not in model and os.path.exists(model) else model


def local_model(model: str) -> str:
    """A path transformers and vLLM can load: `model` itself unless it is a URI, which is
    copied (once per node, safetensors only) and its local copy returned."""
    if "://" not in model:
        return model
    fs, root = storage.filesystem(model)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"model not found: {model} ({e})") from None
    files = sorted((posixpath.relpath(i.path, root), i.size, i.mtime_ns) for i in infos
                   if i.type == pafs.FileType.File and not i.path.lower().endswith(PICKLED))
    if not any(name.endswith(".safetensors") for name, _, _ in files):
        raise FileNotFoundError(f"model {model} holds no .safetensors weights "
                                "(only safetensors are loaded)")
    key = hashlib.sha256(json.dumps([model, files]).encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), key)
    if os.path.isdir(target):
        return target
    from filelock import FileLock

    os.makedirs(cache_dir(), exist_ok=True)
    with FileLock(target + ".lock"):  # actors of one node: one download
        if os.path.isdir(target):
            return target
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            for name, _, _ in files:
                dest = os.path.join(tmp, *name.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with fs.open_input_stream(f"{root}/{name}") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 16 * 2**20)
            os.rename(tmp, target)  # whole or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_language_model(model: str) -> None:
    """Fail before any Ray work on a language model (sample's, serve's generator) that is neither a local HF folder, a URI holding one (copied
    into this node's cache) nor a resolvable hub id."""
    model = local_model(model)
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise FileNotFoundError(f"model folder {model} has no config.json")
        return
    if os.path.exists(model) or not HUB_ID.match(model):
        raise FileNotFoundError(f"model not found: {model!r} is not a model folder "
                                f"(nor a Hugging Face hub id like Qwen/Qwen2.5-7B-Instruct)")
    from huggingface_hub import hf_hub_download

    try:  # from the local cache when offline, else the hub: a few KB
        hf_hub_download(model, "config.json")
    except Exception as e:  # offline miss, unknown repo, gated repo, no network ...
        raise FileNotFoundError(f"model not found: {model!r} is no local folder and the "
                                f"hub could not provide it ({type(e).__name__})") from None


def check_reward_model(path: str, trust_remote_code: bool = False) -> None:
    """Fail before any Ray work unless `path` is a loadable model: a folder, a URI (copied
    into this node's cache, safetensors only) or a hub id."""
    from transformers import AutoConfig, AutoTokenizer

    local = local_model(path)
    if not os.path.isdir(local) and (os.path.exists(local) or not HUB_ID.match(local)):
        raise FileNotFoundError(f"reward model not found: {path} (model= takes a reward-model "
                                "folder, e.g. one written by `bestofl train-rm`, a URI such as "
                                "s3://bucket/rm, or a hub id)")
    if os.path.isdir(local) and not any(n.endswith(".safetensors") for n in os.listdir(local)):
        raise FileNotFoundError(f"reward model {path} has no .safetensors weights")
    try:
        AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
        AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"reward model {path} cannot be loaded: {e}") from None
