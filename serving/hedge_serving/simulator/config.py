"""Configuration of one engine simulator: latency model, capacity, prefix cache and faults.

A config comes from three places: code (`SimulatorConfig(...)`), a real vLLM command line plus
the pod's `sim.hedge.dev/<knob>` annotations (`SimulatorConfig.from_vllm_args`, used by the local
cluster's pod runner), or the `hedge simulator` CLI. Faults can also change at runtime through
the simulator's admin endpoint, so they live in their own small dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hedge.simulator")

ANNOTATION_PREFIX = "sim.hedge.dev/"
# Annotations under the same prefix that the local cluster's pod runner reads itself.
_POD_RUNNER_KNOBS = frozenset({"container-state", "engine"})

# vLLM's default for --max-num-seqs; it bounds how many requests run at once.
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class Faults:
    """Failure injection; all off by default. Changeable at runtime via `POST /_hedge/sim/faults`.

    - `fail_health`: `GET /health` answers 503.
    - `error_rate`: fraction (0..1) of inference requests answered with `error_status`.
    - `error_status`: the HTTP status of injected errors (500 by default, 503 or 429 also useful).
    - `drop_after_chunks`: a streamed response is cut (TCP close, no terminating chunk) after this
      many `data:` events; 0 also cuts non-streamed responses before any byte is sent.
    - `hang`: admitted requests stop making progress (holding their slot) until `hang` is cleared.
    - `slowdown`: multiplies every latency (TTFT, prefill, inter-token) to make one replica slow.
    """

    fail_health: bool = False
    error_rate: float = 0.0
    error_status: int = 500
    drop_after_chunks: int | None = None
    hang: bool = False
    slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be between 0 and 1, got {self.error_rate}")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be an HTTP error status, got {self.error_status}")
        if self.drop_after_chunks is not None and self.drop_after_chunks < 0:
            raise ValueError(f"drop_after_chunks must be >= 0, got {self.drop_after_chunks}")
        if not self.slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {self.slowdown}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """Return a copy with `changes` (JSON values; keys in snake_case or kebab-case) applied.

        Raises ValueError naming the offending key, so the admin endpoint can answer 400.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        for raw_key, value in changes.items():
            key = raw_key.replace("-", "_")
            if key not in fields:
                raise ValueError(f"unknown fault {raw_key!r}; known: {', '.join(sorted(fields))}")
            values[key] = _check_json_type(raw_key, value, _FAULT_TYPES[key])
        try:
            return dataclasses.replace(self, **values)
        except ValueError as exc:
            raise ValueError(str(exc)) from None


# JSON types each fault accepts, and how to say so in an error.
_FAULT_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "fail_health": ((bool,), "a boolean"),
    "error_rate": ((int, float), "a number"),
    "error_status": ((int,), "an integer"),
    "drop_after_chunks": ((int, type(None)), "an integer or null"),
    "hang": ((bool,), "a boolean"),
    "slowdown": ((int, float), "a number"),
}


def _check_json_type(key: str, value: Any, expected: tuple[tuple[type, ...], str]) -> Any:
    types, description = expected
    # bool subclasses int, so `true` must not pass as an integer.
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ValueError(f"{key}: expected {description}, got {json.dumps(value)}")
    if float in types and isinstance(value, int):
        return float(value)
    return value


@dataclass
class SimulatorConfig:
    """Everything one simulated vLLM engine needs; see the field comments for units.

    Latency model: time to first token = queueing + (`ttft_ms` + `prefill_ms_per_token` x prompt
    tokens not found in the prefix cache) x `slowdown`; then one token every `itl_ms` x `slowdown`.

    Tokens: a token is a whitespace-separated word (chat messages add one role marker token each
    plus one for the assistant turn; completions prompts add a BOS token; token-id prompts count
    one token per id). Word tokens keep prompts human-readable in tests while being easy to count.
    """

    # Names clients may send as `model`; the first is the primary name used in responses and in
    # the `model_name` metric label, as with vLLM's --served-model-name.
    served_model_names: list[str] = field(default_factory=lambda: ["hedge-sim"])
    # What vLLM was asked to load (`root` in /v1/models); defaults to the primary served name.
    model_path: str | None = None
    # LoRA adapter name -> path; each adapter is also served under its own model name.
    lora_modules: dict[str, str] = field(default_factory=dict)
    max_model_len: int = 8192
    # Tokens generated when the request gives no max_tokens; the answer then ends with "stop".
    default_max_tokens: int = 16
    ttft_ms: float = 20.0
    itl_ms: float = 10.0
    prefill_ms_per_token: float = 0.05
    # Requests running at once (vLLM's --max-num-seqs); beyond it requests wait FIFO.
    max_concurrency: int = DEFAULT_MAX_NUM_SEQS
    # Prefix cache: LRU of `block_size`-token blocks; 0 blocks disables it.
    block_size: int = 16
    prefix_cache_blocks: int = 4096
    embedding_dim: int = 384
    # /health and the API answer 503 for this long after start, like an engine loading weights.
    startup_delay_ms: float = 0.0
    # vLLM's --shutdown-timeout: how long a stopping engine lets requests in flight finish;
    # 0 (vLLM's default) aborts them at once.
    shutdown_timeout_s: float = 0.0
    # Seeds the output text and the error_rate draws, so runs repeat.
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 8000
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.served_model_names or not all(self.served_model_names):
            raise ValueError("served_model_names must hold at least one non-empty name")
        positive = ("max_model_len", "default_max_tokens", "max_concurrency", "block_size")
        for name in (*positive, "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ttft_ms", "itl_ms", "prefill_ms_per_token", "startup_delay_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.prefix_cache_blocks < 0:
            raise ValueError(f"prefix_cache_blocks must be >= 0, got {self.prefix_cache_blocks}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")

    @property
    def model_name(self) -> str:
        """The primary served model name."""
        return self.served_model_names[0]

    @classmethod
    def from_vllm_args(
        cls, args: Sequence[str], annotations: Mapping[str, str] | None = None
    ) -> SimulatorConfig:
        """Build a config from a vLLM command line and `sim.hedge.dev/<knob>` pod annotations.

        Accepts `vllm serve MODEL ...`, `python -m vllm.entrypoints.openai.api_server --model
        MODEL ...` or the bare argument list. Flags vLLM has that the simulator does not model are
        skipped. Annotations override what the command line implies (e.g. max-concurrency over
        --max-num-seqs). Raises ValueError on a missing model, a bad flag value or a bad
        annotation, naming it.
        """
        values = _parse_vllm_args(args)
        config = cls(**values)
        return config.with_annotations(annotations or {})

    def with_annotations(self, annotations: Mapping[str, str]) -> SimulatorConfig:
        """Return a copy with the `sim.hedge.dev/<knob>` annotations applied (others ignored)."""
        config = self
        for key, raw in sorted(annotations.items()):
            if not key.startswith(ANNOTATION_PREFIX):
                continue
            knob = key[len(ANNOTATION_PREFIX) :]
            spec = ANNOTATION_KNOBS.get(knob)
            if spec is None:
                # The prefix is shared with the pod runner's own annotations (container-state),
                # so an unknown knob is not an error; a typo still shows up in the log.
                if knob not in _POD_RUNNER_KNOBS:
                    log.warning("ignoring unknown simulator annotation %r", key)
                continue
            attr, parse, is_fault = spec
            # One annotation at a time, so a value the dataclasses reject names its annotation.
            try:
                value = parse(raw.strip())
                if is_fault:
                    faults = dataclasses.replace(config.faults, **{attr: value})
                    config = dataclasses.replace(config, faults=faults)
                else:
                    config = dataclasses.replace(config, **{attr: value})
            except ValueError as exc:
                raise ValueError(f"annotation {key!r}: {exc}") from None
        return config


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_optional_int(raw: str) -> int | None:
    return None if raw.lower() in ("", "none", "null", "off") else _parse_int(raw)


# annotation knob -> (SimulatorConfig or Faults attribute, parser, is a fault)
ANNOTATION_KNOBS: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "ttft-ms": ("ttft_ms", _parse_float, False),
    "itl-ms": ("itl_ms", _parse_float, False),
    "prefill-ms-per-token": ("prefill_ms_per_token", _parse_float, False),
    "max-concurrency": ("max_concurrency", _parse_int, False),
    "max-model-len": ("max_model_len", _parse_int, False),
    "default-max-tokens": ("default_max_tokens", _parse_int, False),
    "prefix-cache-blocks": ("prefix_cache_blocks", _parse_int, False),
    "block-size": ("block_size", _parse_int, False),
    "embedding-dim": ("embedding_dim", _parse_int, False),
    "startup-delay-ms": ("startup_delay_ms", _parse_float, False),
    "seed": ("seed", _parse_int, False),
    "fail-health": ("fail_health", _parse_bool, True),
    "error-rate": ("error_rate", _parse_float, True),
    "error-status": ("error_status", _parse_int, True),
    "drop-after-chunks": ("drop_after_chunks", _parse_optional_int, True),
    "hang": ("hang", _parse_bool, True),
    "slowdown": ("slowdown", _parse_float, True),
}


# --- vLLM command line -------------------------------------------------------------------------

# vLLM flags the simulator reads, and how many values each takes ("+" = one or more).
_VALUE_FLAGS: dict[str, str] = {
    "--model": "1",
    "--served-model-name": "+",
    "--port": "1",
    "--host": "1",
    "--max-num-seqs": "1",
    "--max-model-len": "1",
    "--block-size": "1",
    "--seed": "1",
    "--lora-modules": "+",
    "--shutdown-timeout": "1",
}
# vLLM flags that take no value. Without this list an unknown boolean flag would swallow the
# positional model that follows it. `--enable-*`, `--disable-*` and `--no-*` are treated the same.
_BOOLEAN_FLAGS = frozenset(
    {
        "--trust-remote-code",
        "--enforce-eager",
        "--skip-tokenizer-init",
        "--headless",
        "--fully-sharded-loras",
        "--return-tokens-as-token-ids",
        "--use-tqdm-on-load",
        "--async-scheduling",
        "--kv-sharing-fast-prefill",
        "--calculate-kv-scales",
        "--api-server-count-auto",
        "--data-parallel-hybrid-lb",
        "--data-parallel-external-lb",
        "--multi-step-stream-outputs",
    }
)
# Leading words of the launcher itself, as they appear in a container's command + args.
_LAUNCHER_WORDS = frozenset({"serve", "-m", "vllm.entrypoints.openai.api_server"})


def _is_boolean_flag(name: str) -> bool:
    return name in _BOOLEAN_FLAGS or name.startswith(("--enable-", "--disable-", "--no-"))


def _looks_like_flag(token: str) -> bool:
    # "-1" is a value (e.g. --seed -1), not a flag.
    return token.startswith("-") and len(token) > 1 and not token[1].isdigit() and token != "--"


def _strip_launcher(tokens: list[str]) -> list[str]:
    i = 0
    while i < len(tokens):
        base = tokens[i].rsplit("/", 1)[-1]
        if tokens[i] in _LAUNCHER_WORDS or base == "vllm" or base.startswith("python"):
            i += 1
        else:
            break
    return tokens[i:]


def _parse_vllm_args(args: Sequence[str]) -> dict[str, Any]:
    tokens = _strip_launcher(list(args))
    flags: dict[str, list[str]] = {}
    positionals: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            positionals.extend(tokens[i:])
            break
        if not _looks_like_flag(token):
            positionals.append(token)
            continue
        # vLLM's FlexibleArgumentParser accepts --max_model_len as well as --max-model-len.
        name, eq, inline = token.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")
        arity = _VALUE_FLAGS.get(name)
        if eq:
            values = [inline]
        elif arity == "+":
            values = []
            while i < len(tokens) and not _looks_like_flag(tokens[i]):
                values.append(tokens[i])
                i += 1
        elif arity == "1" or not _is_boolean_flag(name):
            # Known one-value flags, and unknown non-boolean flags, take the next token if any.
            values = []
            if i < len(tokens) and not _looks_like_flag(tokens[i]):
                values.append(tokens[i])
                i += 1
        else:
            values = []
        if arity is not None or name in ("--enable-lora", "--no-enable-prefix-caching"):
            flags.setdefault(name, []).extend(values)
        if arity is not None and not values:
            raise ValueError(f"vLLM flag {name} needs a value")

    model = positionals[0] if positionals else _last(flags.get("--model"))
    if not model:
        raise ValueError("vLLM args name no model (vllm serve MODEL or --model MODEL)")
    served = flags.get("--served-model-name") or [model]
    result: dict[str, Any] = {"served_model_names": served, "model_path": model}
    if "--port" in flags:
        result["port"] = _flag_int("--port", _last(flags["--port"]))
    if "--host" in flags:
        result["host"] = _last(flags["--host"])
    if "--max-num-seqs" in flags:
        result["max_concurrency"] = _flag_int("--max-num-seqs", _last(flags["--max-num-seqs"]))
    if "--max-model-len" in flags:
        result["max_model_len"] = _parse_model_len(_last(flags["--max-model-len"]))
    if "--block-size" in flags:
        result["block_size"] = _flag_int("--block-size", _last(flags["--block-size"]))
    if "--seed" in flags:
        result["seed"] = _flag_int("--seed", _last(flags["--seed"]))
    if "--shutdown-timeout" in flags:
        timeout = _flag_int("--shutdown-timeout", _last(flags["--shutdown-timeout"]))
        result["shutdown_timeout_s"] = float(timeout)
    if "--no-enable-prefix-caching" in flags:
        result["prefix_cache_blocks"] = 0
    if "--lora-modules" in flags:
        if "--enable-lora" not in flags:
            # vLLM refuses --lora-modules without --enable-lora; so does the simulator, so a bad
            # operator-built command line fails here rather than only on a GPU node.
            raise ValueError("vLLM flag --lora-modules needs --enable-lora")
        result["lora_modules"] = dict(_parse_lora_module(v) for v in flags["--lora-modules"])
    return result


def _last(values: list[str] | None) -> str:
    return values[-1] if values else ""


def _flag_int(flag: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"vLLM flag {flag}: expected an integer, got {raw!r}") from None


def _parse_model_len(raw: str) -> int:
    # vLLM accepts human-readable lengths: 32k = 32000, 32K = 32768, 1m = 1000000, 1M = 2**20.
    multipliers = {"k": 1000, "K": 1024, "m": 1_000_000, "M": 1024 * 1024}
    number, mult = (raw[:-1], multipliers[raw[-1]]) if raw and raw[-1] in multipliers else (raw, 1)
    try:
        return int(float(number) * mult)
    except ValueError:
        raise ValueError(f"vLLM flag --max-model-len: expected a length, got {raw!r}") from None


def _parse_lora_module(raw: str) -> tuple[str, str]:
    # Either name=path or vLLM's JSON form {"name": ..., "path": ..., "base_model_name": ...}.
    if raw.lstrip().startswith("{"):
        try:
            obj = json.loads(raw)
            return str(obj["name"]), str(obj["path"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"vLLM flag --lora-modules: bad JSON module {raw!r}") from None
    name, eq, path = raw.partition("=")
    if not eq or not name or not path:
        raise ValueError(f"vLLM flag --lora-modules: expected name=path, got {raw!r}")
    return name, path
