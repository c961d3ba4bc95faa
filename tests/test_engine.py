"""The vLLM engine's arguments per platform, the KV-cache check, the prompt-length check
(no engine start: the real engine runs in test_sampling and test_serving)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bestofl.config import load_config
from bestofl.engine import PromptTooLong, VllmEngine, check_kv_cache, engine_args
from bestofl.hardware import native_bf16_cpu
from bestofl.prompts import build_messages


def _cfg(*overrides):
    return load_config("sample", None, ["questions=q", "model=m", "output=o", *overrides])


def _engine_args(*overrides):
    cfg = _cfg(*overrides)
    return engine_args(cfg.model, cfg.engine, cfg.actors.num_gpus, cfg.seed)


def test_engine_args_follow_the_platform():
    cpu = _engine_args("engine.enable_chunked_prefill=true", "engine.extra={max_num_seqs: 8}")
    assert cpu["kv_cache_memory_bytes"] == 256 * 2**20 and cpu["enable_chunked_prefill"] is False
    assert cpu["enforce_eager"] is True
    assert "gpu_memory_utilization" not in cpu and cpu["max_num_seqs"] == 8
    # Only the GPUs set: none of the CPU sizes reach the GPU engine.
    gpu = _engine_args("actors.num_gpus=2", "engine.tensor_parallel_size=2")
    assert gpu["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in gpu
    assert gpu["enforce_eager"] is False and "enable_chunked_prefill" not in gpu
    assert gpu["tensor_parallel_size"] == 2 and gpu["distributed_executor_backend"] == "mp"
    # Explicit values win on GPUs; the CPU keeps chunked prefill off (seeded prefill crashes it).
    pinned = _engine_args("actors.num_gpus=1", "engine.kv_cache_memory_bytes=1000000000",
                          "engine.enforce_eager=true", "engine.enable_chunked_prefill=false")
    assert pinned["kv_cache_memory_bytes"] == 10**9 and pinned["enforce_eager"] is True
    assert pinned["enable_chunked_prefill"] is False
    assert _engine_args("engine.kv_cache_memory_bytes=1000000000")["kv_cache_memory_bytes"] == 10**9
    # dtype auto: bf16 on GPUs; on CPUs only where bf16 is native (AVX2 emulates it, slowly)
    assert gpu["dtype"] == "bfloat16"
    assert cpu["dtype"] == ("bfloat16" if native_bf16_cpu() else "float32")
    assert _engine_args("engine.dtype=float32", "actors.num_gpus=1")["dtype"] == "float32"
    assert cpu["seed"] == 0
    # serve's generator: the same rules, no run seed
    serve = load_config("serve", None, ["model=rm", "generator=lm", "generator_num_gpus=1"])
    gen = engine_args(serve.generator, serve.engine, serve.generator_num_gpus)
    assert gen["model"] == "lm" and gen["dtype"] == "bfloat16" and "seed" not in gen
    assert gen["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in gen
    assert gen["enforce_eager"] is False


def test_kv_cache_too_small_for_one_sequence_is_refused(tiny_lm):
    args = _engine_args(f"model={tiny_lm}")
    need = check_kv_cache(args)  # the default fits the tiny model
    assert need and need <= args["kv_cache_memory_bytes"]
    with pytest.raises(ValueError, match="kv_cache_memory_bytes=.*max_model_len=2048"):
        check_kv_cache({**args, "kv_cache_memory_bytes": need - 1})
    assert check_kv_cache({**args, "model": "Org/not-cached-here"}) is None


def test_one_prompt_check_names_the_context_and_the_prompt_length(tiny_lm):
    from transformers import AutoTokenizer

    llm = SimpleNamespace(get_tokenizer=lambda: AutoTokenizer.from_pretrained(tiny_lm),
                          shutdown=lambda: None, model_config=SimpleNamespace(max_model_len=256))
    engine = VllmEngine(llm)  # the wrapper's own logic; no engine process behind it
    text, ids = engine.encode(build_messages("1 + 2?", "en", "en"))
    assert text.endswith("<|im_start|>assistant\n") and 0 < len(ids) < 256
    assert ids == engine.tokenizer.encode(text, add_special_tokens=False)  # no second BOS
    with pytest.raises(PromptTooLong, match=r"prompt has \d+ tokens; .*engine.max_model_len\) is 256") as e:
        engine.encode(build_messages("Janet has 16 eggs. " * 20, "en", "en"))
    assert isinstance(e.value, ValueError) and e.value.prompt.startswith("<|im_start|>")
