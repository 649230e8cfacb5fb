"""`Engine`: a tiny vLLM-like OpenAI server with fault knobs the tests flip per request
(status codes, a stream cut after N events, slowness, stalls) and a record of what it
received."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.serving.gateway_stubs.replies import generate, prompt_of_chat
from tests.serving.gateway_stubs.servers import Server, openai_error, sse

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


class Engine(Server):
    """A vLLM-like OpenAI server (no auth). `system_fingerprint` carries its name."""

    def __init__(self, name: str = "engine", model: str = "llama-3-8b") -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.faults = EngineFaults()
        self.in_flight = 0
        self.waiting = 0.0  # what /metrics reports as vllm:num_requests_waiting
        self._unstall = asyncio.Event()  # set by stop(): stalled handlers end

    async def stop(self) -> None:
        self._unstall.set()
        await super().stop()

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
            return openai_error(f.status, f"injected HTTP {f.status}", "server_error")
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
            return openai_error(f.status, f"injected HTTP {f.status}", "server_error")
        if body.get("model") != self.model:
            return openai_error(
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
                sse(
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
                await resp.write(sse(ev))
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
            return openai_error(self.faults.status, "injected", "server_error")
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
