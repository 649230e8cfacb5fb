"""The egress policy on provider base URLs and on the addresses a provider call connects to
(issue 16, High-1): https only but for hosts the admin allows, the public providers by
default, no loopback/link-local/private/CGNAT/cluster destination unless admin-allowed."""

from __future__ import annotations

import ipaddress

import pytest

from hedge_serving.gateway.egress import EgressPolicy

DEFAULT = EgressPolicy()
CLUSTER = EgressPolicy.parse(
    hosts=["*", "team-a=*.internal.example"],
    http_hosts=["team-a=llm-proxy.internal.example"],
    allow_cidrs=["10.20.0.0/16"],
    deny_cidrs=["34.118.224.0/20"],  # a GKE Service range outside the private ranges
)


@pytest.mark.parametrize(
    ("policy", "url", "namespace", "refused"),
    [
        (DEFAULT, "https://api.openai.com/v1", "team-a", None),
        (DEFAULT, "https://my-res.openai.azure.com", "team-a", None),
        (DEFAULT, "https://api.anthropic.com", "", None),
        (DEFAULT, "http://api.openai.com/v1", "team-a", "http:// is not allowed"),
        (DEFAULT, "https://evil.example.com/v1", "team-a", "not in the gateway's allowed"),
        (DEFAULT, "http://llama.team-a.svc:8000/v1", "team-b", "http:// is not allowed"),
        (DEFAULT, "https://llama.team-a.svc:8000/v1", "team-b", "not in the gateway's allowed"),
        (DEFAULT, "https://169.254.169.254/latest", "team-a", "not in the gateway's allowed"),
        (DEFAULT, "ftp://api.openai.com/v1", "team-a", "scheme 'ftp' is not allowed"),
        (DEFAULT, "https://user:pw@api.openai.com/v1", "", "must not carry credentials"),
        (CLUSTER, "https://anything.example.org/v1", "team-b", None),
        (CLUSTER, "https://169.254.169.254/latest", "team-b", "address 169.254.169.254 is link"),
        (CLUSTER, "https://127.0.0.1:8000/v1", "team-b", "address 127.0.0.1 is loopback"),
        (CLUSTER, "https://[::ffff:127.0.0.1]/v1", "team-b", "address 127.0.0.1 is loopback"),
        (CLUSTER, "https://[fd00::1]/v1", "team-b", "address fd00::1 is private"),
        (CLUSTER, "https://100.64.1.2/v1", "team-b", "address 100.64.1.2 is not public"),
        (CLUSTER, "https://10.20.3.4/v1", "team-b", None),  # admin-allowed range
        (CLUSTER, "https://34.118.230.1/v1", "team-b", "in a cluster range"),
        (CLUSTER, "http://llm-proxy.internal.example/v1", "team-a", None),
        (CLUSTER, "http://llm-proxy.internal.example/v1", "team-b", "http:// is not allowed"),
    ],
)
def test_base_urls(policy: EgressPolicy, url: str, namespace: str, refused: str | None) -> None:
    why = policy.url_refused(url, namespace)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why, why


def test_per_namespace_hosts() -> None:
    policy = EgressPolicy.parse(hosts=["team-a=*.team-a.example", "api.openai.com"])
    assert policy.url_refused("https://llm.team-a.example/v1", "team-a") is None
    assert policy.url_refused("https://llm.team-a.example/v1", "team-b") is not None
    assert policy.url_refused("https://api.openai.com/v1", "team-b") is None


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    assert DEFAULT.address_refused(ip) is not None
    assert EgressPolicy.parse(allow_cidrs=["0.0.0.0/0", "::/0"]).address_refused(ip) is None


@pytest.mark.parametrize(
    ("hosts", "http_hosts", "cidrs", "message"),
    [
        (["https://api.openai.com"], [], [], "is not a host pattern"),
        ([], ["a b"], [], "is not a host pattern"),
        ([], [], ["10.0.0.0/33"], "is not a CIDR range"),
    ],
)
def test_bad_policy_values_name_themselves(
    hosts: list[str], http_hosts: list[str], cidrs: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EgressPolicy.parse(hosts=hosts, http_hosts=http_hosts, allow_cidrs=cidrs)
