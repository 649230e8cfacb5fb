"""A real redis-server for the tests, the benches and the local cluster, cached outside
the repository.

`ensure_redis()` fetches Debian bookworm's packages with `apt-get download` (redis-server is
a symlink to redis-check-rdb in redis-tools; liblzf1 and libjemalloc2 are its libraries),
unpacks them with `dpkg-deb -x` into ``$HEDGE_CACHE_DIR/redis/<version>/`` and returns the
binary; `RedisServer` runs it on a free loopback port with nothing persisted, and can pause
it (SIGSTOP: connections hang, as with a partition) or stop and start it (refused).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from hedge_dev.tools import ToolError, cache_dir

PACKAGES = ("redis-server", "redis-tools", "liblzf1", "libjemalloc2")
#: Fetched too when the binary's libraries are not all found on this machine.
EXTRA_PACKAGES = ("liblua5.1-0", "libssl3")
LIB_DIR = "usr/lib/x86_64-linux-gnu"


@functools.cache  # apt-cache takes a second; the answer holds for the process
def _candidate_version() -> str:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        raise ToolError(
            "redis-server comes from Debian's packages via `apt-get download "
            f"{' '.join(PACKAGES)}`; apt-cache/apt-get not found on this machine"
        )
    out = subprocess.run(
        [apt_cache, "policy", "redis-server"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version.replace(":", "_").replace("~", "_")
    raise ToolError(
        "apt knows no redis-server candidate; run `apt-get update` "
        f"(then `apt-get download {' '.join(PACKAGES)}` must work)"
    )


def _download(packages: tuple[str, ...], into: Path) -> None:
    cmd = ["apt-get", "download", *packages]
    proc = subprocess.run(cmd, cwd=into, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}")
    for deb in sorted(into.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into / "root")], check=True)
        deb.unlink()


def _missing_libraries(binary: Path, lib_dir: Path) -> list[str]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def ensure_redis() -> Path:
    """The cached redis-server binary (run it with `redis_env()`), fetched once per
    Debian version."""
    version = _candidate_version()
    home = cache_dir() / "redis" / version
    binary = home / "usr/bin/redis-server"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolError(f"`apt-get download {' '.join(PACKAGES)}` and dpkg-deb are needed")
    print(f"hedge dev: fetching redis-server {version} (Debian)...", file=sys.stderr)
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        work = Path(tmp)
        _download(PACKAGES, work)
        root = work / "root"
        if _missing_libraries(root / "usr/bin/redis-server", root / LIB_DIR):
            _download(EXTRA_PACKAGES, work)
        missing = _missing_libraries(root / "usr/bin/redis-server", root / LIB_DIR)
        if missing:
            raise ToolError(f"redis-server still misses libraries: {', '.join(missing)}")
        shutil.rmtree(home, ignore_errors=True)
        root.replace(home)
    return binary


def redis_env(binary: Path) -> dict[str, str]:
    """The environment that finds the unpacked libraries beside the binary."""
    lib_dir = binary.parents[2] / LIB_DIR
    return {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server on 127.0.0.1, nothing saved; a context manager that kills it."""

    def __init__(
        self, binary: Path | None = None, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary or ensure_redis()
        self.port = port or _free_port()
        self.extra_args = extra_args  # e.g. ("--enable-debug-command", "local") for `stall`
        self._proc: subprocess.Popen[bytes] | None = None
        self._stalled: socket.socket | None = None
        fd, log = tempfile.mkstemp(prefix=f"hedge-redis-{self.port}-", suffix=".log")
        os.close(fd)
        self.log = Path(log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Starts it (again, on the same port) and waits until PING answers."""
        cmd = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--protected-mode", "no", *self.extra_args]
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                cmd, env=redis_env(self.binary), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not _ping(self.port, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_bytes()[-2000:].decode(errors="replace")
                raise ToolError(f"redis-server did not answer PING on {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kills it (a crash: whatever it held is gone, clients are refused)."""
        if self._stalled is not None:
            self._stalled.close()
            self._stalled = None
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGKILL's cleanup
        proc.kill()
        proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: it keeps its data, but connections hang (a network partition)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def stall(self, seconds: float, timeout: float = 5.0) -> None:
        """DEBUG SLEEP: the server stops serving for `seconds`, then runs what it received
        meanwhile (a reply that comes too late). Needs `--enable-debug-command local`.
        Returns once the server is asleep."""
        sender = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sender.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())
        deadline = time.monotonic() + timeout
        while _ping(self.port, 0.02):
            if time.monotonic() > deadline:
                sender.close()
                raise ToolError("redis-server did not stall (is the DEBUG command enabled?)")
        self._stalled = sender  # closed with the server

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)
