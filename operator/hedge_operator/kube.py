"""Does I/O: the only module of the operator that talks to the Kubernetes API (kopf's
watches aside).

On `hedge_core.kube` (the project's one client, whose credentials kopf logs in with too):
server-side apply with the `hedge-operator` field manager, deletes, status writes guarded
by the object's resourceVersion, Events, pod annotations (the deletion cost before a
scale-down), Secret key look-ups that never keep or return a value (provider keys, and the
client keys a ClientPolicy names), and the one watch kopf
does not run: the EndpointSlices of the gateways' admin Service (`watch_gateways`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from hedge_core import kube as core
from hedge_core.api import (
    API_VERSION,
    CLIENT_POLICY_KIND,
    CLIENT_POLICY_PLURAL,
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
)
from hedge_core.clock import utc_now
from hedge_core.contracts import CLIENT_KEY_LABEL, PROVIDER_KEY_LABEL
from hedge_core.kube import ApiError, Conflict, ListWatch, OnEvent, OnList, resource_path
from hedge_operator import metrics
from hedge_operator.provisioning.validation import ProviderKeys
from hedge_operator.standby import PeeringGate
from hedge_operator.tenants.status import SecretFacts

__all__ = ["ApiError", "Conflict", "Kube"]

# (apiVersion, kind) -> plural
RESOURCES: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    (API_VERSION, KIND): PLURAL,
    (API_VERSION, CLIENT_POLICY_KIND): CLIENT_POLICY_PLURAL,
}


def object_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    return resource_path(api_version, RESOURCES[(api_version, kind)], namespace, name, subresource)


def _count(method: str, resource: str, status: int) -> None:
    metrics.API_REQUESTS.labels(method, resource, str(status)).inc()


class Kube:
    """The operator's API calls, on one `hedge_core.kube.Kube` client."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        # A bounded pool: a burst of reconciles should queue here, not at the API server.
        self.client = core.Kube(
            kubeconfig, user_agent="hedge-operator", on_response=_count, max_connections=32
        )
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        #: Closed while this replica is a peering standby: every write below refuses
        #: (standby.Standby) rather than act on a view frozen at kopf's pause.
        self.gate = PeeringGate(None, identity=self.instance, priority=0, peering=None)

    def _may_write(self, what: str) -> None:
        self.gate.check(what)

    async def close(self) -> None:
        await self.client.close()

    # ---------------------------------------------------------------------- children

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, taking over conflicting fields (we own these objects)."""
        meta = manifest["metadata"]
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        self._may_write(f"apply {kind} {meta['name']}")
        result = await self.client.apply(
            object_path(api_version, kind, meta.get("namespace"), meta["name"]),
            manifest,
            field_manager=FIELD_MANAGER,
            resource=RESOURCES[(api_version, kind)],
        )
        return dict(result or {})

    async def get_child(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> Mapping[str, Any] | None:
        """A child as the API server has it now (None: there is none), read before creating
        it, so that an object we do not own is never taken over by the apply."""
        body = await self.client.request(
            "GET",
            object_path(api_version, kind, namespace, name),
            missing_ok=True,
            resource=RESOURCES[(api_version, kind)],
        )
        return None if body is None else dict(body)

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self._may_write(f"scale Deployment {name}")
        await self.client.patch(
            object_path("apps/v1", "Deployment", namespace, name),
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
            missing_ok=True,
            resource="deployments",
        )

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge-patches annotations onto a pod (gone pods are fine)."""
        self._may_write(f"annotate pod {name}")
        await self.client.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"metadata": {"annotations": dict(annotations)}},
            missing_ok=True,
            resource="pods",
        )

    def watch_gateways(
        self, namespace: str, service: str, on_list: OnList, on_event: OnEvent
    ) -> ListWatch:
        """A (not yet started) list+watch of the EndpointSlices of the gateways' admin
        Service: where every gateway replica's /metrics is."""
        return ListWatch(
            self.client,
            resource_path("discovery.k8s.io/v1", "endpointslices", namespace),
            params={"labelSelector": f"kubernetes.io/service-name={service}"},
            name=f"gateway endpoints {namespace}/{service}",
            on_list=on_list,
            on_event=on_event,
            max_backoff_s=10.0,
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self._may_write(f"delete {kind} {name}")
        await self.client.delete(
            object_path(api_version, kind, namespace, name), resource=RESOURCES[(api_version, kind)]
        )

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The keys of a Secret, or None if it does not exist. Values are dropped at once."""
        body = await self.client.request(
            "GET", object_path("v1", "Secret", namespace, name), missing_ok=True, resource="secrets"
        )
        if body is None:
            return None
        keys = frozenset((body.get("data") or {}).keys()) | frozenset(
            (body.get("stringData") or {}).keys()
        )
        labels = (body.get("metadata") or {}).get("labels") or {}
        body.clear()
        return ProviderKeys(keys) if labels.get(PROVIDER_KEY_LABEL) == "true" else keys

    async def client_key_secret(self, namespace: str, name: str) -> SecretFacts | None:
        """Whether a Secret carries the client-key label, and its data key names; None if it
        does not exist. The values are dropped here, before anything else sees the body (a
        ClientPolicy's status counts keys, it never needs one). Raises Forbidden where the
        operator may not read Secrets."""
        body = await self.client.request(
            "GET", object_path("v1", "Secret", namespace, name), missing_ok=True, resource="secrets"
        )
        if body is None:
            return None
        keys = frozenset((body.get("data") or {}).keys())
        labels = (body.get("metadata") or {}).get("labels") or {}
        body.clear()
        return SecretFacts(labelled=labels.get(CLIENT_KEY_LABEL) == "true", data_keys=keys)

    async def list_nodes(self) -> list[dict[str, Any]]:
        """Every node's labels and taints (nothing else is kept), in pages of 500."""
        out: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": "500"}
        while True:
            body = await self.client.request(
                "GET", "/api/v1/nodes", params=params, resource="nodes"
            )
            for node in body.get("items") or []:
                out.append(
                    {
                        "labels": dict((node.get("metadata") or {}).get("labels") or {}),
                        "taints": list((node.get("spec") or {}).get("taints") or []),
                    }
                )
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return out
            params = {"limit": "500", "continue": str(token)}

    # ------------------------------------------------------------------ the resource

    async def get_crd(self) -> dict[str, Any] | None:
        """The installed ModelDeployment CRD (None: not installed)."""
        body = await self.client.request(
            "GET",
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}",
            missing_ok=True,
            resource="customresourcedefinitions",
        )
        return None if body is None else dict(body)

    async def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as the API server has it now (None once deleted)."""
        body = await self.client.request(
            "GET", object_path(API_VERSION, KIND, namespace, name), missing_ok=True,
            resource=PLURAL,
        )  # fmt: skip
        return None if body is None else dict(body)

    async def patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str
    ) -> str | None:
        """Merge-patches status, only if the object is still at `resource_version` (the
        version the status was computed from); raises Conflict otherwise. Returns the new
        resourceVersion (None: the object is gone)."""
        self._may_write(f"status of {namespace}/{name}")
        result = await self.client.patch(
            object_path(API_VERSION, KIND, namespace, name, "status"),
            {"metadata": {"resourceVersion": resource_version}, "status": patch},
            missing_ok=True,
            resource=f"{PLURAL}/status",
        )
        if not result:
            return None
        return str((result.get("metadata") or {}).get("resourceVersion") or "") or None

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        kind: str = KIND,
    ) -> None:
        """A core/v1 Event about a ModelDeployment, or another hedge.dev object of `kind`
        (`involved` is its metadata)."""
        self._may_write(f"Event {reason}")
        now = utc_now()
        namespace = str(involved["namespace"])
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": kind,
                "name": involved["name"],
                "namespace": namespace,
                "uid": involved.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.client.request(
            "POST", object_path("v1", "Event", namespace), body=event, resource="events"
        )
