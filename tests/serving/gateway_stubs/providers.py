"""`OpenAIStub`, `AzureStub`, `AnthropicStub`: the providers' public wire formats as their
API references describe them (paths, auth headers, request validation, response and
streaming shapes, error shapes), answering deterministically (`replies`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.serving.gateway_stubs.replies import generate, prompt_of_chat, reply_text, tokens_of
from tests.serving.gateway_stubs.servers import Received, Server, openai_error, sse


@dataclass
class ProviderFaults:
    status: int | None = None
    error_event_first: bool = False  # anthropic: an `event: error` right after 200


class _ProviderBase(Server):
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
            return openai_error(
                401,
                "Incorrect API key provided: sk-***.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.faults.status is not None:
            return openai_error(self.faults.status, "injected", "server_error")
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
            return openai_error(400, "you must provide a model parameter", "invalid_request_error")
        if chat and not (isinstance(body.get("messages"), list) and body["messages"]):
            return openai_error(400, "'messages' is a required property", "invalid_request_error")
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
            sse(
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
            sse(
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
            return openai_error(self.faults.status, "injected", "server_error")
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
