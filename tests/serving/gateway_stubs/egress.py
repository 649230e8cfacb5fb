"""A corporate egress in miniature: a local CA with a server certificate, and a CONNECT proxy.

`make_tls(dir)` makes a CA and a certificate for `localhost` (with the openssl command, as
the local cluster's PKI does). `ConnectProxy` is an HTTP proxy that only tunnels
(`CONNECT host:port`, then bytes both ways), records every target, and refuses targets
off loopback, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def _openssl(cwd: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed for the TLS test stubs"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def make_tls(directory: Path, host: str = "localhost") -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(directory, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    _openssl(directory, "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=egress-test-ca",
             "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt")  # fmt: skip
    _openssl(directory, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "srv.key")
    _openssl(directory, "req", "-new", "-key", "srv.key", "-subj", f"/CN={host}",
             "-out", "srv.csr")  # fmt: skip
    (directory / "srv.ext").write_text(
        f"subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n"
    )
    _openssl(directory, "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "srv.ext", "-out", "srv.crt")  # fmt: skip
    return TLSFiles(directory / "ca.crt", directory / "srv.crt", directory / "srv.key")


class ConnectProxy:
    """`CONNECT` only, loopback targets only; `targets` lists what was asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.targets.append(f"{method} {target}")
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host not in ("localhost", "127.0.0.1"):
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
