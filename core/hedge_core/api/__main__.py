"""`python -m hedge_core.api` prints the CRD (scripts/generate-crds)."""

import sys

from hedge_core.api.definition import crd_yaml

sys.stdout.write(crd_yaml())
