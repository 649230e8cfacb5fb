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


# ------------------------------------------------------------- one folder per capability

OPERATOR = ROOT / "operator" / "hedge_operator"
CAPABILITIES = ("provisioning", "autoscaling", "budget", "rollout", "dataplane", "tenants")
#: What a pure module may not import: the network, the event loop, kopf, the API client.
IO_MODULES = ("aiohttp", "asyncio", "kopf", "kubernetes", "hedge_core.kube", "hedge_operator.kube")
#: Longest function a pure module may have (a long decision is a chain of named rules).
MAX_PURE_FUNCTION_LINES = 60


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _modules_imported(tree: ast.Module) -> set[str]:
    """Every module a file imports, by its full dotted name (`from a import b` counts a
    and a.b, as b may be either)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _is(name: str, module: str) -> bool:
    return name == module or name.startswith(f"{module}.")


def _shipped() -> list[Path]:
    return [
        p
        for package in ("core/hedge_core", "operator/hedge_operator", "serving/hedge_serving")
        for p in sorted((ROOT / package).rglob("*.py"))
    ]


def _pure(path: Path) -> bool:
    return (ast.get_docstring(_tree(path)) or "").startswith("Pure")


def test_pure_modules_do_no_io() -> None:
    """A module whose docstring says it is pure imports none of aiohttp, asyncio, kopf or
    the Kubernetes client."""
    pure = [p for p in _shipped() if _pure(p)]
    assert len(pure) >= 15  # the rule must be looking at something
    bad = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _modules_imported(_tree(p)) if any(_is(n, m) for m in IO_MODULES)
        )
        for p in pure
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_pure_modules_have_no_long_functions() -> None:
    long = {
        f"{p.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for p in _shipped()
        if _pure(p)
        for node in ast.walk(_tree(p))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_PURE_FUNCTION_LINES
    }
    assert long == {}


def test_operator_modules_say_whether_they_are_pure_or_do_io() -> None:
    """The first line of each operator module's docstring says "Pure" or "Does I/O"."""
    unsaid = [
        str(p.relative_to(ROOT))
        for p in sorted(OPERATOR.rglob("*.py"))
        if p.name != "__init__.py"
        and not (ast.get_docstring(_tree(p)) or "").startswith(("Pure", "Does I/O"))
    ]
    assert unsaid == []


def test_capability_folders_never_import_the_sequencers() -> None:
    """provisioning/, autoscaling/, budget/, rollout/ and dataplane/ never import the
    reconciler, the runtime or the handlers: the sequencers import them, not the reverse."""
    sequencers = ("hedge_operator.reconcile", "hedge_operator.runtime", "hedge_operator.handlers")
    for capability in CAPABILITIES:
        assert (OPERATOR / capability / "__init__.py").exists(), capability
    bad = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _modules_imported(_tree(p)) if any(_is(n, s) for s in sequencers)
        )
        for capability in CAPABILITIES
        for p in sorted((OPERATOR / capability).rglob("*.py"))
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_handlers_and_main_import_kopf() -> None:
    importers = sorted(
        str(p.relative_to(OPERATOR))
        for p in OPERATOR.rglob("*.py")
        if any(_is(n, "kopf") for n in _modules_imported(_tree(p)))
    )
    assert importers == ["handlers.py", "main.py"]


def test_the_tests_mirror_the_capability_folders() -> None:
    tests = ROOT / "tests" / "operator"
    for capability in (*CAPABILITIES, "reconcile"):
        folder = tests / capability
        assert (folder / "__init__.py").exists(), folder
        assert list(folder.glob("test_*.py")), folder
