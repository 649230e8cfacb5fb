"""Where fallback provider calls may go: the platform admin's egress policy (pure), and the
provider HTTP session that enforces it on every address it connects to (does I/O).

A provider's `baseURL` is written by a namespace tenant, and the gateway sends a paying
provider key to it, so the admin decides where those calls may go:

- `hosts`: host patterns (`fnmatch`, case-insensitive) a provider base URL may name;
  `NAMESPACE=PATTERN` allows a pattern for that namespace's ModelDeployments only. The
  default is the three public providers Hedge speaks to; `*` allows any host (the address
  checks below still apply).
- `http_hosts`: hosts that may be reached with plain `http://` (patterns, same syntax);
  they count as allowed hosts too. Everything else must be `https://`.
- `allow_cidrs`: destination ranges the admin allows although they are not public
  (an in-cluster LLM proxy, loopback in tests).
- `deny_cidrs`: more ranges to refuse, for cluster Service/pod ranges that are not in the
  private ranges (`--cluster-cidr`).

Every address a provider call connects to must be public (`ipaddress`'s `is_global`, not
multicast: no loopback, link-local 169.254/16 and fe80::/10, private 10/8, 172.16/12,
192.168/16, fc00::/7, CGNAT 100.64/10 …) and outside `deny_cidrs`, unless inside
`allow_cidrs`. The check runs in the session's resolver, on the very addresses the
connector then connects to, so a name that resolves differently the second time (DNS
rebinding) gains nothing; IP literals never reach a resolver and are checked with the URL.
Through an egress proxy (HTTPS_PROXY) the proxy resolves the target: the gateway checks the
target's name and literal address, the proxy's own address is the admin's and exempt.

Redirects are never followed (the session's requests pass `allow_redirects=False`; a 3xx
is a provider failure), so a provider key header only ever reaches the base URL's origin.
"""

from __future__ import annotations

import errno
import fnmatch
import ipaddress
import logging
import socket
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

log = logging.getLogger("hedge.gateway.egress")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PROVIDER_HOSTS = ("api.openai.com", "*.openai.azure.com", "api.anthropic.com")
_DEFAULT_HOSTS = tuple(("", h) for h in DEFAULT_PROVIDER_HOSTS)


class EgressRefused(OSError):
    """A provider destination the egress policy does not allow (an OSError, so aiohttp
    reports it as a connection error of that call, with this reason as its strerror)."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)


def _pattern(raw: str, what: str) -> tuple[str, str]:
    """`PATTERN` or `NAMESPACE=PATTERN` -> (namespace or "", lower-case pattern)."""
    ns, eq, pattern = raw.strip().rpartition("=")
    if not eq:
        ns, pattern = "", raw.strip()
    pattern = pattern.lower()
    if not pattern or any(c in pattern for c in "/: \t"):
        raise ValueError(f"{what}: {raw!r} is not a host pattern (e.g. *.example.com)")
    return ns, pattern


def _network(raw: str, what: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{what}: {raw!r} is not a CIDR range (e.g. 10.96.0.0/12)") from None


def _address(raw: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(raw.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    hosts: tuple[tuple[str, str], ...] = _DEFAULT_HOSTS
    http_hosts: tuple[tuple[str, str], ...] = ()
    allow_cidrs: tuple[IPNetwork, ...] = ()
    deny_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(
        cls,
        hosts: Iterable[str] | None = None,
        http_hosts: Iterable[str] = (),
        allow_cidrs: Iterable[str] = (),
        deny_cidrs: Iterable[str] = (),
    ) -> EgressPolicy:
        """From flag values; None for `hosts` keeps the default providers. ValueError
        naming the bad value."""
        return cls(
            hosts=_DEFAULT_HOSTS
            if hosts is None
            else tuple(_pattern(h, "allowed provider host") for h in hosts),
            http_hosts=tuple(_pattern(h, "insecure-HTTP host") for h in http_hosts),
            allow_cidrs=tuple(_network(c, "allowed egress range") for c in allow_cidrs),
            deny_cidrs=tuple(_network(c, "cluster range") for c in deny_cidrs),
        )

    @staticmethod
    def _matches(patterns: tuple[tuple[str, str], ...], host: str, namespace: str) -> bool:
        return any(
            (not ns or ns == namespace) and fnmatch.fnmatchcase(host, pattern)
            for ns, pattern in patterns
        )

    def address_refused(self, ip: IPAddress) -> str | None:
        """Why a provider call may not connect to `ip`, or None."""
        if any(ip in net for net in self.allow_cidrs):
            return None
        if any(ip in net for net in self.deny_cidrs):
            return f"address {ip} is in a cluster range"
        if not ip.is_global or ip.is_multicast:
            kind = (
                "loopback"
                if ip.is_loopback
                else "link-local"
                if ip.is_link_local
                else "private"
                if ip.is_private
                else "not public"
            )
            return f"address {ip} is {kind}"
        return None

    def url_refused(self, url: str, namespace: str) -> str | None:
        """Why a provider base URL of a ModelDeployment in `namespace` is not allowed, or
        None when it is (its addresses are still checked at connect time)."""
        try:
            parsed = URL(url)
        except ValueError:
            return "baseURL is not a URL"
        host = (parsed.host or "").lower().rstrip(".")
        if not host:
            return "baseURL has no host"
        if parsed.user is not None or parsed.password is not None:
            return "baseURL must not carry credentials"
        insecure_ok = self._matches(self.http_hosts, host, namespace)
        if parsed.scheme == "http":
            if not insecure_ok:
                return f"http:// is not allowed for {host} (only https://)"
        elif parsed.scheme != "https":
            return f"scheme {parsed.scheme!r} is not allowed (only https://)"
        if not insecure_ok and not self._matches(self.hosts, host, namespace):
            return f"host {host} is not in the gateway's allowed provider hosts"
        ip = _address(host)
        if ip is not None:
            return self.address_refused(ip)
        return None


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, less the addresses the policy refuses; refuses a host with none
    left. `exempt` hosts (the egress proxy's) are resolved unchecked."""

    def __init__(
        self,
        policy: EgressPolicy,
        inner: AbstractResolver | None = None,
        exempt: Iterable[str] = (),
    ) -> None:
        self._policy = policy
        self._inner = inner or aiohttp.DefaultResolver()
        self._exempt = frozenset(h.lower() for h in exempt)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if host.lower() in self._exempt:
            return found
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for info in found:
            ip = _address(info["host"])
            why = "unreadable address" if ip is None else self._policy.address_refused(ip)
            if why is None:
                kept.append(info)
            else:
                refused.append(why)
        if not kept:
            log.warning("egress to %s refused: %s", host, "; ".join(refused) or "no address")
            raise EgressRefused(f"egress to {host} refused: {'; '.join(refused)}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def proxy_hosts() -> set[str]:
    """Hosts of the egress proxies named in the environment (HTTPS_PROXY …)."""
    hosts = set()
    for key, value in urllib.request.getproxies().items():
        if key in ("http", "https") and value:
            host = URL(value if "://" in value else "http://" + value).host
            if host:
                hosts.add(host)
    return hosts


def provider_session(
    policy: EgressPolicy, keepalive_s: float, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The one session provider calls use: the policy's resolver, the environment's egress
    proxy (HTTPS_PROXY / NO_PROXY, as corporate egress requires)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0,
            keepalive_timeout=keepalive_s,
            ttl_dns_cache=300,
            resolver=CheckedResolver(policy, resolver, exempt=proxy_hosts()),
        ),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=True,
    )


__all__ = [
    "DEFAULT_PROVIDER_HOSTS",
    "CheckedResolver",
    "EgressPolicy",
    "EgressRefused",
    "provider_session",
    "proxy_hosts",
]
