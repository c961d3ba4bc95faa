"""Load and faults on the selector endpoint, loopback only, bounded in time.

Three phases, the same reward model, request bodies and number of clients:
  plain  a single-process FastAPI scorer under uvicorn, one forward pass per request
         (the usual remote reward-model server), in a subprocess;
  serve  `bestofl serve`'s app (pipelines.serve.run) on a fresh local Ray;
  fault  the same load on serve, and the scorer replica is killed (ray.kill) a third of
         the way in: failed requests (and how many of them were in flight at the kill)
         and the time until a request sent after the kill succeeds.
  mixed  fairness, on serve: 15 clients of small requests (one candidate) alone, then
         beside 1 client of maximum-size requests (max_candidates long candidates, as
         many as max_request_tokens allows), in alternating rounds; small-request p50/p99
         both ways and their p99 ratio (target: at most 3).
plain and serve run side by side and are measured in alternating rounds, so a machine
whose load drifts (a shared box) weighs on both alike.
Bodies are real: MGSM questions with s1.1-7B's responses in several languages
(../shared/data/xling-traces), falling back to synthetic text without the data.

    python benchmarks/serve_load.py                       # 16 clients, 60 s per phase
    python benchmarks/serve_load.py --duration 30 --set max_batch_size=32

Prints a table, then `serve_speedup: X` (serve requests/s over plain requests/s).
Both sides get --threads cores: the plain server as torch threads, serve as that many
one-thread scorer replicas; the fault phase kills every scorer replica at once.
"""
# No `from __future__ import annotations`: FastAPI must see the plain server's body type.
import argparse
import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "xling-traces" / "s1.1-7B" / "system"


def bodies(n_questions: int, n_candidates: int, max_chars: int) -> list[dict]:
    """`/select` bodies: question i with up to n_candidates responses in different languages."""
    from bestofl.answers import model_response

    files = sorted(TRACES.glob("*.jsonl.gz")) if TRACES.is_dir() else []
    rows = {}
    for path in files[:n_candidates]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows[path.name.split(".")[0]] = [json.loads(line) for _, line in zip(range(n_questions), f)]
    out = []
    for i in range(n_questions):
        if rows:
            question = rows.get("en", next(iter(rows.values())))[i]["prompt"]
            cands = [{"text": model_response(r[i]["output"])[-max_chars:], "lang": lang}
                     for lang, r in rows.items()]
        else:
            question = f"Janet has {16 + i} eggs and eats 3. How many are left?"
            cands = [{"text": f"{16 + i} - 3 = {13 + i + k}. The answer is {13 + i + k}. " * 20,
                      "lang": "en"} for k in range(n_candidates)]
        out.append({"question": question, "candidates": cands})
    return out


# ---------------------------------------------------------------- the plain server
def plain_server(model: str, port: int, max_length: int, threads: int) -> None:
    """One process, one forward pass per request over that request's candidates."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from bestofl.reward.model import load_reward_model, score
    from bestofl.serving import SelectRequest, extract_answers, select

    torch.set_num_threads(threads)
    rm, tokenizer = load_reward_model(model)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/select")
    def select_(req: SelectRequest) -> dict:  # sync: FastAPI runs it in its thread pool
        texts = [c.text for c in req.candidates]
        scores = score(rm, tokenizer, [req.question] * len(texts), texts, max_length=max_length,
                       batch_size=len(texts))
        answers = extract_answers(texts, [c.lang for c in req.candidates])
        best = select("rm_best", answers, scores)
        return {"best": best, "answer": answers[best], "scores": scores}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- load
async def load(url: str, payloads: list[dict], clients: int, duration: float,
               at: float | None = None, action=None) -> tuple[list[tuple[float, float, bool]], float | None]:
    """`clients` concurrent loops posting for `duration` s: (start, end, ok) per request.

    `action` (returning its perf_counter time) runs in a thread `at` s in; the load then
    goes on, up to 5 more minutes, until a request sent after it has succeeded."""
    import aiohttp

    records: list[tuple[float, float, bool]] = []
    stop = time.perf_counter() + duration
    fired: list[float] = []
    recovered = False

    def running() -> bool:
        now = time.perf_counter()
        return now < stop or (bool(fired) and not recovered and now < stop + 300)

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal recovered
        k = i
        while running():
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=payloads[k % len(payloads)]) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            records.append((t0, time.perf_counter(), ok))
            recovered |= ok and bool(fired) and t0 > fired[0]
            k += clients

    async def trigger() -> None:
        await asyncio.sleep(at)
        fired.append(await asyncio.to_thread(action))

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=clients)) as session:
        tasks = [client(i, session) for i in range(clients)]
        if action is not None:
            tasks.append(trigger())
        await asyncio.gather(*tasks)
    return records, (fired[0] if fired else None)


async def mixed(url: str, small: list[dict], big: dict, clients: int, duration: float
                ) -> tuple[list[tuple[float, float, bool]], list[tuple[float, float, bool]]]:
    """`clients` loops of small requests beside one loop of maximum-size requests."""
    (small_records, _), (big_records, _) = await asyncio.gather(
        load(url, small, clients, duration), load(url, [big], 1, duration))
    return small_records, big_records


def summary(name: str, windows: list[list[tuple[float, float, bool]]]) -> dict:
    """Requests/s over the measured windows, latency percentiles of the successes."""
    duration = sum(max(e for _, e, _ in w) - min(s for s, _, _ in w) for w in windows)
    records = [r for w in windows for r in w]
    lat = sorted(e - s for s, e, ok in records if ok)
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    out = {"phase": name, "requests": len(records), "errors": sum(not ok for *_, ok in records),
           "rps": len(lat) / duration, "p50_ms": pct(0.50), "p99_ms": pct(0.99)}
    print(out, flush=True)
    return out


def wait_healthy(url: str, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def kill_scorer() -> float:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and "#Scorer#" in a["name"]]
    t = time.perf_counter()
    for a in names:
        ray.kill(ray.get_actor(a["name"], namespace="serve"), no_restart=True)
    print(f"killed {len(names)} scorer replica(s)", flush=True)  # all: a full scorer outage
    return t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="reward-model folder (default: a tiny random RM)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds per phase (the fault phase goes on until the service recovers)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of plain and serve")
    p.add_argument("--questions", type=int, default=32, help="distinct request bodies")
    p.add_argument("--candidates", type=int, default=4, help="responses per request")
    p.add_argument("--max-chars", type=int, default=4000, help="keep each response's last N chars")
    p.add_argument("--max-length", type=int, default=512, help="reward-model tokens per pair")
    p.add_argument("--port", type=int, default=18931)
    p.add_argument("--plain-port", type=int, default=18932)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="cores for each side: the plain server's torch threads; as many "
                        "one-thread scorer replicas for serve")
    p.add_argument("--no-fault", action="store_true", help="skip the replica-kill phase")
    p.add_argument("--no-mixed", action="store_true", help="skip the fairness phase")
    p.add_argument("--small-clients", type=int, default=15,
                   help="fairness phase: clients of small requests beside the one large client")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra `bestofl serve` overrides (e.g. scorer_num_cpus=2 max_batch_size=32)")
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        plain_server(args.model, args.plain_port, args.max_length, args.threads)
        return 0

    tmp = tempfile.TemporaryDirectory()
    if args.model is None:
        from bestofl.tiny import write_tiny_model

        args.model = str(write_tiny_model(Path(tmp.name) / "rm", kind="rm"))
    payloads = bodies(args.questions, args.candidates, args.max_chars)

    import ray
    from ray import serve

    from bestofl.config import load_config
    from pipelines.serve import run

    for attempt in range(3):  # a busy machine can miss Ray's 30 s node start-up deadline
        try:
            # address="local": never join another Ray instance this machine happens to run
            ray.init(address="local", num_cpus=max(4, args.threads + 2),
                     object_store_memory=256 * 2**20, include_dashboard=False)
            break
        except Exception as e:
            print(f"ray.init failed ({e}); retrying", flush=True)
            ray.shutdown()
    else:
        raise RuntimeError("could not start Ray")
    fault, windows, fairness = {}, {"plain": [], "serve": []}, []
    proc = subprocess.Popen([sys.executable, __file__, "--plain-server", "--model", args.model,
                             "--plain-port", str(args.plain_port), "--max-length", str(args.max_length),
                             "--threads", str(args.threads)], start_new_session=True)
    plain = f"http://127.0.0.1:{args.plain_port}"
    try:
        # The same cores as the plain server, as one-thread replicas (Ray sets a replica's
        # torch threads to its num_cpus): on CPUs they batch best and never stall on a
        # descheduled OpenMP thread.
        cfg = load_config("serve", None, [f"model={args.model}", f"port={args.port}",
                                          f"max_length={args.max_length}", "scorer_num_cpus=1",
                                          f"scorer_replicas={args.threads}", *args.set])
        run(cfg, block=False)  # starts Serve with patient proxy checks (serving.PROXY_CHECK_ENV)
        urls = {"plain": f"{plain}/select", "serve": f"http://127.0.0.1:{args.port}/select"}
        wait_healthy(f"{plain}/healthz", 300)
        for url in urls.values():
            asyncio.run(load(url, payloads, args.clients, 3))  # warm-up
        for _ in range(args.rounds):
            for name, url in urls.items():
                records, _ = asyncio.run(load(url, payloads, args.clients,
                                              args.duration / args.rounds))
                windows[name].append(records)
        results = [summary(name, w) for name, w in windows.items()]
        if not args.no_fault:
            records, k = asyncio.run(load(urls["serve"], payloads, args.clients, args.duration,
                                          at=args.duration / 3, action=kill_scorer))
            results.append(summary("fault", [records]))
            after = [e for s, e, ok in records if ok and s > k]
            fault = {
                "in_flight_at_kill": sum(s <= k <= e for s, e, _ in records),
                "failed": sum(not ok for *_, ok in records),
                "failed_in_flight": sum(not ok and s <= k for s, _, ok in records),
                "failed_sent_after_kill": sum(not ok and s > k for s, _, ok in records),
                "recovery_s": min(after) - k if after else float("nan"),
                "max_latency_s": max(e - s for s, e, _ in records),
            }
        if not args.no_mixed:
            # The largest request the limits admit: max_candidates long texts, each cut to
            # max_length tokens, no more in all than max_request_tokens.
            n_big = max(1, min(cfg.max_candidates, cfg.max_request_tokens // cfg.max_length))
            long_texts = [c for b in bodies(args.questions, args.candidates, cfg.max_text_chars)
                          for c in b["candidates"]]
            big = {"question": payloads[0]["question"],
                   "candidates": [long_texts[i % len(long_texts)] for i in range(n_big)]}
            small = [{"question": b["question"], "candidates": b["candidates"][:1]} for b in payloads]
            fair = {"alone": [], "mixed": [], "big": []}
            for _ in range(args.rounds):
                records, _ = asyncio.run(load(urls["serve"], small, args.small_clients,
                                              args.duration / args.rounds))
                fair["alone"].append(records)
                records, big_records = asyncio.run(mixed(urls["serve"], small, big,
                                                         args.small_clients,
                                                         args.duration / args.rounds))
                fair["mixed"].append(records)
                fair["big"].append(big_records)
            fairness = [summary("small", fair["alone"]), summary("small+big", fair["mixed"]),
                        summary(f"big x{n_big}", fair["big"])]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        serve.shutdown()
        ray.shutdown()

    print(f"\n{args.clients} clients, {args.duration:.0f} s per phase in {args.rounds} rounds, "
          f"{args.candidates} candidates "
          f"per request, {args.threads} torch threads, model {args.model}, "
          f"serve overrides {args.set or 'none'}")
    print(f"{'phase':<7} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r['phase']:<7} {r['requests']:>9} {r['errors']:>7} {r['rps']:>8.1f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    if fairness:
        print(f"fairness: {args.small_clients} clients of 1-candidate requests, alone and beside "
              "1 client of maximum-size requests")
        for r in fairness:
            print(f"{r['phase']:<9} {r['requests']:>7} {r['errors']:>7} {r['rps']:>8.1f} "
                  f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
        print(f"small_p99_ratio (beside big / alone): {fairness[1]['p99_ms'] / fairness[0]['p99_ms']:.2f}"
              " (target <= 3)")
    for key, value in fault.items():
        print(f"fault {key}: {value:.2f}" if isinstance(value, float) else f"fault {key}: {value}")
    speedup = results[1]["rps"] / results[0]["rps"]
    print(f"serve_speedup: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
