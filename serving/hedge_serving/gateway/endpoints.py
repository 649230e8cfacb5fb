"""The vLLM API paths the gateway routes by `model`, and how each one is served.

Every path is forwarded unchanged to the model's pods (vLLM serves them all on one port),
with the same balancing, retries, breakers and metrics. What differs is how an answer is
read, which bounds a hung engine:

- `GENERATE` (chat and text completions): the engine is always asked to stream, so time
  to first token and the gaps between tokens are seen for every request; a client that
  did not ask to stream gets the answer re-assembled into vLLM's non-streamed shape.
- `STREAM` (Responses API, Anthropic Messages): streamed when the client streams (first
  token and idle limits), otherwise one answer bounded only by the request timeout.
- `UNARY` (pooling models, tokenizer, token counting): one JSON answer within the
  response-head limit.

`STREAM_END` names the event that completes a stream of that endpoint; a stream that ends
without it was cut, and the client gets an error event rather than a silent truncation.
The list follows vLLM 0.32's API routers. Not routed: paths without a `model` (health,
metrics, LoRA and weight admin, `/v1/responses/{id}`), `/invocations` (SageMaker picks the
endpoint from the body), the disaggregated-serving `/inference/v1/generate`, the
`/v1/realtime` websocket, and multipart uploads (`/v1/audio/transcriptions`,
`/v1/audio/translations`).
"""

from __future__ import annotations

import enum


class Endpoint(enum.StrEnum):
    """A routed path; the value is the path clients and engines use."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    RESPONSES = "/v1/responses"
    MESSAGES = "/v1/messages"
    MESSAGES_COUNT_TOKENS = "/v1/messages/count_tokens"
    EMBEDDINGS = "/v1/embeddings"
    POOLING = "/pooling"
    CLASSIFY = "/classify"
    SCORE = "/score"
    SCORE_V1 = "/v1/score"
    RERANK = "/rerank"
    RERANK_V1 = "/v1/rerank"
    RERANK_V2 = "/v2/rerank"
    TOKENIZE = "/tokenize"
    DETOKENIZE = "/detokenize"
    # vLLM 0.32 besides: prompt rendering (chat template, tokens) without generating,
    # batched chat, generative scoring, and Cohere's v2 chat and embed APIs.
    CHAT_RENDER = "/v1/chat/completions/render"
    COMPLETIONS_RENDER = "/v1/completions/render"
    MESSAGES_RENDER = "/v1/messages/render"
    RESPONSES_RENDER = "/v1/responses/render"
    CHAT_BATCH = "/v1/chat/completions/batch"
    GENERATIVE_SCORING = "/generative_scoring"
    COHERE_CHAT = "/cohere/v2/chat"
    COHERE_EMBED = "/v2/embed"


class Mode(enum.Enum):
    GENERATE = "generate"
    STREAM = "stream"
    UNARY = "unary"


MODE: dict[Endpoint, Mode] = {
    e: (
        Mode.GENERATE
        if e in (Endpoint.CHAT, Endpoint.COMPLETIONS)
        else Mode.STREAM
        if e in (Endpoint.RESPONSES, Endpoint.MESSAGES, Endpoint.COHERE_CHAT)
        else Mode.UNARY
    )
    for e in Endpoint
}

# The event types that end a complete stream (besides OpenAI's `data: [DONE]`).
STREAM_END: dict[Endpoint, tuple[bytes, ...]] = {
    Endpoint.CHAT: (b"[DONE]",),
    Endpoint.COMPLETIONS: (b"[DONE]",),
    Endpoint.RESPONSES: (b"response.completed", b"response.incomplete", b"response.failed"),
    Endpoint.MESSAGES: (b"message_stop",),
    Endpoint.COHERE_CHAT: (b"message-end",),
}

BY_PATH: dict[str, Endpoint] = {e.value: e for e in Endpoint}
