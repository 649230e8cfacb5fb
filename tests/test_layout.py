"""The repository layout keeps the standard library's `operator` importable."""

import ast
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
    import hedge_core
    import hedge_dev
    import hedge_operator
    import hedge_serving

    assert Path(hedge_core.__file__).parent == ROOT / "core" / "hedge_core"
    assert Path(hedge_operator.__file__).parent == ROOT / "operator" / "hedge_operator"
    assert Path(hedge_serving.__file__).parent == ROOT / "serving" / "hedge_serving"
    assert Path(hedge_dev.__file__).parent == ROOT / "dev" / "hedge_dev"


def _imports(package_dir: Path) -> set[str]:
    """Top-level hedge_* packages imported anywhere under `package_dir`."""
    found: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if name.startswith("hedge_")}


def test_shipped_packages_depend_only_downwards() -> None:
    """core is imported by both sides; the gateway never needs the operator (or the other
    way round), and nothing that ships imports the dev cluster."""
    assert _imports(ROOT / "core" / "hedge_core") <= {"hedge_core"}
    assert _imports(ROOT / "serving" / "hedge_serving") <= {"hedge_core", "hedge_serving"}
    assert _imports(ROOT / "operator" / "hedge_operator") <= {"hedge_core", "hedge_operator"}
