"""The Best-of-L selector as a Ray Serve application.

Three deployments: `Selector`, the FastAPI ingress (validation, limits, auth, the CPU
work of tokenizing and answer extraction, the selection policy); `Scorer`, the reward
model, which batches (question, response) pairs across concurrent requests, taking them
round-robin across requests (`FairBatcher`) so one large request cannot hold the model
while small ones wait, and only runs forward passes; and, when a
generator is configured, `Generator`, a vLLM engine that samples one question across
languages for /solve. `build_app(cfg)` binds them; `app_builder(args)` is the import
path that `serve run` / `serve deploy` / a RayService use (cluster/serve-config.yaml).
"""
# No `from __future__ import annotations`: the routes are closures that Serve pickles by
# value, and FastAPI could not resolve string annotations against their pickled globals.
import asyncio
import collections
import hmac
import logging
from typing import Any, Callable, Optional

import torch
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from transformers import AutoTokenizer

from bestofl.answers import extract_answer
from bestofl.config import ServeConfig, load_config
from bestofl.languages import get_language, resolve_languages
from bestofl.models import local_model
from bestofl.prompts import build_messages
from bestofl.reward.model import collate, encode, forward_scores, load_reward_model
from bestofl.selection import round_robin, vote_weights

logger = logging.getLogger("ray.serve")


# ---------------------------------------------------------------- request / response bodies
class _Strict(BaseModel):
    # Unknown keys are typos worth a 422, and "3" is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


class Candidate(_Strict):
    text: str = Field(description="the response, as the model wrote it")
    lang: str = Field(description="ISO 639-1 code of the language it reasons in")

    @field_validator("lang")
    @classmethod
    def known_language(cls, code: str) -> str:
        get_language(code)  # UnknownLanguageError (a ValueError) becomes a 422 naming the code
        return code


class SelectRequest(_Strict):
    question: str = Field(min_length=1)
    candidates: list[Candidate] = Field(min_length=1)


class SolveRequest(_Strict):
    question: str = Field(min_length=1)
    lang: str = Field(description="language the question is posed in")
    budget: int = Field(ge=1, description="responses to sample, over `languages` round-robin")
    languages: list[str] = Field(default_factory=list,
                                 description="the set L; empty: only `lang`")
    translations: dict[str, str] = Field(
        default_factory=dict,
        description="question text per language: those languages are asked in their own "
                    "language; the others are asked `question` and forced to reason in theirs")

    @field_validator("lang")
    @classmethod
    def known_language(cls, code: str) -> str:
        get_language(code)
        return code

    @field_validator("languages")
    @classmethod
    def known_languages(cls, codes: list[str]) -> list[str]:
        return resolve_languages(codes) if codes else []  # drops repeats

    @field_validator("translations")
    @classmethod
    def known_translations(cls, texts: dict[str, str]) -> dict[str, str]:
        for code in texts:
            get_language(code)
        return texts


class Selection(BaseModel):
    best: int = Field(description="index of the selected candidate")
    answer: Optional[str] = Field(description="its extracted, normalised final answer")
    scores: list[float] = Field(description="reward-model score of every candidate")


class Solution(Selection):
    candidates: list[Candidate] = Field(description="the sampled responses, in order")


# Serve's HTTP proxy must pass a 5 s readiness check by default; a loaded small box starts
# it slower, and Serve then kills and restarts it in a loop. Passed to the controller.
PROXY_CHECK_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
                   "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


# ---------------------------------------------------------------- selection
def extract_answers(texts: list[str], langs: list[str]) -> list[Optional[str]]:
    """`extract_answer` per candidate; a text it cannot read states no answer (a client's
    odd text must not fail the request)."""
    answers = []
    for text, lang in zip(texts, langs):
        try:
            answers.append(extract_answer(text, lang))
        except Exception as e:  # e.g. a 5,000-digit number: int() refuses it
            logger.warning("answer extraction failed (%s: %s); no answer", type(e).__name__, e)
            answers.append(None)
    return answers


def select(policy: str, answers: list[Optional[str]], scores: list[float]) -> int:
    """Index of the chosen candidate.

    rm_best: the highest score. majority: the most frequent answer; rm_vote: the answer
    with the largest sum of `vote_weights` (sigmoid of the score, as `evaluate` counts it).
    Both return that answer's highest-scored candidate, break ties by first appearance
    (evaluate averages over ties; a service must pick one) and fall back to rm_best when
    no candidate states an answer.
    """
    best = max(range(len(scores)), key=scores.__getitem__)
    if policy == "rm_best" or all(a is None for a in answers):
        return best
    weights = [1.0] * len(scores) if policy == "majority" else vote_weights(scores).tolist()
    mass: dict[str, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            mass[answer] = mass.get(answer, 0.0) + weight
    winner = max(mass, key=mass.__getitem__)
    return max((i for i, a in enumerate(answers) if a == winner), key=scores.__getitem__)


# ---------------------------------------------------------------- deployments
class FairBatcher:
    """Reward-model batches formed from many requests' pairs, fairly.

    Each request's pairs wait in a queue of their own; a batch takes one pair from each
    waiting request in turn (up to `max_pairs` pairs and `max_tokens` tokens), and the
    request served last goes to the back. A request of 64 long candidates thus shares every
    batch with the small requests that arrive while it runs, instead of holding the model
    until it is done (a first-come batch queue). A cancelled (timed out) request's pairs
    that have not run yet are dropped.
    """

    def __init__(self, run: Callable[[list[list[int]]], list[float]], max_pairs: int,
                 max_tokens: int, wait_s: float):
        self.run, self.max_pairs, self.max_tokens, self.wait_s = run, max_pairs, max_tokens, wait_s
        self._waiting: collections.deque = collections.deque()  # one deque of (ids, future) per request
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    async def score(self, batch_ids: list[list[int]]) -> list[float]:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._batches())
        mine = collections.deque((ids, loop.create_future()) for ids in batch_ids)
        futures = [f for _, f in mine]
        self._waiting.append(mine)
        self._wake.set()
        try:
            return list(await asyncio.gather(*futures))
        finally:
            mine.clear()  # cancelled: what has not run yet is not run

    def _pending(self) -> int:
        return sum(len(q) for q in self._waiting)

    def _take(self) -> list[tuple[list[int], asyncio.Future]]:
        batch, tokens = [], 0
        while self._waiting and len(batch) < self.max_pairs:
            queue = self._waiting.popleft()
            if not queue:
                continue  # finished or cancelled request
            ids, future = queue[0]
            if batch and tokens + len(ids) > self.max_tokens:
                self._waiting.appendleft(queue)
                break
            queue.popleft()
            if not future.cancelled():
                batch.append((ids, future))
                tokens += len(ids)
            if queue:
                self._waiting.append(queue)  # its next pair waits for the others' turn
        return batch

    async def _batches(self) -> None:
        while True:
            if not self._pending():
                self._wake.clear()
                await self._wake.wait()
            if self.wait_s and self._pending() < self.max_pairs:
                await asyncio.sleep(self.wait_s)  # let a batch fill from concurrent requests
            batch = self._take()
            if not batch:
                continue
            try:
                # In a thread, so the event loop keeps accepting requests meanwhile.
                scores = await asyncio.to_thread(self.run, [ids for ids, _ in batch])
            except Exception as e:  # noqa: BLE001  (every request of the batch gets the error)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), value in zip(batch, scores):
                if not future.done():
                    future.set_result(value)


@serve.deployment
class Scorer:
    """The reward model. Pairs from concurrent requests share forward passes, formed by a
    `FairBatcher`; within a batch, pairs of similar length run together."""

    def __init__(self, cfg: ServeConfig):
        self.model, tokenizer = load_reward_model(local_model(cfg.model), cfg.dtype,
                                                  cfg.trust_remote_code)
        self.pad_id = tokenizer.pad_token_id
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.max_batch_tokens = cfg.max_batch_tokens
        self.batcher = FairBatcher(self._run, cfg.max_batch_size, cfg.max_batch_tokens,
                                   cfg.batch_wait_timeout_s)

    async def score(self, batch_ids: list[list[int]]) -> list[float]:
        """Scores of (question, response) pairs, tokenized by `reward.model.encode`."""
        return await self.batcher.score(batch_ids)

    def _run(self, batch: list[list[int]]) -> list[float]:
        # Sorted by length and cut so that no forward pads past max_batch_tokens: a short
        # pair never pays for a long one's padding.
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out = [0.0] * len(batch)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * len(batch[order[end]]) <= self.max_batch_tokens:
                end += 1
            chunk = order[start:end]
            input_ids, mask = collate([batch[i] for i in chunk], self.pad_id)
            with torch.inference_mode():
                values = forward_scores(self.model, input_ids.to(self.device),
                                        mask.to(self.device)).tolist()
            for i, value in zip(chunk, values):
                out[i] = value
            start = end
        return out


@serve.deployment
class Generator:
    """A vLLM engine; concurrent /solve calls share its continuous batching."""

    def __init__(self, cfg: ServeConfig):
        from bestofl.engine import VllmEngine, engine_args  # only generator replicas need vLLM

        self.engine = VllmEngine.start(engine_args(local_model(cfg.generator), cfg.engine,
                                                   cfg.generator_num_gpus))
        self.sampling = cfg.sampling

    def __del__(self) -> None:
        # Serve calls this on the replica's loop when it stops the replica: the engine
        # stops in order before the process goes.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    async def generate(self, chats: list[list[dict]]) -> list[str]:
        from vllm import SamplingParams

        s = self.sampling
        # Every prompt is checked before any request starts (PromptTooLong: a 422).
        prompts = [self.engine.encode(chat)[1] for chat in chats]
        outs = await asyncio.gather(*(self.engine.generate(ids, SamplingParams(
            temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)) for ids in prompts))
        return [out.outputs[0].text for out in outs]

    def check_health(self) -> None:
        # A dead engine fails the health check, so Serve replaces the replica.
        if self.engine.errored:
            raise RuntimeError("the vLLM engine is dead")


class _Guard:
    """ASGI middleware run before any parsing: bearer token and body size for POSTs.

    The body is read here up to the limit (Content-Length is not trusted: chunked bodies
    have none) and replayed to the app, so an oversized body is never parsed.
    """

    def __init__(self, app: Any, token: Optional[str], max_body_bytes: int):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            given = headers.get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(),
                                                                     self.token.encode()):
                what = "wrong bearer token" if given else "missing bearer token"
                return await JSONResponse({"detail": f"{what}: send 'Authorization: Bearer <token>'"},
                                          401, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        too_big = JSONResponse({"detail": f"request body is larger than {self.max_body_bytes} bytes"}, 413)
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit():
            return await JSONResponse({"detail": "bad Content-Length header"}, 400)(scope, receive, send)
        if int(declared) > self.max_body_bytes:
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await too_big(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


ECHO_CHARS = 200  # an error message quotes at most this much of what a client sent


def _short(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _validation_error(_request: Any, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem (where, what), never echoing the input
    beyond a short prefix (a 1 MB `lang` is named, not sent back)."""
    lines = []
    for err in exc.errors()[:10]:
        if err.get("type") == "json_invalid":
            lines.append(f"body is not valid JSON: {_short(str(err.get('ctx', {}).get('error', '')))}")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        lines.append(f"{_short(where) or 'body'}: {_short(str(err.get('msg', 'invalid')))}")
    return JSONResponse({"detail": "; ".join(lines)}, 422)


def _http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
    """Every other error, with its message cut short too."""
    return JSONResponse({"detail": _short(str(exc.detail), 2 * ECHO_CHARS)}, exc.status_code,
                        headers=getattr(exc, "headers", None))


@serve.deployment
@serve.ingress()
class Selector:
    """HTTP ingress: POST /select, POST /solve, GET /healthz, docs at /docs."""

    def __init__(self, cfg: ServeConfig, scorer: DeploymentHandle,
                 generator: Optional[DeploymentHandle]):
        self.cfg, self.scorer, self.generator = cfg, scorer, generator
        # Tokenizing here keeps the CPU work where replicas are cheap (and off the GPU nodes).
        self.tokenizer = AutoTokenizer.from_pretrained(local_model(cfg.model),
                                                       trust_remote_code=cfg.trust_remote_code)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built per replica from the config (limits and token live in the middleware).
        cfg = self.cfg
        app = FastAPI(title="bestofl selector", version="1", description=(
            "Best-of-L: pick the best of several responses to one math question, "
            f"in any language. Selector: {cfg.selector}. Limits: {cfg.max_candidates} "
            f"candidates, {cfg.max_text_chars} characters per text, {cfg.max_body_bytes} "
            "bytes per body." + (" POST requests need 'Authorization: Bearer <token>'."
                                 if cfg.token else "")))
        app.add_middleware(_Guard, token=cfg.token, max_body_bytes=cfg.max_body_bytes)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(StarletteHTTPException, _http_error)

        @app.get("/healthz")
        async def healthz() -> dict:
            return {"status": "ok", "selector": cfg.selector, "generator": cfg.generator is not None}

        @app.post("/select", response_model=Selection)
        async def select_(req: SelectRequest) -> dict:
            self._check_limits(req.question, [c.text for c in req.candidates])
            texts, langs = [c.text for c in req.candidates], [c.lang for c in req.candidates]
            return await self._in_time(self._choose([req.question] * len(texts), texts, langs))

        @app.post("/solve", response_model=Solution)
        async def solve(req: SolveRequest) -> dict:
            return await self._in_time(self._solve(req))

        return app

    def _check_limits(self, question: str, texts: list[str]) -> None:
        cfg = self.cfg
        if len(texts) > cfg.max_candidates:
            raise HTTPException(422, f"candidates: {len(texts)} given, at most "
                                     f"{cfg.max_candidates} allowed")
        for where, text in [("question", question)] + [(f"candidates.{i}.text", t)
                                                       for i, t in enumerate(texts)]:
            if len(text) > cfg.max_text_chars:
                raise HTTPException(422, f"{where}: {len(text)} characters, at most "
                                         f"{cfg.max_text_chars} allowed")

    async def _in_time(self, work: Any) -> dict:
        """The request's answer, or 504 after request_timeout_s (its queued work is dropped)."""
        try:
            return await asyncio.wait_for(work, self.cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within request_timeout_s="
                                     f"{self.cfg.request_timeout_s:g} s: the service is busy "
                                     "or the request is large; retry, or send fewer or "
                                     "shorter candidates") from None

    async def _call(self, what: str, method: Any, *args: Any) -> Any:
        # A replica that dies mid-request (crash, node loss, a kill) fails the call; both
        # calls are pure, so try once more on whichever replica Serve routes to next.
        for attempt in (1, 2):
            try:
                return await method.remote(*args)
            except ValueError as e:  # the request's fault (raised as RayTaskError(ValueError))
                raise HTTPException(422, str(getattr(e, "cause", e))) from None
            except RayActorError as e:
                logger.warning("%s call failed (attempt %d): %s", what, attempt, e)
                if attempt == 2:
                    raise HTTPException(503, f"{what} unavailable, try again: "
                                             f"{type(e).__name__}") from None

    def _read(self, questions: list[str], texts: list[str], langs: list[str]
              ) -> tuple[list[list[int]], list[Optional[str]]]:
        ids = [encode(self.tokenizer, q, t, self.cfg.max_length) for q, t in zip(questions, texts)]
        return ids, extract_answers(texts, langs)

    async def _choose(self, questions: list[str], texts: list[str], langs: list[str]) -> dict:
        # In a thread: long texts take a while and must not stall the event loop that
        # serves every other request.
        ids, answers = await asyncio.to_thread(self._read, questions, texts, langs)
        tokens = sum(len(x) for x in ids)
        if tokens > self.cfg.max_request_tokens:
            raise HTTPException(413, f"the request needs {tokens} reward-model tokens, over "
                                     f"the limit max_request_tokens={self.cfg.max_request_tokens}"
                                     f" (each candidate counts up to max_length="
                                     f"{self.cfg.max_length}); send fewer or shorter candidates")
        scores = await self._call("reward model", self.scorer.score, ids)
        best = select(self.cfg.selector, answers, scores)
        return {"best": best, "answer": answers[best], "scores": scores}

    async def _solve(self, req: SolveRequest) -> dict:
        if self.generator is None:
            raise HTTPException(400, "no generator configured: start the service with "
                                     "generator=<model> to use /solve")
        if req.budget > self.cfg.max_candidates:
            raise HTTPException(422, f"budget: {req.budget} given, at most "
                                     f"{self.cfg.max_candidates} allowed")
        self._check_limits(req.question, list(req.translations.values()))
        # The budget cycles through the languages from the question's own: evaluate's
        # round_robin allocation.
        langs = round_robin(req.languages or [req.lang], req.lang)
        plan = [langs[i % len(langs)] for i in range(req.budget)]
        questions, chats = [], []
        for lang in plan:
            if lang != req.lang and lang in req.translations:
                questions.append(req.translations[lang])
                chats.append(build_messages(req.translations[lang], lang, lang))
            else:
                questions.append(req.question)
                chats.append(build_messages(req.question, req.lang, lang))
        texts = await self._call("generator", self.generator.generate, chats)
        chosen = await self._choose(questions, texts, plan)
        return {**chosen, "candidates": [{"text": t, "lang": lang} for t, lang in zip(texts, plan)]}


# ---------------------------------------------------------------- the application
def build_app(cfg: ServeConfig) -> serve.Application:
    """The bound application: ingress -> scorer (+ generator). Replicas, resources and
    autoscaling come from the config; host/port are Serve's http_options, set by the caller."""
    scaling = ({"autoscaling_config": dict(cfg.autoscaling)} if cfg.autoscaling
               else {"num_replicas": cfg.scorer_replicas})
    # Replicas read the models themselves (URIs, hub ids): they need the credentials too.
    env = {"runtime_env": {"env_vars": dict(cfg.env_vars)}} if cfg.env_vars else {}
    scorer = Scorer.options(
        **scaling,
        # Counted in requests, each holding several pairs: well above the batch size so
        # batches fill from many requests at once (and the fair batcher sees them all).
        max_ongoing_requests=4 * cfg.max_batch_size,
        ray_actor_options={"num_cpus": cfg.scorer_num_cpus, "num_gpus": cfg.scorer_num_gpus, **env},
    ).bind(cfg)
    generator = None
    if cfg.generator:
        generator = Generator.options(
            num_replicas=cfg.generator_replicas, max_ongoing_requests=64,
            ray_actor_options={"num_cpus": cfg.generator_num_cpus,
                               "num_gpus": cfg.generator_num_gpus, **env},
        ).bind(cfg)
    return Selector.options(
        num_replicas=cfg.ingress_replicas, max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus, **env},
    ).bind(cfg, scorer, generator)


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """Serve-config `args` (nested or dotted `bestofl serve` keys; strings as `serve run
    ... key=value` passes them) over conf/serve.yaml and the file in `config`, if any."""
    args = dict(args)
    config_file = args.pop("config", None)
    overrides = OmegaConf.create()
    for key, value in args.items():
        OmegaConf.update(overrides, key, value, merge=True)
    return load_config("serve", config_file, OmegaConf.to_container(overrides))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Import path for `serve run` / `serve deploy` / RayService configs
    (cluster/serve-config.yaml); host and port come from the config's http_options."""
    return build_app(config_from_args(args))
