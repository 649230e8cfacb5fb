"""`python -m hedge_serving.simulator`: the same as `hedge simulator`, without the operator CLI."""

import argparse
import sys

from hedge_serving.simulator.cli import configure_parser, run

parser = argparse.ArgumentParser(prog="python -m hedge_serving.simulator")
configure_parser(parser)
sys.exit(run(parser.parse_args()))
