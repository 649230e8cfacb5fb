"""`hedge dev demo`: Hedge end to end on the local cluster, narrated.

Brings up the local cluster, installs the CRD, starts the operator and the gateway against
it, applies ``examples/quickstart.yaml``, waits for the ModelDeployment to become Ready and
sends a chat completion through the gateway — then breaks the engine pods to show the
fallback path when the example declares one. Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hedge_core.api import crd_yaml
from hedge_core.contracts import PROVIDER_KEY_LABEL
from hedge_dev import tools
from hedge_dev.cluster import ClusterError, LocalCluster, free_port

# The CRD comes from hedge_core.api and the example ships with this package (a copy of
# examples/quickstart.yaml, kept identical by a test), so the demo runs from an installed
# hedge-dev as well as from a checkout.
EXAMPLE = Path(__file__).with_name("quickstart.yaml")
MODEL = "llama-3-8b"


def _step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def _kubectl(
    kubectl: Path, kubeconfig: Path, *args: str, check: bool = True, input: str | None = None
) -> str:
    proc = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        input=input,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _wait_http(url: str, timeout: float, component: LocalCluster, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        component.assert_alive(name)
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise ClusterError(f"{name} did not answer {url} within {timeout:.0f}s")


def _chat(gateway: str) -> tuple[dict[str, Any], dict[str, str]]:
    body = {
        "model": MODEL,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "Say hello to the platform team."}],
    }
    request = urllib.request.Request(
        f"{gateway}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read()), dict(resp.headers.items())


def _served_by(gateway: str) -> tuple[str, str]:
    try:
        _, headers = _chat(gateway)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}", ""
    return headers.get("x-hedge-served-by", "?"), headers.get("x-hedge-fallback-reason", "")


def _wait_served_by(gateway: str, want: str, timeout: float) -> tuple[float, str]:
    began = time.monotonic()
    while True:
        served_by, reason = _served_by(gateway)
        if served_by == want:
            return time.monotonic() - began, reason
        if time.monotonic() - began > timeout:
            raise ClusterError(f"gateway still answers from {served_by!r}, expected {want!r}")
        time.sleep(0.2)


def _fallback_act(cluster: LocalCluster, kubectl: Path, kubeconfig: Path, gateway: str) -> None:
    _step("Fallback: self-hosted capacity goes away, an external provider takes over")
    # A stand-in for an external OpenAI-compatible provider, on loopback like everything else.
    provider_port = free_port()
    cluster.start_component(
        "external-provider",
        [
            sys.executable,
            "-m",
            "hedge_core.cli",
            "simulator",
            "--host=127.0.0.1",
            f"--port={provider_port}",
            "--model=gpt-4o-mini",
            "--ttft-ms=5",
            "--itl-ms=1",
        ],
    )
    _wait_http(f"http://127.0.0.1:{provider_port}/health", 30, cluster, "external-provider")
    print(
        _kubectl(
            kubectl,
            kubeconfig,
            "create",
            "secret",
            "generic",
            "provider-key",
            "--from-literal=api-key=demo-key-not-a-secret",
        )
    )
    # Provider keys come only from Secrets that opted in (docs/gateway.md, "Provider keys").
    print(
        _kubectl(
            kubectl, kubeconfig, "label", "secret", "provider-key", f"{PROVIDER_KEY_LABEL}=true"
        )
    )
    patch = {
        "spec": {
            "fallback": {
                "onUnavailable": True,
                "onError": True,
                "providers": [
                    {
                        "type": "OpenAICompatible",
                        "model": "gpt-4o-mini",
                        "baseURL": f"http://127.0.0.1:{provider_port}/v1",
                        "apiKeySecretRef": {"name": "provider-key", "key": "api-key"},
                    }
                ],
            }
        }
    }
    print(
        _kubectl(
            kubectl,
            kubeconfig,
            "patch",
            f"md/{MODEL}",
            "--type=merge",
            f"--patch={json.dumps(patch)}",
        )
    )
    print(_kubectl(kubectl, kubeconfig, "scale", f"md/{MODEL}", "--replicas=0"))
    took, reason = _wait_served_by(gateway, "openai-compatible", 60)
    print(
        f"{took:.1f}s after scaling to zero: x-hedge-served-by: openai-compatible, "
        f"x-hedge-fallback-reason: {reason}"
    )

    print(_kubectl(kubectl, kubeconfig, "scale", f"md/{MODEL}", "--replicas=1"))
    took, _ = _wait_served_by(gateway, "self-hosted", 90)
    print(f"{took:.1f}s after scaling back to one replica: x-hedge-served-by: self-hosted")
    _kubectl(
        kubectl,
        kubeconfig,
        "wait",
        "--for=condition=Ready",
        f"md/{MODEL}",
        "--timeout=60s",
        check=False,
    )
    print(_kubectl(kubectl, kubeconfig, "get", "md"))


def run(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.name)
    try:
        return _demo(cluster, args)
    except (ClusterError, tools.ToolError) as exc:
        print(f"\nhedge dev demo failed: {exc}", file=sys.stderr)
        if not args.keep:
            cluster.down(quiet=True)
        return 1


def _demo(cluster: LocalCluster, args: argparse.Namespace) -> int:
    started = time.monotonic()
    _step(
        "Bringing up the local cluster (real kube-apiserver, scheduler, controllers; "
        "kwok GPU nodes)"
    )
    kubeconfig = cluster.up()
    kubectl = tools.ensure_tools(["kubectl"])["kubectl"]
    print(f"KUBECONFIG={kubeconfig}")
    print(_kubectl(kubectl, kubeconfig, "get", "nodes", "-L", "nvidia.com/gpu.product"))

    _step("Installing the ModelDeployment CRD")
    print(_kubectl(kubectl, kubeconfig, "apply", "--server-side", "-f", "-", input=crd_yaml()))
    _kubectl(
        kubectl,
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "crd/modeldeployments.hedge.dev",
        "--timeout=30s",
    )

    _step("Starting the operator and the gateway")
    op_health = free_port()
    gw_port, gw_admin = free_port(), free_port()
    cluster.start_component(
        "operator",
        [
            sys.executable,
            "-m",
            "hedge_core.cli",
            "operator",
            f"--health-port={op_health}",
            "--metrics-port=0",
            # The gateway runs outside the cluster here: its autoscaler reads it directly.
            f"--gateway-metrics-url=http://127.0.0.1:{gw_admin}/metrics",
        ],
        env={"KUBECONFIG": str(kubeconfig)},
    )
    cluster.start_component(
        "gateway",
        [
            sys.executable,
            "-m",
            "hedge_core.cli",
            "gateway",
            f"--kubeconfig={kubeconfig}",
            "--host=127.0.0.1",
            f"--port={gw_port}",
            f"--admin-port={gw_admin}",
            # The demo's provider stub is on loopback over http: allow exactly that.
            "--egress-allow-http=127.0.0.1",
            "--egress-allow-cidr=127.0.0.0/8",
        ],
    )
    _wait_http(f"http://127.0.0.1:{op_health}/healthz", 60, cluster, "operator")
    _wait_http(f"http://127.0.0.1:{gw_admin}/healthz", 60, cluster, "gateway")
    gateway = f"http://127.0.0.1:{gw_port}"
    print(f"operator log: {cluster.logs / 'operator.log'}")
    print(f"gateway: {gateway}/v1 (log: {cluster.logs / 'gateway.log'})")

    _step("Applying examples/quickstart.yaml")
    print(EXAMPLE.read_text())
    print(_kubectl(kubectl, kubeconfig, "apply", "-f", str(EXAMPLE)))
    waited = _kubectl(
        kubectl,
        kubeconfig,
        "wait",
        "--for=condition=Ready",
        f"md/{MODEL}",
        "--timeout=120s",
        check=False,
    )
    print(waited or _kubectl(kubectl, kubeconfig, "describe", f"md/{MODEL}"))
    print(_kubectl(kubectl, kubeconfig, "get", "md,deploy,pods,svc", "-o", "wide"))

    _step("Chat completion through the gateway (OpenAI API)")
    deadline = time.monotonic() + 30
    while True:
        try:
            reply, headers = _chat(gateway)
            break
        except urllib.error.HTTPError as exc:  # gateway may not have seen the endpoints yet
            if time.monotonic() > deadline:
                raise ClusterError(f"gateway answered {exc.code}: {exc.read()[:300]!r}") from exc
            time.sleep(0.3)
    print(f"POST {gateway}/v1/chat/completions model={MODEL}")
    print(f"x-hedge-served-by: {headers.get('x-hedge-served-by')}")
    print(json.dumps(reply, indent=2))

    _fallback_act(cluster, kubectl, kubeconfig, gateway)

    print(f"\nDemo finished in {time.monotonic() - started:.1f}s.")
    if args.keep:
        print(
            f"Everything is still running. Try:\n  export KUBECONFIG={kubeconfig}\n"
            f"  kubectl get md\n  curl {gateway}/v1/models\n"
            f"Stop it all with: hedge dev cluster down --name {cluster.name}"
        )
    else:
        cluster.down(quiet=True)
        print("Cluster, operator and gateway stopped (use --keep to leave them running).")
    return 0
