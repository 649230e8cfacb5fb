"""Traffic for the e2e tests: a fallback provider to spill to, and a bounded client load.

- `FallbackProvider`: the OpenAI API stub (tests/serving/gateway_stubs) on 127.0.0.1, served
  from an event loop on its own thread, so blocking tests can point a ModelDeployment at it.
- `Load`: non-streamed chat completions through the gateway from a few threads with the
  official `openai` SDK, bounded in count and time; it records who answered each request and
  every failure the client saw (the SDK does not retry).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import openai

from tests.serving.gateway_stubs import OpenAIStub
from tests.serving.gateway_stubs.harness import LOOPBACK_EGRESS_FLAGS

# The stub provider is on loopback over http: the e2e tests' platform admin allows that, as
# flags of a `hedge gateway` process or as the chart's `gateway.egress` values.
EGRESS_ARGS = LOOPBACK_EGRESS_FLAGS
EGRESS_VALUES = {
    "allowInsecureHTTP": ["127.*", "localhost"],
    "allowedCIDRs": ["127.0.0.0/8", "::1/128"],
}

FALLBACK_MODEL = "gpt-4o-mini"


class FallbackProvider:
    """The OpenAI API stub on 127.0.0.1, served from an event loop on its own thread."""

    def __init__(self, api_key: str, model: str = FALLBACK_MODEL) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stub = OpenAIStub(api_key=api_key, model=model)
        self._run(self.stub.start())

    @property
    def url(self) -> str:
        """The base URL a client (or a ModelDeployment's provider) uses: `…/v1`."""
        return self.stub.url + "/v1"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self._run(self.stub.stop())
        # Let closed transports run their connection_lost callbacks before the loop closes.
        for _ in range(10):
            self._run(asyncio.sleep(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def chat(client: openai.OpenAI, model: str, prompt: str) -> Any:
    """One short chat completion, with the raw response (for the x-hedge-* headers)."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=4
    )


@dataclass(frozen=True)
class Answer:
    start: float  # time.monotonic()
    end: float
    served_by: str  # x-hedge-served-by
    reason: str | None  # x-hedge-fallback-reason
    model: str  # the model the answer names


class Load:
    """Non-streamed chat completions from a few threads at once, bounded in count and time.

    Every request has its own prompt, so prefix affinity does not pin the load to one pod.
    Records who answered each request and every failure (the SDK does not retry)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        threads: int,
        max_requests: int,
        max_seconds: float,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self._max_requests = max_requests
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0, timeout=30)
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                n = next(self._numbers)
                if n >= self._max_requests:
                    break
                start = time.monotonic()
                try:
                    raw = chat(client, self.model, f"load {n}")
                    reply = raw.parse()
                    self.answers.append(
                        Answer(
                            start,
                            time.monotonic(),
                            raw.headers["x-hedge-served-by"],
                            raw.headers.get("x-hedge-fallback-reason"),
                            reply.model,
                        )
                    )
                except openai.OpenAIError as exc:
                    self.failures.append(repr(exc))
        finally:
            client.close()

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.start > t]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)
        assert not any(t.is_alive() for t in self._threads), "load threads still running"
