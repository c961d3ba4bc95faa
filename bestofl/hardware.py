"""Which number format this machine computes fastest, for `dtype: auto` in the configs."""
from __future__ import annotations

import torch


def native_bf16_cpu() -> bool:
    """True on CPUs with bf16 arithmetic (AVX512-BF16, AMX, Arm bf16).

    Elsewhere (AVX2-only x86) torch and vLLM emulate bf16, slower than fp32 (the README's
    demo section has the figures).
    """
    return (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
            or bool(torch.cpu.get_capabilities().get("bf16", False)))


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """`auto`: bfloat16 on GPUs and on CPUs with native bf16, float32 on other CPUs."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu or native_bf16_cpu() else "float32"
