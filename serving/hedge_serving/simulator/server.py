"""HTTP face of the engine simulator: vLLM's OpenAI API, /health, /metrics and a fault switch.

`start_simulator(config, host, port)` binds one simulator and returns a `RunningSimulator`;
many can share one process and event loop (the local cluster's pod runner starts one per engine
pod), as every piece of state hangs off the instance.

Routes:
    GET  /v1/models                model list in vLLM's shape (served names, then LoRA adapters)
    POST /v1/chat/completions      chat, streamed (SSE) or not
    POST /v1/completions           text completion, streamed (SSE) or not
    POST /v1/embeddings            deterministic unit vectors, float or base64
    GET  /health                   200 empty; 503 while loading or with `fail_health`
    GET  /metrics                  Prometheus text, vLLM's metric names
    GET  /version                  {"version": ...}
    GET|POST|DELETE /_hedge/sim/faults   read, merge-update, reset the injected faults
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from hedge_core.contracts import METRICS_PATH
from hedge_serving import __version__
from hedge_serving.simulator.config import Faults, SimulatorConfig
from hedge_serving.simulator.engine import (
    Engine,
    Sequence,
    embedding_vector,
    float32_base64,
    truncate_and_normalize,
)
from hedge_serving.simulator.protocol import (
    ApiError,
    GenerationRequest,
    bad_request,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_json_object,
)

__all__ = ["Faults", "RunningSimulator", "SimulatorConfig", "build_app", "start_simulator"]

log = logging.getLogger("hedge.simulator")

ENGINE_KEY = web.AppKey("engine", Engine)
# vLLM's is `vllm-<version>-<hash>`; the simulator says what it is.
SYSTEM_FINGERPRINT = f"hedge-sim-{__version__}"
FAULTS_PATH = "/_hedge/sim/faults"
# Long prompts are the point of the prefix-cache model; aiohttp's 1 MiB default is too small.
MAX_BODY_BYTES = 64 * 1024 * 1024
# After draining, how long aiohttp waits for handlers before cancelling them on stop().
_SHUTDOWN_TIMEOUT_S = 0.05
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, dumps=_dumps)


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as vLLM's JSON error, never as a traceback."""
    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Routing errors leave FastAPI (vLLM's server) as `{"detail": ...}`, not the API shape.
        return web.json_response({"detail": exc.reason}, status=exc.status, dumps=_dumps)
    except Exception:
        log.exception("simulator handler failed on %s %s", request.method, request.path)
        return _error_response(ApiError(500, "Internal server error"))


class _Dropped(Exception):
    """Raised to cut a response on purpose (the `drop_after_chunks` fault)."""


def _cut_connection(request: web.Request) -> None:
    # close() rather than abort(): data already written still reaches the client, then EOF
    # arrives where the rest of the body (or the chunked terminator) should have been.
    if request.transport is not None:
        request.transport.close()


class _Handlers:
    """Route handlers bound to one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.config

    # --- plain endpoints ---------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.engine.loading or self.engine.faults.fail_health:
            return web.Response(status=503)
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.engine.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"hedge-sim-{__version__}"})

    async def models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        root = self.config.model_path or self.config.model_name
        cards = [
            _model_card(name, created, root, None, self.config.max_model_len)
            for name in self.config.served_model_names
        ]
        cards += [
            _model_card(name, created, path, self.config.model_name, None)
            for name, path in self.config.lora_modules.items()
        ]
        return web.json_response({"object": "list", "data": cards}, dumps=_dumps)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.faults.to_json(), dumps=_dumps)

    async def post_faults(self, request: web.Request) -> web.Response:
        changes = parse_json_object(await request.read())
        try:
            faults = self.engine.faults.updated(changes)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        self.engine.set_faults(faults)
        log.info("simulator %s faults now %s", self.config.model_name, faults)
        return web.json_response(faults.to_json(), dumps=_dumps)

    async def delete_faults(self, request: web.Request) -> web.Response:
        """Back to the faults the simulator was started with."""
        self.engine.set_faults(self.config.faults)
        return web.json_response(self.config.faults.to_json(), dumps=_dumps)

    # --- inference ---------------------------------------------------------------------------

    def _precheck(self) -> None:
        if self.engine.loading:
            raise ApiError(503, "The model is still loading")

    def _resolve_model(self, requested: str | None) -> str:
        model = self.engine.resolve_model(requested)
        if model is None:
            names = ", ".join(self.engine.served_names())
            raise ApiError(
                404,
                f"The model `{requested}` does not exist. Valid aliases: {names}.",
                "NotFoundError",
                "model",
            )
        return model

    def _inject_error(self) -> None:
        if self.engine.draw_error():
            raise ApiError(self.engine.faults.error_status, "Simulated engine failure")

    def _limits(self, req: GenerationRequest) -> list[int]:
        """Per prompt, how many tokens may be generated; 400 when the context is too long."""
        max_len = self.config.max_model_len
        if req.max_tokens is not None and req.max_tokens > max_len:
            raise bad_request(
                f"max_tokens={req.max_tokens} cannot be greater than max_model_len={max_len}. "
                f"Please request fewer output tokens.",
                "max_tokens",
            )
        limits = []
        for tokens in req.prompts:
            prompt_len = len(tokens)
            wanted = req.max_tokens or self.config.default_max_tokens
            if prompt_len >= max_len:
                raise bad_request(
                    f"This model's maximum context length is {max_len} tokens. However, your "
                    f"prompt contains at least {prompt_len} input tokens, which exceeds this "
                    "limit even without any output tokens. Please reduce the length of the "
                    "input prompt.",
                    "input_tokens",
                )
            if req.max_tokens and prompt_len + wanted > max_len:
                raise bad_request(
                    f"This model's maximum context length is {max_len} tokens. However, you "
                    f"requested {prompt_len + wanted} tokens ({prompt_len} in the messages, "
                    f"{wanted} in the completion). Please reduce the length of the messages "
                    "or completion.",
                    "max_tokens",
                )
            limits.append(min(wanted, max_len - prompt_len))
        return limits

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_chat_request)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_completion_request)

    async def _generate(
        self, request: web.Request, parse: Callable[[dict[str, Any]], GenerationRequest]
    ) -> web.StreamResponse:
        self._precheck()
        req = parse(parse_json_object(await request.read()))
        model = self._resolve_model(req.model)
        limits = self._limits(req)
        self._inject_error()
        run = _Generation(self.engine, request, req, model, limits)
        return await (run.stream() if req.stream else run.complete())

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self._precheck()
        req = parse_embedding_request(
            parse_json_object(await request.read()), self.config.embedding_dim
        )
        model = self._resolve_model(req.model)
        for tokens in req.inputs:
            if len(tokens) > self.config.max_model_len:
                raise bad_request(
                    f"This model's maximum context length is {self.config.max_model_len} tokens. "
                    f"However, you requested {len(tokens)} tokens in the input for embedding "
                    "generation. Please reduce the length of the input.",
                    "input_tokens",
                )
        self._inject_error()
        engine = self.engine
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        async with engine.admitted():
            queued = loop.time() - arrival
            engine.metrics.prompt_tokens.inc(req.prompt_tokens)
            await engine.wait_while_hung()
            # Pooling models run prefill only and do not reuse the prefix cache.
            await asyncio.sleep(engine.ttft_seconds(req.prompt_tokens))
            data = []
            for i, tokens in enumerate(req.inputs):
                vector = embedding_vector(tokens, self.config.embedding_dim, self.config.seed)
                if req.dimensions is not None:
                    vector = truncate_and_normalize(vector, req.dimensions)
                encoded: Any = vector
                if req.encoding_format == "base64":
                    encoded = base64.b64encode(float32_base64(vector)).decode()
                data.append({"index": i, "object": "embedding", "embedding": encoded})
            engine.metrics.request_queue_time.observe(queued)
            engine.metrics.e2e_request_latency.observe(loop.time() - arrival)
            engine.metrics.request_success["stop"].inc()
        if engine.faults.drop_after_chunks == 0:
            _cut_connection(request)
            return web.Response()
        body = {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": req.prompt_tokens,
                "total_tokens": req.prompt_tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
        return web.json_response(body, dumps=_dumps)


def _model_card(
    name: str, created: int, root: str, parent: str | None, max_model_len: int | None
) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


class _Generation:
    """One chat or completion request through admission, prefill and decode."""

    def __init__(
        self,
        engine: Engine,
        request: web.Request,
        req: GenerationRequest,
        model: str,
        limits: list[int],
    ) -> None:
        self.engine = engine
        self.request = request
        self.req = req
        self.model = model
        self.limits = limits
        self.chat = req.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.loop = asyncio.get_running_loop()
        self.arrival = self.loop.time()
        self.queued = 0.0
        self.first_token_at = 0.0
        # Faults that shape a response are read once, when it starts.
        self.drop_after = engine.faults.drop_after_chunks
        self.sent_events = 0

    def _sequences(self) -> list[Sequence]:
        r = self.req
        explicit = r.max_tokens is not None
        return self.engine.new_sequences(r.prompts, r.n, self.limits, explicit, r.stop, r.seed)

    async def _prefill(self) -> None:
        """Called holding a slot: count queueing, look up the cache, wait out TTFT."""
        self.queued = self.loop.time() - self.arrival
        match = self.engine.prefill(self.req.prompts)
        await self.engine.wait_while_hung()
        await asyncio.sleep(self.engine.ttft_seconds(match.uncached_tokens))
        self.first_token_at = self.loop.time()
        self.engine.metrics.time_to_first_token.observe(self.first_token_at - self.arrival)

    def _finish(self, reason: str, steps: int) -> None:
        metrics = self.engine.metrics
        end = self.loop.time()
        metrics.request_queue_time.observe(self.queued)
        metrics.e2e_request_latency.observe(end - self.arrival)
        if steps > 1:
            metrics.time_per_output_token.observe((end - self.first_token_at) / (steps - 1))
        metrics.request_success[reason].inc()

    def _usage(self, completion_tokens: int) -> dict[str, Any]:
        prompt_tokens = self.req.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
        }

    # --- non-streamed ------------------------------------------------------------------------

    async def complete(self) -> web.StreamResponse:
        metrics = self.engine.metrics
        try:
            async with self.engine.admitted():
                await self._prefill()
                sequences = self._sequences()
                while not all(s.finished for s in sequences):
                    for s in sequences:
                        if not s.finished:
                            s.step()
                steps = max(s.generated for s in sequences)
                itl = self.engine.itl_seconds()
                if steps > 1:
                    # One sleep for the whole decode: same timing, far fewer timer wake-ups.
                    await asyncio.sleep(itl * (steps - 1))
                    gap = (self.loop.time() - self.first_token_at) / (steps - 1)
                    for _ in range(steps - 1):
                        metrics.inter_token_latency.observe(gap)
                generated = sum(s.generated for s in sequences)
                metrics.generation_tokens.inc(generated)
                reason = sequences[0].finish_reason or "stop"
                self._finish(reason, steps)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler); vLLM counts an abort.
            metrics.request_success["abort"].inc()
            raise
        if self.drop_after == 0:
            _cut_connection(self.request)
            return web.Response()
        return web.json_response(self._body(sequences, generated), dumps=_dumps)

    def _body(self, sequences: list[Sequence], generated: int) -> dict[str, Any]:
        """vLLM 0.32's response: its own extension fields are present, as null."""
        choices: list[dict[str, Any]] = []
        for s in sequences:
            choice: dict[str, Any] = {"index": s.index}
            if self.chat:
                choice["message"] = {
                    "role": "assistant", "content": s.text, "refusal": None,
                    "annotations": None, "audio": None, "function_call": None, "reasoning": None,
                }  # fmt: skip
            else:
                choice["text"] = s.text
            choice.update(
                logprobs=None, finish_reason=s.finish_reason, stop_reason=s.stop_reason,
                token_ids=None, routed_experts=None,
            )  # fmt: skip
            if not self.chat:
                choice.update(prompt_logprobs=None, prompt_token_ids=None)
            choices.append(choice)
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": {**self._usage(generated), "completion_tokens_details": None},
        }
        if self.chat:
            body.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        body.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return body

    # --- streamed ----------------------------------------------------------------------------

    async def _send(self, resp: web.StreamResponse, payload: dict[str, Any] | str) -> None:
        if self.drop_after is not None and self.sent_events >= self.drop_after:
            raise _Dropped
        data = payload if isinstance(payload, str) else _dumps(payload)
        await resp.write(f"data: {data}\n\n".encode())
        self.sent_events += 1

    def _chunk(
        self, index: int, delta: dict[str, Any] | str, sequence: Sequence | None, generated: int
    ) -> dict[str, Any]:
        """One SSE chunk, keyed as vLLM 0.32 keys it: a chat stream opens with a role chunk
        (`sequence` None) carrying the prompt fields; the chunk that finishes a choice adds
        its `stop_reason` and, unless a usage chunk follows, the `system_fingerprint`."""
        finished = sequence is not None and sequence.finished
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["delta"] = delta
            choice.update(logprobs=None, finish_reason=sequence.finish_reason if sequence else None)
            if finished:
                choice["stop_reason"] = sequence.stop_reason if sequence else None
            if sequence is not None:
                choice["token_ids"] = None
        else:
            choice.update(
                text=delta, logprobs=None,
                finish_reason=sequence.finish_reason if sequence else None,
                stop_reason=sequence.stop_reason if sequence else None,
                prompt_token_ids=None, token_ids=None,
            )  # fmt: skip
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.chat and sequence is None:
            chunk.update(prompt_token_ids=None, prompt_text=None)
        if self.req.include_usage and self.req.continuous_usage:
            chunk["usage"] = self._stream_usage(generated)
        if finished and not self.req.include_usage:  # else the usage chunk carries it
            chunk["system_fingerprint"] = SYSTEM_FINGERPRINT
        return chunk

    def _stream_usage(self, completion_tokens: int) -> dict[str, Any]:
        # Streamed usage has no *_details fields in vLLM.
        prompt_tokens = self.req.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
        }

    async def stream(self) -> web.StreamResponse:
        metrics = self.engine.metrics
        # Headers leave at once, as from vLLM: the first byte does not wait for the queue.
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        generated = 0
        try:
            await resp.prepare(self.request)
            async with self.engine.admitted():
                await self._prefill()
                sequences = self._sequences()
                if self.chat:
                    for s in sequences:
                        role = {"role": "assistant", "content": ""}
                        await self._send(resp, self._chunk(s.index, role, None, generated))
                itl = self.engine.itl_seconds()
                step = 0
                last = self.first_token_at
                while True:
                    if step:
                        # Sleep to an absolute deadline so per-token overhead does not add up.
                        deadline = self.first_token_at + step * itl
                        await asyncio.sleep(max(deadline - self.loop.time(), 0.0))
                        now = self.loop.time()
                        metrics.inter_token_latency.observe(now - last)
                        last = now
                    live = [s for s in sequences if not s.finished]
                    for s in live:
                        text = s.step()
                        generated += 1
                        delta: dict[str, Any] | str = {"content": text} if self.chat else text
                        await self._send(resp, self._chunk(s.index, delta, s, generated))
                    metrics.generation_tokens.inc(len(live))
                    step += 1
                    if all(s.finished for s in sequences):
                        break
                if self.req.include_usage:
                    await self._send(
                        resp,
                        {
                            "id": self.id,
                            "object": "chat.completion.chunk" if self.chat else "text_completion",
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": self._stream_usage(generated),
                            "system_fingerprint": SYSTEM_FINGERPRINT,
                        },
                    )
                await self._send(resp, "[DONE]")
                self._finish(sequences[0].finish_reason or "stop", step)
        except _Dropped:
            metrics.request_success["abort"].inc()
            _cut_connection(self.request)
            return resp
        except ConnectionResetError:
            metrics.request_success["abort"].inc()  # the client went away mid-stream
            return resp
        except asyncio.CancelledError:
            metrics.request_success["abort"].inc()
            raise
        await resp.write_eof()
        return resp


def build_app(engine: Engine) -> web.Application:
    """The aiohttp application serving one engine."""
    app = web.Application(middlewares=[_error_middleware], client_max_size=MAX_BODY_BYTES)
    app[ENGINE_KEY] = engine
    h = _Handlers(engine)
    app.router.add_get("/health", h.health)
    app.router.add_get(METRICS_PATH, h.metrics)
    app.router.add_get("/version", h.version)
    app.router.add_get("/v1/models", h.models)
    app.router.add_post("/v1/chat/completions", h.chat_completions)
    app.router.add_post("/v1/completions", h.completions)
    app.router.add_post("/v1/embeddings", h.embeddings)
    app.router.add_get(FAULTS_PATH, h.get_faults)
    app.router.add_post(FAULTS_PATH, h.post_faults)
    app.router.add_delete(FAULTS_PATH, h.delete_faults)
    return app


class RunningSimulator:
    """A simulator bound to a socket. `stop()` releases the socket and ends in-flight requests."""

    def __init__(self, engine: Engine, runner: web.AppRunner, host: str, port: int) -> None:
        self.engine = engine
        self.config = engine.config
        self.host = host
        self.port = port
        self._runner = runner
        self._stopped = False

    @property
    def url(self) -> str:
        """`http://host:port`, for /health, /metrics and the admin endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return self.url + "/v1"

    @property
    def faults(self) -> Faults:
        return self.engine.faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change faults in-process, e.g. `running.set_faults(fail_health=True)`."""
        faults = dataclasses.replace(self.engine.faults, **changes)
        self.engine.set_faults(faults)
        return faults

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting connections, give in-flight requests `grace_s` to finish, then end."""
        if self._stopped:
            return
        self._stopped = True
        for site in list(self._runner.sites):
            await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        slots = self.engine.slots
        while (slots.running or slots.waiting) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await self._runner.cleanup()


async def start_simulator(
    config: SimulatorConfig,
    host: str | None = None,
    port: int | None = None,
    *,
    access_log: logging.Logger | None = None,
) -> RunningSimulator:
    """Start one simulator on `host:port` (defaults from the config; port 0 picks a free one)."""
    engine = Engine(config)
    runner = web.AppRunner(
        build_app(engine),
        access_log=access_log,
        handle_signals=False,
        # A client that disconnects cancels its handler, freeing the slot as vLLM aborts it.
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    bind_host = config.host if host is None else host
    bind_port = config.port if port is None else port
    site = web.TCPSite(runner, bind_host, bind_port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    engine.mark_started()
    actual_port = runner.addresses[0][1] if runner.addresses else bind_port
    return RunningSimulator(engine, runner, bind_host, int(actual_port))
