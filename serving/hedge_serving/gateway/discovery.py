"""Kubernetes discovery: ModelDeployments, EndpointSlices and referenced Secrets → routes.

The gateway never calls the API server per request. `hedge_core.kube.ListWatch` loops keep
in-memory copies, and every change rebuilds the routing table from them:

- `modeldeployments.hedge.dev/v1alpha1`, parsed by `hedge_core.api` (the same reader as
  the operator and the CRD): model names (plus adapters), serving options, fallback
  providers and the Secrets their keys live in. An object the API module rejects is
  skipped with one log line; the operator reports it as a condition;
- `endpointslices.discovery.k8s.io/v1` labelled `hedge.dev/model-deployment`: the ready
  endpoints (port `http`) of each ModelDeployment's engine pods, from the shared Service's
  slices and each revision's headless Service's (labelled `hedge.dev/revision`), which say
  which revision each endpoint runs. A label is not trust (anyone who may create a Service
  in the namespace can set it): a slice counts only when its `kubernetes.io/service-name`
  is one of the Services the operator names for that ModelDeployment, a revision's only
  for a revision its status names (`trusted_slice`);
- each ModelDeployment's status.rollout: the canary revision and its weight (the operator's
  decision; the route splits the requests by it) and an aborted revision (never routed);
- each referenced provider-key Secret, watched by name *and* the opt-in label
  `hedge.dev/provider-key=true`, so an unlabelled Secret never reaches the gateway's
  memory whatever a ModelDeployment names; of a Secret only the referenced keys are kept,
  and a rotated key is used on the next request. The client-keys Secret is watched apart
  (by name, no label needed) and is never a provider key, even when labelled;
- with `client_policies`, `clientpolicies.hedge.dev/v1alpha1` (tenants) and each client-key
  Secret one names in its own namespace, watched by name *and* the opt-in label
  `hedge.dev/client-key=true`; of those Secrets only the SHA-256 digests of the keys are
  kept (`tenants.secret_digests`), and every change gives the auth the policies' keys anew,
  so a rotated key works (and the old one stops) on the next request without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hedge_core.api import (
    API_VERSION,
    CLIENT_POLICY_PLURAL,
    MD_LABEL,
    PLURAL,
    REVISION_LABEL,
    ClientPolicy,
    FallbackBudgetStatus,
    ModelDeployment,
    RolloutStatus,
    SpecError,
    unix_seconds,
)
from hedge_core.contracts import (
    CLIENT_KEY_SELECTOR,
    PROVIDER_KEY_SELECTOR,
    SERVICE_NAME_LABEL,
    created_seconds,
    ownership_key,
    revision_service_name,
    shared_service_name,
)
from hedge_core.kube import Key, Kube, KubeConfigError, ListWatch, object_key, resource_path
from hedge_core.statuses import FALLBACK_BUDGET, ROLLOUT, read
from hedge_serving.gateway.auth import ClientAuth, keys_from_secret
from hedge_serving.gateway.budget import BudgetSpec
from hedge_serving.gateway.keys import SecretCache
from hedge_serving.gateway.routing import (
    ProviderSpec,
    ProviderType,
    RouteSpec,
    RoutingTable,
    SecretRef,
    ServingOptions,
)
from hedge_serving.gateway.tenants import policy_keys, secret_digests

__all__ = [
    "KubeConfigError",
    "KubernetesDiscovery",
    "ready_endpoints",
    "routes_for",
    "trusted_slice",
]

log = logging.getLogger("hedge.gateway.discovery")

WATCH_TIMEOUT_S = 240  # server-side; the watch is re-opened from the last resourceVersion


# --------------------------------------------------------------------- spec -> routes


def _created(meta: Mapping[str, Any]) -> int:
    return created_seconds(meta.get("creationTimestamp"))


@dataclass(frozen=True)
class Rollout:
    """What the gateway reads of status.rollout (the operator's decision)."""

    canary: str | None = None  # the revision being rolled out
    weight: int | None = None  # its share in percent; None: no split
    stable: str | None = None
    aborted: str | None = None  # never routed

    @classmethod
    def from_status(cls, status: Any) -> Rollout:
        r = read(RolloutStatus, status.get(ROLLOUT) if isinstance(status, Mapping) else None)
        return cls(
            canary=r.canary_revision or None,
            weight=r.canary_weight,
            stable=r.stable_revision or None,
            aborted=r.aborted_revision or None,
        )


@dataclass(frozen=True)
class Parsed:
    """One ModelDeployment as the gateway uses it (None: rejected by the API module)."""

    version: str
    md: ModelDeployment | None
    created: int
    rollout: Rollout = Rollout()
    budget_status: Mapping[str, Any] | None = None  # status.fallbackBudget


def budget_spec(md: ModelDeployment, status: Mapping[str, Any] | None) -> BudgetSpec | None:
    """spec.fallback.budget's limits with the spend status.fallbackBudget reports."""
    fallback = md.spec.fallback
    if fallback is None or fallback.budget is None:
        return None
    spent = read(FallbackBudgetStatus, status)
    return BudgetSpec(
        tokens_per_minute=fallback.budget.tokens_per_minute,
        tokens_per_day=fallback.budget.tokens_per_day,
        minute_start=unix_seconds(spent.minute_start),
        minute_tokens=spent.minute_tokens or 0,
        day_start=unix_seconds(spent.day_start),
        day_tokens=spent.day_tokens or 0,
        exhausted_until=unix_seconds(spent.exhausted_until),
    )


def parse(body: Mapping[str, Any]) -> Parsed:
    meta = body.get("metadata") or {}
    version = str(meta.get("resourceVersion", ""))
    try:
        md = ModelDeployment.from_body(body)
    except SpecError as exc:
        log.warning(
            "%s/%s: not routed, the spec is invalid: %s",
            meta.get("namespace"),
            meta.get("name"),
            exc,
        )
        md = None
    budget = (body.get("status") or {}).get(FALLBACK_BUDGET)
    return Parsed(
        version,
        md,
        _created(meta),
        Rollout.from_status(body.get("status")),
        budget if isinstance(budget, Mapping) else None,
    )


def routes_for(
    md: ModelDeployment,
    backends: Iterable[str] | Mapping[str, str],
    created: int = 0,
    rollout: Rollout | None = None,
    budget_status: Mapping[str, Any] | None = None,
) -> list[RouteSpec]:
    """The RouteSpecs one ModelDeployment contributes (its model and each adapter, all owned
    by it: they share its demand and its canary split). `backends` are URLs, or URL ->
    revision; an aborted revision's backends are left out."""
    spec = md.spec
    providers = []
    if spec.fallback is not None:
        for p in spec.fallback.providers:
            ref = p.api_key_secret_ref
            providers.append(
                ProviderSpec(
                    type=ProviderType.parse(p.type),
                    model=p.model,
                    base_url=p.base_url,
                    api_key=None
                    if ref is None
                    else SecretRef(namespace=md.namespace, name=ref.name, key=ref.key),
                    api_version=p.api_version,
                    deployment=p.deployment,
                )
            )
    fallback = spec.fallback
    options = ServingOptions(
        request_timeout_s=float(spec.serving.request_timeout_seconds),
        max_queue_depth=spec.serving.max_queue_depth,
        fallback_on_unavailable=fallback is None or fallback.on_unavailable,
        fallback_on_overload=fallback is None or fallback.on_overload,
        fallback_on_error=fallback is None or fallback.on_error,
        hold_s=float(spec.serving.hold_seconds),
    )
    rollout = rollout or Rollout()
    by_url = dict(backends) if isinstance(backends, Mapping) else dict.fromkeys(backends, "")
    urls = tuple(
        sorted(u for u, rev in by_url.items() if not rollout.aborted or rev != rollout.aborted)
    )
    revisions = tuple(by_url[u] for u in urls) if any(by_url.values()) else ()
    split = rollout.weight is not None and rollout.canary is not None
    names = [md.served_model, *(a.name for a in spec.adapters)]
    budget = budget_spec(md, budget_status)
    return [
        RouteSpec(
            n,
            urls,
            tuple(providers),
            options,
            owner=md.namespace,
            created=created,
            deployment=(md.namespace, md.name),
            revisions=revisions,
            canary=rollout.canary if split else None,
            canary_weight=rollout.weight if split else None,
            stable=rollout.stable,
            aborted=rollout.aborted,
            budget=budget,
        )
        for n in names
    ]


def ready_endpoints(slice_: Mapping[str, Any]) -> list[str]:
    """`http://addr:port` of the ready endpoints of an EndpointSlice (port named `http`)."""
    ports = slice_.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
    if port is None and ports:
        port = ports[0].get("port")
    if not port:
        return []
    v6 = slice_.get("addressType") == "IPv6"
    urls = []
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for addr in (ep.get("addresses") or [])[:1]:
            urls.append(f"http://[{addr}]:{port}" if v6 else f"http://{addr}:{port}")
    return urls


def trusted_slice(labels: Mapping[str, Any], rollout: Rollout | None) -> bool:
    """Whether an EndpointSlice labelled for a ModelDeployment is one of that object's own:
    its `kubernetes.io/service-name` is the shared Service `<md>`, or the headless Service
    of the revision it is labelled with, and that revision is one the ModelDeployment's
    status names (stable, canary or aborted). `rollout` None: the object is not known."""
    md_name = str(labels.get(MD_LABEL) or "")
    service = labels.get(SERVICE_NAME_LABEL)
    if not md_name or rollout is None:
        return False
    revision = str(labels.get(REVISION_LABEL) or "")
    if not revision:
        return service == shared_service_name(md_name)
    known = {rollout.stable, rollout.canary, rollout.aborted}
    return revision in known and service == revision_service_name(md_name, revision)


def route_specs(
    parsed: Mapping[Key, Parsed], backends: Mapping[Key, Mapping[str, str]]
) -> list[RouteSpec]:
    """Every route, in the order that settles name conflicts: the oldest ModelDeployment
    keeps a model name a newer one also claims (the table keeps the first spec listed).
    A rule for which namespaces may claim which names belongs here."""
    ordered = sorted(
        ((key, p) for key, p in parsed.items() if p.md is not None),
        key=lambda item: ownership_key(item[1].created, *item[0]),
    )
    specs: list[RouteSpec] = []
    for key, p in ordered:
        assert p.md is not None
        specs.extend(routes_for(p.md, backends.get(key, {}), p.created, p.rollout, p.budget_status))
    return specs


# -------------------------------------------------------------------------- watching


class KubernetesDiscovery:
    """The routing table's source in a cluster: one ListWatch per collection and scope."""

    def __init__(
        self,
        table: RoutingTable,
        secrets: SecretCache,
        kube: Kube,
        *,
        namespaces: list[str] | None = None,
        client_keys_secret: str | None = None,
        auth: ClientAuth | None = None,
        client_policies: bool = False,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.table = table
        self.secrets = secrets
        self.kube = kube
        self.namespaces = namespaces or [""]
        self.auth = auth
        self.client_keys_secret: tuple[str, str] | None = None
        if client_keys_secret:
            ns, _, name = client_keys_secret.partition("/")
            if not name:
                raise KubeConfigError("--api-keys-secret must be NAMESPACE/NAME")
            self.client_keys_secret = (ns, name)
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.parsed: dict[str, dict[Key, Parsed]] = {}  # per watched namespace ("" = all)
        self._md_watches: list[ListWatch] = []
        self._slice_watches: list[ListWatch] = []
        # Provider-key Secrets: one watch per Secret, with the data keys routes reference.
        self._secret_watches: dict[Key, ListWatch] = {}
        self._secret_keys: dict[Key, frozenset[str]] = {}
        self._client_keys_watch: ListWatch | None = None
        self._refused: set[Key] = set()  # references to the client-keys Secret, logged once
        self._background: set[asyncio.Task[None]] = set()
        # ClientPolicies (tenants) and the client-key Secrets they reference: one watch per
        # Secret, by name and the opt-in label; only the keys' digests are kept.
        self.client_policies = client_policies
        self._policy_watches: list[ListWatch] = []
        self._policy_invalid: dict[Key, str] = {}  # logged once per resourceVersion
        self._key_secret_watches: dict[Key, ListWatch] = {}
        self._key_digests: dict[Key, dict[str, tuple[bytes, ...]]] = {}

    def _watch(self, path: str, name: str, **kw: Any) -> ListWatch:
        w = ListWatch(
            self.kube,
            path,
            name=name,
            min_backoff_s=self.min_backoff_s,
            max_backoff_s=self.max_backoff_s,
            timeout_s=WATCH_TIMEOUT_S,
            **kw,
        )
        w.start()
        return w

    async def start(self) -> None:
        for ns in self.namespaces:
            where = f"@{ns}" if ns else ""
            self._md_watches.append(
                self._watch(
                    resource_path(API_VERSION, PLURAL, ns or None),
                    f"modeldeployments{where}",
                    on_list=functools.partial(self._on_md_list, ns),
                    on_event=functools.partial(self._on_md_event, ns),
                )
            )
            self._slice_watches.append(
                self._watch(
                    resource_path("discovery.k8s.io/v1", "endpointslices", ns or None),
                    f"endpointslices{where}",
                    params={"labelSelector": MD_LABEL},
                    on_list=lambda _: self.changed(),
                    on_event=lambda _t, _o: self.changed(),
                )
            )
            if self.client_policies:
                self._policy_watches.append(
                    self._watch(
                        resource_path(API_VERSION, CLIENT_POLICY_PLURAL, ns or None),
                        f"clientpolicies{where}",
                        on_list=lambda _: self._policies_changed(),
                        on_event=lambda _t, _o: self._policies_changed(),
                    )
                )
        if self.client_keys_secret is not None:
            ns, name = self.client_keys_secret
            self._client_keys_watch = self._watch(
                f"/api/v1/namespaces/{quote(ns)}/secrets",
                f"client keys secret {ns}/{name}",
                params={"fieldSelector": f"metadata.name={name}"},
                on_list=lambda _: self._client_keys_changed(),
                on_event=lambda _t, _o: self._client_keys_changed(),
            )

    async def stop(self) -> None:
        watches = [
            *self._md_watches,
            *self._slice_watches,
            *self._secret_watches.values(),
            *self._policy_watches,
            *self._key_secret_watches.values(),
        ]
        if self._client_keys_watch is not None:
            watches.append(self._client_keys_watch)
        for w in watches:
            await w.stop()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._md_watches.clear()
        self._slice_watches.clear()
        self._secret_watches.clear()
        self._secret_keys.clear()
        self._client_keys_watch = None
        self._policy_watches.clear()
        self._key_secret_watches.clear()
        self._key_digests.clear()

    def synced(self) -> bool:
        """Whether every watched collection has been listed at least once."""
        return all(w.synced.is_set() for w in (*self._md_watches, *self._slice_watches))

    async def wait_synced(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            for w in (*self._md_watches, *self._slice_watches):
                await w.synced.wait()

    # -- caches -> table ----------------------------------------------------------------

    def _on_md_list(self, scope: str, items: list[dict[str, Any]]) -> None:
        """A (re-)list replaces what that namespace's loop knew; unchanged objects keep
        their parse."""
        old = self.parsed.get(scope, {})
        fresh: dict[Key, Parsed] = {}
        for item in items:
            key = object_key(item)
            version = str((item.get("metadata") or {}).get("resourceVersion", ""))
            known = old.get(key)
            fresh[key] = known if known is not None and known.version == version else parse(item)
        self.parsed[scope] = fresh
        self.changed()

    def _on_md_event(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        parsed = self.parsed.setdefault(scope, {})
        if kind == "DELETED":
            parsed.pop(object_key(obj), None)
        else:
            parsed[object_key(obj)] = parse(obj)
        self.changed()

    def _watch_secret(self, ref: Key, keys: frozenset[str]) -> None:
        """Watch one provider-key Secret (only if it opted in) for these data keys; a
        watch for other keys is replaced, since a watch keeps no more than its keys."""
        if ref in self._secret_watches:
            if self._secret_keys.get(ref) == keys:
                return
            self._stop_secret_watch(ref)
        ns, name = ref
        self._secret_keys[ref] = keys
        self._secret_watches[ref] = self._watch(
            f"/api/v1/namespaces/{quote(ns)}/secrets",
            f"secret {ns}/{name}",
            params={
                "fieldSelector": f"metadata.name={name}",
                "labelSelector": PROVIDER_KEY_SELECTOR,
            },
            on_list=lambda items: self._secret_listed(ref, items),
            on_event=lambda kind, obj: self._secret_event(ref, kind, obj),
        )

    def _stop_secret_watch(self, ref: Key) -> None:
        task = asyncio.get_running_loop().create_task(self._secret_watches.pop(ref).stop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._secret_keys.pop(ref, None)
        self.secrets.set_secret(ref[0], ref[1], None)

    def _secret_listed(self, ref: Key, items: list[dict[str, Any]]) -> None:
        found = next((i for i in items if object_key(i) == ref), None)
        self._secret_event(ref, "ADDED" if found is not None else "DELETED", found or {})

    def _secret_event(self, ref: Key, kind: str, obj: dict[str, Any]) -> None:
        """Keep the referenced keys' values in the key cache and nothing else: the watch's
        own copy of the Secret is stripped of its data (and annotations, which may hold a
        last-applied copy of it) at once."""
        if self._secret_watches.get(ref) is None:
            return
        if kind == "DELETED" or not obj:
            self.secrets.set_secret(ref[0], ref[1], None)
            return
        keys = self._secret_keys.get(ref, frozenset())
        data = _decode(obj, keys)
        _strip(obj)
        self.secrets.set_secret(ref[0], ref[1], data)

    def _client_keys_changed(self) -> None:
        w = self._client_keys_watch
        if w is None or self.client_keys_secret is None:
            return
        secret = w.items.get(self.client_keys_secret)
        data = _decode(secret) if secret is not None else {}
        if secret is not None:
            _strip(secret)
        if self.auth is not None:
            self.auth.set_keys(keys_from_secret(data))

    def _policies_changed(self) -> None:
        """The ClientPolicies or their key Secrets changed: watch the Secrets they name,
        and give the auth every policy key (as digests) with its tenant."""
        policies: list[ClientPolicy] = []
        for w in self._policy_watches:
            for key, body in w.items.items():
                version = str((body.get("metadata") or {}).get("resourceVersion", ""))
                try:
                    policies.append(ClientPolicy.from_body(body))
                    self._policy_invalid.pop(key, None)
                except SpecError as exc:
                    if self._policy_invalid.get(key) != version:
                        self._policy_invalid[key] = version
                        log.warning(
                            "ClientPolicy %s/%s: its keys authenticate nothing, the spec is "
                            "invalid: %s",
                            *key,
                            exc,
                        )
        wanted = {(p.namespace, ref.secret_name) for p in policies for ref in p.keys}
        for ref in wanted - set(self._key_secret_watches):
            ns, name = ref
            self._key_secret_watches[ref] = self._watch(
                f"/api/v1/namespaces/{quote(ns)}/secrets",
                f"client-key secret {ns}/{name}",
                params={
                    "fieldSelector": f"metadata.name={name}",
                    "labelSelector": CLIENT_KEY_SELECTOR,
                },
                on_list=lambda items, r=ref: self._key_secret_listed(r, items),
                on_event=lambda kind, obj, r=ref: self._key_secret_event(r, kind, obj),
            )
        for ref in [r for r in self._key_secret_watches if r not in wanted]:
            task = asyncio.get_running_loop().create_task(self._key_secret_watches.pop(ref).stop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            self._key_digests.pop(ref, None)
        if self.auth is None:
            return
        entries = []
        for policy in policies:
            found = {
                name: digests
                for (ns, name), digests in self._key_digests.items()
                if ns == policy.namespace
            }
            entries.extend(policy_keys(policy, found))
        self.auth.set_policy_keys(entries)

    def _key_secret_listed(self, ref: Key, items: list[dict[str, Any]]) -> None:
        found = next((i for i in items if object_key(i) == ref), None)
        self._key_secret_event(ref, "ADDED" if found is not None else "DELETED", found or {})

    def _key_secret_event(self, ref: Key, kind: str, obj: dict[str, Any]) -> None:
        """Keep the digests of a client-key Secret's keys, never the keys: the watch's own
        copy is stripped of its data at once."""
        if ref not in self._key_secret_watches:
            return
        if kind == "DELETED" or not obj:
            self._key_digests.pop(ref, None)
        else:
            self._key_digests[ref] = secret_digests(_decode(obj))
            _strip(obj)
        self._policies_changed()

    def changed(self) -> None:
        """Rebuild the routing table from what the watches hold; watch the Secrets the
        routes need, and stop watching those no route needs any more."""
        parsed = {key: p for scope in self.parsed.values() for key, p in scope.items()}
        backends: dict[Key, dict[str, str]] = {}  # URL -> revision ("": not known)
        for w in self._slice_watches:
            for (ns, _), s in w.items.items():
                labels = (s.get("metadata") or {}).get("labels") or {}
                md_name = str(labels.get(MD_LABEL) or "")
                known = parsed.get((ns, md_name))
                if not trusted_slice(labels, None if known is None else known.rollout):
                    continue
                revision = str(labels.get(REVISION_LABEL) or "")
                urls = backends.setdefault((ns, md_name), {})
                for url in ready_endpoints(s):
                    # The shared Service's slices list every revision's pods but cannot say
                    # which is which; a revision's own slice can.
                    if revision or url not in urls:
                        urls[url] = revision
        specs = route_specs(parsed, backends)
        self.table.replace(specs)
        wanted: dict[Key, set[str]] = {}
        for spec in specs:
            for p in spec.fallback:
                if p.api_key is not None and p.api_key.namespace and p.api_key.name:
                    ref = (p.api_key.namespace, p.api_key.name)
                    if ref == self.client_keys_secret:
                        self._refuse(ref)  # never a provider key, labelled or not
                        continue
                    wanted.setdefault(ref, set()).add(p.api_key.key or DEFAULT_SECRET_KEY)
        for ref, keys in wanted.items():
            self._watch_secret(ref, frozenset(keys))
        for ref in [r for r in self._secret_watches if r not in wanted]:
            self._stop_secret_watch(ref)

    def _refuse(self, ref: Key) -> None:
        if ref not in self._refused:
            self._refused.add(ref)
            log.warning(
                "Secret %s/%s holds the gateway's client keys and is never used as a "
                "provider key: the fallback providers that name it get no key",
                *ref,
            )


DEFAULT_SECRET_KEY = "api-key"  # apiKeySecretRef without `key`


def _decode(secret: Mapping[str, Any], keys: frozenset[str] | None = None) -> dict[str, str]:
    """The decoded data of a Secret: only `keys` when given."""
    out: dict[str, str] = {}
    for k, v in (secret.get("data") or {}).items():
        if keys is None or k in keys:
            with contextlib.suppress(ValueError, TypeError):
                out[str(k)] = base64.b64decode(v).decode("utf-8")
    for k, v in (secret.get("stringData") or {}).items():
        if keys is None or k in keys:
            out[str(k)] = str(v)
    return out


def _strip(secret: dict[str, Any]) -> None:
    """Drop a watched Secret's values from the watch's cache: only what the watch needs to
    resume (name, namespace, resourceVersion) stays."""
    secret.pop("data", None)
    secret.pop("stringData", None)
    meta = secret.get("metadata") or {}
    secret["metadata"] = {
        k: meta[k] for k in ("name", "namespace", "resourceVersion", "uid") if k in meta
    }
