"""Pipeline overhead of `bestofl sample` against plain `vllm.LLM.generate`, in one run.

    .venv/bin/python benchmarks/sampling_overhead.py [--model smollm2|PATH] [--questions 16] ...

1. plain (own process): import vllm, build the engine, generate every prompt in one call
   (same prompts, seeds and sampling parameters as the pipeline); wall time includes the
   engine start.
   The same engine then times n=N in one request against N seeded requests (generation
   only, prefix cache reset between them) and checks both give identical tokens.
2. pipeline: pipelines.sample.run with one actor, wall time from the call (Ray start,
   actor, engine start, sampling, grading, Parquet writes).
3. driver memory: peak RSS of a driver process running the pipeline on k and 10k
   generated questions (tiny LM, 4 tokens per sample: it measures the driver, not vLLM).
Last line: sampling_overhead_ratio: pipeline tokens/s / plain vLLM tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bestofl.config import load_config  # noqa: E402


def sample_config(args: argparse.Namespace, model: str, questions: str, output: str,
                  limit: int | None, max_tokens: int, *extra: str):
    return load_config("sample", None, [
        f"questions={questions}", f"model={model}", f"output={output}",
        f"languages=[{args.languages}]", f"n={args.n}", f"limit={limit if limit else 'null'}",
        f"sampling.max_tokens={max_tokens}", f"engine.max_model_len={args.max_model_len}",
        f"actors.batch_size={args.batch_size}", f"group_samples={str(args.group).lower()}",
        f"actors.batches_in_flight={args.batches_in_flight}",
        f"engine.kv_cache_memory_bytes={args.kv_cache_mib * 2**20}", *extra])


def plain_vllm(cfg, compare_items: int) -> dict:
    """Every prompt through one LLM.generate call, as the pipeline would draw them."""
    start = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from bestofl import sampling
    from bestofl.engine import engine_args
    from bestofl.languages import resolve_languages
    from bestofl.prompts import build_messages, prompt_text
    from bestofl.questions import load_questions

    questions = load_questions(cfg.questions, cfg.languages, cfg.limit)
    items = sampling.work_items(questions, cfg.mode, resolve_languages(cfg.languages),
                                cfg.question_lang, cfg.n)
    llm = LLM(**engine_args(cfg.model, cfg.engine, cfg.actors.num_gpus, cfg.seed))
    ready = time.perf_counter() - start
    tok = llm.get_tokenizer()
    s = cfg.sampling

    def requests(grouped: bool):
        prompts, params = [], []
        for it in items:
            messages = build_messages(it["question"], it["question_lang"], it["response_lang"],
                                      cfg.prompt)
            ids = tok.encode(prompt_text(tok, messages), add_special_tokens=False)
            for group in sampling.request_groups(it["sample_idxs"], grouped):
                seed = sampling.sample_seed(cfg.seed, it["qid"], it["question_lang"],
                                            it["response_lang"], group[0])
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(SamplingParams(n=len(group), seed=seed, temperature=s.temperature,
                                             top_p=s.top_p, max_tokens=s.max_tokens))
        return prompts, params

    def generate(grouped: bool, limit: int | None = None):
        t = time.perf_counter()
        prompts, params = requests(grouped)
        outs = llm.generate(prompts[:limit], params[:limit], use_tqdm=False)
        tokens = [list(c.token_ids) for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]
        return tokens, time.perf_counter() - t

    tokens, _ = generate(cfg.group_samples)
    total = time.perf_counter() - start
    n_tokens = sum(map(len, tokens))
    result = {"tokens": n_tokens, "seconds": total, "samples": len(tokens), "start_s": ready}
    k = compare_items  # the request-form comparison runs on the first k work items
    llm.reset_prefix_cache()
    grouped, t_grouped = generate(True, k)
    llm.reset_prefix_cache()
    single, t_single = generate(False, sum(len(it["sample_idxs"]) for it in items[:k]))
    result.update(grouped_tok_s=sum(map(len, grouped)) / t_grouped,
                  single_tok_s=sum(map(len, single)) / t_single, identical=grouped == single)
    llm.llm_engine.engine_core.shutdown()  # its processes hold our stdout: the parent waits on them
    return result


def driver_rss(args: argparse.Namespace, questions: int) -> float:
    """Peak RSS (MiB) of a fresh driver process sampling `questions` generated problems."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[1]);"
        "from bestofl.config import load_config; from pipelines.sample import run;"
        "run(load_config('sample', None, json.loads(sys.argv[2])));"
        "print('RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    with tempfile.TemporaryDirectory() as tmp:
        from bestofl.tiny import write_tiny_model

        model = write_tiny_model(Path(tmp) / "lm")
        overrides = [f"questions=generated:{questions}", f"model={model}", f"output={tmp}/pool",
                     "languages=[en,de]", "n=4", "sampling.max_tokens=4", "engine.max_model_len=512",
                     "engine.kv_cache_memory_bytes=33554432", "actors.batch_size=64"]
        out = subprocess.run([sys.executable, "-c", code, str(ROOT), json.dumps(overrides)],
                             capture_output=True, text=True, timeout=3600)
        line = [l for l in out.stdout.splitlines() if l.startswith("RSS_KIB")]
        if out.returncode or not line:
            raise RuntimeError(f"driver run failed:\n{out.stderr[-3000:]}")
        return int(line[0].split()[1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 (converted once into --cache) or a model folder")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "bestofl"))
    p.add_argument("--questions-source", default=str(ROOT.parent / "shared" / "data" / "mgsm"))
    # Defaults: a plain run of ~4 minutes on 2 CPU cores (engine start ~1 min); conf/sample.yaml's actors.
    p.add_argument("--questions", type=int, default=16, help="MGSM questions (limit)")
    p.add_argument("--languages", default="en,de")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=16, help="work items per actor call (conf default)")
    p.add_argument("--batches-in-flight", type=int, default=2, help="actor calls one engine serves at once "
                   "(conf default); with --batch-size, what the engine holds: keep it >= its max_num_seqs")
    p.add_argument("--kv-cache-mib", type=int, default=2048,
                   help="KV cache of both engines: room for every sequence, so neither preempts")
    p.add_argument("--group", type=int, default=1, help="1: n=N per request, 0: N seeded requests")
    p.add_argument("--compare-items", type=int, default=4,
                   help="work items for the n=N vs N-seeded-requests comparison")
    p.add_argument("--memory-questions", type=int, default=200, help="1x size of the RSS check (10x also runs)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.group = bool(args.group)

    model = args.model
    if model == "smollm2":
        from bestofl.smollm2 import smollm2_checkpoint

        model = str(smollm2_checkpoint(args.cache))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sample_config(args, model, args.questions_source, f"{tmp}/pool", args.questions,
                            args.max_tokens)
        if args.plain_only:  # the child process of the plain side
            print("PLAIN", json.dumps(plain_vllm(cfg, args.compare_items)), flush=True)
            os._exit(0)  # a multiprocess vLLM engine can leave interpreter exit waiting on it
        # Its own process: vLLM's CPU backend pins the process that runs it to cores, which
        # would also pin the Ray instance this process starts next.
        child = subprocess.run([sys.executable, *sys.argv, "--plain-only", "--model", model],
                               capture_output=True, text=True)
        line = [l for l in child.stdout.splitlines() if l.startswith("PLAIN ")]
        if child.returncode or not line:
            raise RuntimeError(f"plain vLLM run failed:\n{child.stderr[-3000:]}")
        plain = json.loads(line[0][6:])

        from pipelines.sample import run

        start = time.perf_counter()
        summary = run(cfg)
        pipe_s = time.perf_counter() - start
    pipe_tok_s = summary["generated_tokens"] / pipe_s
    plain_tok_s = plain["tokens"] / plain["seconds"]

    rows = [("plain vLLM (engine start + generate)", plain["samples"], plain["tokens"], plain["seconds"], plain_tok_s),
            ("bestofl sample, 1 actor (Ray + engine start)", summary["new_samples"],
             summary["generated_tokens"], pipe_s, pipe_tok_s)]
    print(f"\nmodel {model}, {args.questions} questions x [{args.languages}] x n={args.n}, "
          f"max_tokens {args.max_tokens}, group_samples={args.group}, batch_size {args.batch_size}, "
          f"batches_in_flight {args.batches_in_flight}, KV cache {args.kv_cache_mib} MiB")
    print(f"{'side':<46} {'samples':>8} {'tokens':>8} {'seconds':>8} {'tok/s':>8}")
    for name, samples, tokens, secs, rate in rows:
        print(f"{name:<46} {samples:>8} {tokens:>8} {secs:>8.1f} {rate:>8.1f}")
    if summary["first_batch_s"]:
        print(f"startup: plain engine ready after {plain['start_s']:.1f} s; pipeline's first batch "
              f"back after {summary['first_batch_s']:.1f} s (Ray, actor, engine start, one batch)")
    print(f"\nrequest form (plain engine, generation only, {args.compare_items} work items): n=N in one request "
          f"{plain['grouped_tok_s']:.1f} tok/s, N seeded requests {plain['single_tok_s']:.1f} tok/s, "
          f"identical tokens: {plain['identical']}")
    if not args.skip_memory:
        k = args.memory_questions
        small, large = driver_rss(args, k), driver_rss(args, 10 * k)
        print(f"driver peak RSS: {k} questions {small:.0f} MiB, {10 * k} questions {large:.0f} MiB "
              f"(+{100 * (large / small - 1):.1f}%)")
    print(f"sampling_overhead_ratio: {pipe_tok_s / plain_tok_s:.3f}")


if __name__ == "__main__":
    main()
