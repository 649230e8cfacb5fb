"""The `hedge` command: one entry point for the operator, the gateway, the simulator and dev tools.

Each subcommand's module is imported only when it runs, so `hedge gateway` never loads kopf
and `hedge simulator` starts fast inside the local cluster's pod runner.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# subcommand -> (module, help). Each module exposes
#   configure_parser(parser: argparse.ArgumentParser) -> None
#   run(args: argparse.Namespace) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("hedge_operator.main", "run the ModelDeployment operator (kopf)"),
    "gateway": ("hedge_serving.gateway.cli", "run the OpenAI-compatible gateway"),
    "simulator": ("hedge_serving.simulator.cli", "run the vLLM engine simulator"),
    "rollout": ("hedge_core.rollout_cli", "watch and steer a ModelDeployment's rollout"),
    "usage": ("hedge_core.usage_cli", "tenants' requests, tokens and 429s, for chargeback"),
}
# The local cluster and demo ship in their own distribution (hedge-dev, dev/ in a checkout),
# never in the image; `hedge dev` exists where that package is installed.
DEV_SUBCOMMAND = ("hedge_dev.cli", "local development cluster and demo")


def subcommands() -> dict[str, tuple[str, str]]:
    found = dict(SUBCOMMANDS)
    if importlib.util.find_spec("hedge_dev") is not None:
        found["dev"] = DEV_SUBCOMMAND
    return found


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hedge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv else None
    for name, (module_name, help_text) in subcommands().items():
        sp = sub.add_parser(name, help=help_text)
        if name == wanted:  # only import the module that will run
            module = importlib.import_module(module_name)
            module.configure_parser(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    run = getattr(args, "_run", None)
    if run is None:  # pragma: no cover - argparse requires a command
        parser.print_help()
        return 2
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
