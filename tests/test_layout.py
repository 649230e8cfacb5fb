"""The repository layout keeps the standard library's `operator` importable."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_operator_from_repo_root_is_stdlib() -> None:
    code = "import operator, sys; print(operator.__file__); assert operator.add(2, 3) == 5"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "site-packages" not in out.stdout
    assert Path(out.stdout.strip()).parent != ROOT / "operator"
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_packages_import_from_their_folders() -> None:
    import hedge_operator
    import hedge_serving

    assert Path(hedge_operator.__file__).parent == ROOT / "operator" / "hedge_operator"
    assert Path(hedge_serving.__file__).parent == ROOT / "serving" / "hedge_serving"
