"""`python -m hedge_core.api` prints the ModelDeployment CRD; `python -m hedge_core.api
--out DIR` writes every CRD file into DIR (scripts/generate-crds)."""

import argparse
import sys
from pathlib import Path

from hedge_core.api.definition import CRD_FILES, crd_yaml

parser = argparse.ArgumentParser(prog="python -m hedge_core.api")
parser.add_argument("--out", type=Path, help="write every CRD file into this folder")
args = parser.parse_args()
if args.out is None:
    sys.stdout.write(crd_yaml())
else:
    for filename, render in CRD_FILES.items():
        (args.out / filename).write_text(render())
        print(f"wrote {args.out / filename}")
