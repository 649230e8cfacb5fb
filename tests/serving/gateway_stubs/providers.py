"""Local stand-ins for the upstreams the gateway talks to, on 127.0.0.1 ephemeral ports.

- `Engine`: a tiny vLLM-like OpenAI server with fault knobs the tests flip per request
  (status codes, a stream cut after N events, slowness) and a record of what it received.
- `OpenAIStub`, `AzureStub`, `AnthropicStub`: the providers' public wire formats as their
  API references describe them (paths, auth headers, request validation, response and
  streaming shapes, error shapes), answering deterministically: the reply to a prompt is
  `reply_text(prompt)`, cut by `max_tokens` and stop sequences as a real model would be.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

WORDS_PER_REPLY = 12


def reply_text(prompt: str) -> str:
    """The deterministic completion every stub gives for `prompt`."""
    seed = sum(prompt.encode()) % 97
    return " ".join(f"w{(seed + i) % 50}" for i in range(WORDS_PER_REPLY))


def tokens_of(text: str) -> list[str]:
    """Whitespace tokens, each but the first carrying its leading space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def generate(
    prompt: str, max_tokens: int | None, stop: list[str]
) -> tuple[list[str], str, str | None]:
    """(tokens, finish, matched stop sequence) with finish in {stop, length, stop_sequence}."""
    text = reply_text(prompt)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            return tokens_of(text[:i]) if i else [], "stop_sequence", s
    toks = tokens_of(text)
    if max_tokens is not None and max_tokens < len(toks):
        return toks[:max_tokens], "length", None
    return toks, "stop", None


def prompt_of_chat(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
    return "\n".join(parts)


async def start_app(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if ssl_context is not None:  # the certificate names localhost
        return runner, f"https://localhost:{port}"
    return runner, f"http://127.0.0.1:{port}"


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _openai_error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class _Server:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> _Server:
        self.runner, self.url = await start_app(self.app(), ssl_context)
        return self

    async def stop(self) -> None:
        if isinstance(self, Engine):
            self._unstall.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _record(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _openai_error(400, "body must be a JSON object", "invalid_request_error")
        self.received.append(
            Received(request.path, dict(request.query), dict(request.headers), body)
        )
        return body


# vLLM endpoints besides chat, completions and embeddings, and the events ending streams.
OTHER_VLLM_PATHS = (
    "/v1/responses", "/v1/messages", "/v1/messages/count_tokens", "/pooling", "/classify",
    "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/tokenize", "/detokenize",
    "/v1/chat/completions/render", "/v1/completions/render", "/v1/messages/render",
    "/v1/responses/render", "/v1/chat/completions/batch", "/generative_scoring",
    "/cohere/v2/chat", "/v2/embed",
)  # fmt: skip
STREAM_ENDS = {
    "/v1/responses": "response.completed",
    "/v1/messages": "message_stop",
    "/cohere/v2/chat": "message-end",
}


@dataclass
class EngineFaults:
    status: int | None = None  # answer every inference request with this status
    error_body: dict[str, Any] | None = None  # ... with this body (default: a generic error)
    cut_after: int | None = None  # streams: close the connection after this many events
    delay_s: float = 0.0  # before the response starts
    chunk_delay_s: float = 0.0  # between stream events
    error_event_first: bool = False  # streams: 200, then an error event as the first event
    error_event: dict[str, Any] | None = None  # the error event's data (default: a 500's)
    stall_after: int | None = None  # streams: after this many events, silence (not closed)


class Engine(_Server):
    """A vLLM-like OpenAI server (no auth). `system_fingerprint` carries its name."""

    def __init__(self, name: str = "engine", model: str = "llama-3-8b") -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.faults = EngineFaults()
        self.in_flight = 0
        self.waiting = 0.0  # what /metrics reports as vllm:num_requests_waiting
        self._unstall = asyncio.Event()  # set by stop(): stalled handlers end

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/metrics", self._metrics)
        for path in OTHER_VLLM_PATHS:
            app.router.add_post(path, self._other)
        return app

    async def _other(self, request: web.Request) -> web.StreamResponse:
        """vLLM's other endpoints: an echo of what arrived, streamed for Responses and
        Messages when asked (each with its own final event)."""
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        f = self.faults
        if f.status is not None:
            return _openai_error(f.status, f"injected HTTP {f.status}", "server_error")
        answer = {"object": "echo", "path": request.path, "model": body.get("model"),
                  "engine": self.name}  # fmt: skip
        if not body.get("stream") or request.path not in STREAM_ENDS:
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [("start", answer), ("delta", {"text": "hi"}), ("delta", {"text": " there"})]
        events.append((STREAM_ENDS[request.path], {}))
        for n, (kind, data) in enumerate(events):
            if f.cut_after is not None and n >= f.cut_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )
        await resp.write_eof()
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="{self.model}"}} {self.waiting}\n'
        )
        return web.Response(text=text)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        self.in_flight += 1
        try:
            return await self._answer(request, body, chat)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        f = self.faults
        if f.delay_s:
            await asyncio.sleep(f.delay_s)
        if f.status is not None:
            if f.error_body is not None:
                return web.json_response(f.error_body, status=f.status)
            return _openai_error(f.status, f"injected HTTP {f.status}", "server_error")
        if body.get("model") != self.model:
            return _openai_error(
                404, f"The model `{body.get('model')}` does not exist.", "NotFoundError"
            )
        prompt = prompt_of_chat(body["messages"]) if chat else str(body.get("prompt", ""))
        stop = body.get("stop") or []
        toks, finish, _ = generate(
            prompt, body.get("max_tokens"), [stop] if isinstance(stop, str) else stop
        )
        finish = "length" if finish == "length" else "stop"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(toks),
            "total_tokens": len(prompt.split()) + len(toks),
        }
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(toks)}
            else:
                choice["text"] = "".join(toks)
            return web.json_response(
                {
                    "id": f"cmpl-{self.name}",
                    "object": obj,
                    "created": created,
                    "model": self.model,
                    "system_fingerprint": self.name,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if f.error_event_first:
            await resp.write(
                _sse(
                    f.error_event
                    or {
                        "error": {
                            "message": "engine error",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
            )
            return resp
        events = []
        for i, tok in enumerate([None, *toks]):
            if chat:
                delta = {"role": "assistant", "content": ""} if tok is None else {"content": tok}
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": tok or "", "logprobs": None, "finish_reason": None}
            if i == len(toks):
                choice["finish_reason"] = finish
            events.append(
                {
                    "id": f"cmpl-{self.name}",
                    "object": obj + (".chunk" if chat else ""),
                    "created": created,
                    "model": self.model,
                    "system_fingerprint": self.name,
                    "choices": [choice],
                }
            )
        options = body.get("stream_options") or {}
        if options.get("include_usage"):  # as vLLM: one more event, no choices
            events.append({**events[0], "choices": [], "usage": usage})
        try:
            for n, ev in enumerate(events):
                if f.cut_after is not None and n >= f.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                if f.stall_after is not None and n >= f.stall_after:
                    await self._unstall.wait()
                    return resp
                await resp.write(_sse(ev))
                if f.chunk_delay_s:
                    await asyncio.sleep(f.chunk_delay_s)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            pass  # the gateway went away (client closed the stream)
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        if self.faults.status is not None:
            return _openai_error(self.faults.status, "injected", "server_error")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(x))]}
            for i, x in enumerate(inputs)
        ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model,
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


@dataclass
class ProviderFaults:
    status: int | None = None
    error_event_first: bool = False  # anthropic: an `event: error` right after 200


class _ProviderBase(_Server):
    default_model = "gpt-4o-mini"

    def __init__(self, api_key: str = "sk-test", model: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.model = model or self.default_model
        self.faults = ProviderFaults()


class OpenAIStub(_ProviderBase):
    """api.openai.com/v1: `Authorization: Bearer`, chat/completions, completions, embeddings."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        return app

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API: `input` in, an `output` message out; streams as typed events
        ending with `response.completed`."""
        denied = self._auth(request)
        if denied:
            return denied
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("input")
        prompt = text if isinstance(text, str) else json.dumps(text)
        reply = reply_text(prompt)
        done = {
            "id": "resp_stub", "object": "response", "status": "completed",
            "model": body.get("model"),
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": reply}]}],
        }  # fmt: skip
        if not body.get("stream"):
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [("response.created", {"response": {**done, "status": "in_progress"}})]
        events += [("response.output_text.delta", {"delta": t}) for t in tokens_of(reply)]
        events.append(("response.completed", {"response": done}))
        for kind, data in events:
            await resp.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
            )
        await resp.write_eof()
        return resp

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _openai_error(
                401,
                "Incorrect API key provided: sk-***.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.faults.status is not None:
            return _openai_error(self.faults.status, "injected", "server_error")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        denied = self._auth(request)
        if denied:
            return denied
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    def _validate(self, body: dict[str, Any], chat: bool) -> web.Response | None:
        if not isinstance(body.get("model"), str):
            return _openai_error(400, "you must provide a model parameter", "invalid_request_error")
        if chat and not (isinstance(body.get("messages"), list) and body["messages"]):
            return _openai_error(400, "'messages' is a required property", "invalid_request_error")
        return None

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        denied = self._auth(request)
        if denied:
            return denied
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        invalid = self._validate(body, chat)
        if invalid:
            return invalid
        model = body.get("model") or self.model
        return await openai_answer(request, body, chat, model, "fp_stub")


async def openai_answer(
    request: web.Request, body: dict[str, Any], chat: bool, model: str, fingerprint: str
) -> web.StreamResponse:
    prompt = prompt_of_chat(body["messages"]) if chat else str(body.get("prompt", ""))
    stop = body.get("stop") or []
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    toks, finish, _ = generate(prompt, max_tokens, [stop] if isinstance(stop, str) else stop)
    finish = "length" if finish == "length" else "stop"
    usage = {
        "prompt_tokens": len(prompt.split()),
        "completion_tokens": len(toks),
        "total_tokens": len(prompt.split()) + len(toks),
    }
    created = int(time.time())
    if not body.get("stream"):
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": "".join(toks), "refusal": None}
        else:
            choice["text"] = "".join(toks)
        return web.json_response(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [choice],
                "usage": usage,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if chat else "text_completion"
    for i, tok in enumerate([None, *toks]):
        if chat:
            delta = {"role": "assistant", "content": ""} if tok is None else {"content": tok}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": 0, "text": tok or "", "logprobs": None, "finish_reason": None}
        if i == len(toks):
            choice["finish_reason"] = finish
        await resp.write(
            _sse(
                {
                    "id": "chatcmpl-stub",
                    "object": obj,
                    "created": created,
                    "model": model,
                    "system_fingerprint": fingerprint,
                    "choices": [choice],
                }
            )
        )
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        await resp.write(
            _sse(
                {
                    "id": "chatcmpl-stub",
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


class AzureStub(_ProviderBase):
    """Azure OpenAI: /openai/deployments/{deployment}/{op}?api-version=..., `api-key` header."""

    def __init__(self, api_key: str = "sk-test", model: str | None = None) -> None:
        super().__init__(api_key, model)
        self.deployments = {"gpt4o-prod": "gpt-4o-2024-08-06"}  # deployment -> model

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/completions", self._completions)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if request.headers.get("api-key") != self.api_key:
            return web.json_response(
                {
                    "error": {
                        "code": "401",
                        "message": (AZURE_401),
                    }
                },
                status=401,
            )
        if "api-version" not in request.query:
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        deployment = request.match_info["deployment"]
        if deployment not in self.deployments:
            return web.json_response(
                {
                    "error": {
                        "code": "DeploymentNotFound",
                        "message": ("The API deployment for this resource does not exist."),
                    }
                },
                status=404,
            )
        if self.faults.status is not None:
            return _openai_error(self.faults.status, "injected", "server_error")
        body = await self._record(request)
        if isinstance(body, web.Response):
            return body
        return await openai_answer(request, body, chat, self.deployments[deployment], "fp_azure")


AZURE_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}


def _anthropic_error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": type_, "message": message}}, status=status
    )


class AnthropicStub(_ProviderBase):
    """Anthropic Messages API: POST /v1/messages, `x-api-key`, `anthropic-version`."""

    default_model = "claude-3-5-haiku-20241022"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        return app

    async def _count_tokens(self, request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") != self.api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        body = await request.json()
        self.received.append(
            Received(request.path, dict(request.query), dict(request.headers), body)
        )
        return web.json_response({"input_tokens": len(prompt_of_chat(body["messages"]).split())})

    def _validate(self, body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        mt = body.get("max_tokens")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            c = m.get("content")
            if isinstance(c, str):
                if not c:
                    return f"messages.{i}: text content blocks must be non-empty"
            elif isinstance(c, list):
                for b in c:
                    if not isinstance(b, dict) or b.get("type") not in ("text", "image"):
                        return f"messages.{i}.content: unsupported block"
                    if b.get("type") == "text" and not b.get("text"):
                        return f"messages.{i}: text content blocks must be non-empty"
            else:
                return f"messages.{i}.content: Input should be a valid string or list"
            if i and messages[i - 1].get("role") == m.get("role"):
                return "messages: roles must alternate between 'user' and 'assistant'"
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            return "system: Input should be a valid string or list"
        t = body.get("temperature")
        if t is not None and not (isinstance(t, int | float) and 0 <= t <= 1):
            return "temperature: Input should be less than or equal to 1"
        stop = body.get("stop_sequences")
        if stop is not None and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)
        ):
            return "stop_sequences: Input should be a valid list of strings"
        for key in body:
            if key not in (
                "model",
                "max_tokens",
                "messages",
                "system",
                "temperature",
                "top_p",
                "top_k",
                "stop_sequences",
                "stream",
                "metadata",
            ):
                return f"{key}: Extra inputs are not permitted"
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-api-key") != self.api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _anthropic_error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if self.faults.status is not None:
            return _anthropic_error(self.faults.status, "overloaded_error", "Overloaded")
        try:
            body = await request.json()
        except ValueError:
            return _anthropic_error(400, "invalid_request_error", "invalid JSON")
        problem = self._validate(body) if isinstance(body, dict) else "body must be an object"
        if problem:
            return _anthropic_error(400, "invalid_request_error", problem)
        self.received.append(
            Received(request.path, dict(request.query), dict(request.headers), body)
        )
        system = body.get("system") or ""
        if isinstance(system, list):
            system = "\n".join(b.get("text", "") for b in system)
        prompt = (
            "\n".join([system, prompt_of_chat(body["messages"])])
            if system
            else prompt_of_chat(body["messages"])
        )
        toks, finish, matched = generate(
            prompt, body["max_tokens"], body.get("stop_sequences") or []
        )
        input_tokens = len(prompt.split())
        msg_id = "msg_01StubStubStubStubStub"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": "".join(toks)}],
                    "stop_reason": ANTHROPIC_STOP[finish],
                    "stop_sequence": matched,
                    "usage": {"input_tokens": input_tokens, "output_tokens": len(toks)},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        if self.faults.error_event_first:
            await event(
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
            return resp
        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": body["model"],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        await event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        await event("ping", {"type": "ping"})
        for tok in toks:
            await event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": tok},
                },
            )
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": ANTHROPIC_STOP[finish], "stop_sequence": matched},
                "usage": {"output_tokens": len(toks)},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp
