"""Judges `vllm serve` argument lists with vLLM's own code; runs in the cached vLLM's Python.

Reads JSON from stdin: {"model": path, "cases": [{"id": str, "args": [str, ...], "config": bool}]}.
For each case, in order, as far as it gets:

1. parse: `vllm serve`'s own parser (the CLI's subcommand, so positional model, aliases,
   `--no-*` booleans and choices are vLLM's), then the serve subcommand's `validate()`;
2. engine: `AsyncEngineArgs.from_cli_args` (the engine arguments' own checks);
3. config: `create_engine_config()`, the whole engine configuration (parallelism, cache,
   scheduler, LoRA, quantization against the model...).

Stages 2 and 3 need a model: the parsed model argument is replaced by the local `model` after
stage 1, since nothing can be fetched here. A case with `"config": false` stops after stage 2.

Writes one JSON line per case: {"id", "ok", "stage", "error", "deprecated"}; `error` is
vLLM's own message. Imports nothing from Hedge.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from typing import Any


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> int:
    request = json.load(sys.stdin)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(dest="subparser")
    command = serve.cmd_init()[0]
    command.subparser_init(subparsers)
    collect = _Collect()
    logging.getLogger("vllm").addHandler(collect)

    model = request["model"]
    for case in request["cases"]:
        collect.messages.clear()
        result: dict[str, Any] = {"id": case["id"], "ok": False, "stage": "parse", "error": None}
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = parser.parse_args(["serve", *case["args"]])
            command.validate(args)
            # The engine arguments resolve the model at once (a hub look-up for a repo id).
            args.model = args.model_tag = model
            result["stage"] = "engine"
            engine_args = AsyncEngineArgs.from_cli_args(args)
            if case.get("config", True):
                result["stage"] = "config"
                engine_args.create_engine_config()
            result["ok"] = True
        except SystemExit:
            lines = [ln for ln in stderr.getvalue().splitlines() if ln.strip()]
            result["error"] = lines[-1] if lines else "argparse exited"
        except Exception as exc:  # vLLM's own validation errors, whatever their class
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["deprecated"] = [m for m in collect.messages if "deprecated" in m.lower()]
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
