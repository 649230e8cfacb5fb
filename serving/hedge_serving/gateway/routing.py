"""The in-memory routing table: model name -> self-hosted backends, fallback, options.

Sources (the static routes file, the Kubernetes watcher) hand the table a complete list of
`RouteSpec` values whenever something changes; `replace` swaps the table atomically and
keeps the live state (`Backend`: outstanding count, circuit breaker, scraped queue depth)
of every backend URL that is still listed, so a table update never resets load counts.
Requests only read the table: one dict lookup per request.

Tenants: a bare model name belongs to the oldest ModelDeployment that claims it (the first
spec listed); every model of a namespace is also reachable as `<namespace>/<name>`, and no
served name of another namespace can take that form (`contracts.shadowed_namespace`); and a
request whose client key is bound to namespaces resolves names among those namespaces only
(`resolve(model, scope)`), so no other namespace can take its traffic (docs/gateway.md).

Every route knows the ModelDeployment it belongs to (`RouteSpec.deployment`; a model and its
adapters share one), and the table keeps one `Demand` per ModelDeployment, reused across
updates like the backends: the requests in flight for it by state and the arrivals, which the
metrics read at scrape time and the operator's autoscaler sums over every gateway replica.

Revisions: each backend knows the revision its pod runs (from the per-revision EndpointSlices)
and the `RevisionCounters` its attempts are counted in; while a canary runs, the route carries
its ModelDeployment's `Split` (one per ModelDeployment, kept across updates like `Demand`),
which gives the canary exactly its weight of the requests.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hedge_core.contracts import DEMAND_STATES, shadowed_namespace
from hedge_serving.gateway.balancer import stable_hash
from hedge_serving.gateway.breaker import CircuitBreaker
from hedge_serving.gateway.budget import BudgetMeter, BudgetSpec
from hedge_serving.gateway.revisions import RevisionCounters, Split

ModelKey = tuple[str, str]
"""(namespace, ModelDeployment name); a static route's namespace is empty."""


class DemandState(enum.IntEnum):
    """Where a request in flight is (the `state` label of hedge_gateway_demand_in_flight)."""

    SELF_HOSTED = 0  # routed to (or choosing) a self-hosted backend
    HELD = 1  # waiting for a backend to become ready (scale from zero)
    FALLBACK = 2  # served by a fallback provider


DEMAND_STATE_LABELS = DEMAND_STATES  # the `state` label, by DemandState


class Demand:
    """One ModelDeployment's live demand at this gateway. The request path bumps plain
    integers (no label lookups); the metrics collector reads them when scraped."""

    __slots__ = ("arrivals", "budget", "fallback_tokens", "in_flight", "key")

    def __init__(self, key: ModelKey) -> None:
        self.key = key
        self.in_flight = [0, 0, 0]  # indexed by DemandState
        self.arrivals = 0
        self.fallback_tokens: dict[str, int] = {}  # provider label -> tokens
        self.budget = BudgetMeter()

    def __repr__(self) -> str:
        return f"Demand({self.key!r}, in_flight={self.in_flight}, arrivals={self.arrivals})"


class ProviderType(enum.StrEnum):
    OPENAI = "openai"
    AZURE_OPENAI = "azure-openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai-compatible"

    @classmethod
    def parse(cls, value: str) -> ProviderType:
        """Accepts `openai`, `azure-openai`, ... and the CRD's `OpenAI`, `AzureOpenAI`, ..."""
        key = value.replace("-", "").replace("_", "").lower()
        for member in cls:
            if member.value.replace("-", "") == key:
                return member
        raise ValueError(
            f"unknown provider type {value!r} (expected one of: "
            + ", ".join(m.value for m in cls)
            + ")"
        )


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where an API key lives: an environment variable, a file, or a Kubernetes Secret."""

    env: str | None = None
    file: str | None = None
    namespace: str | None = None
    name: str | None = None
    key: str | None = None

    def describe(self) -> str:
        if self.env:
            return f"env {self.env}"
        if self.file:
            return f"file {self.file}"
        return f"secret {self.namespace}/{self.name}[{self.key}]"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    type: ProviderType
    model: str
    base_url: str | None = None
    api_key: SecretRef | None = None
    api_version: str | None = None  # azure-openai
    deployment: str | None = None  # azure-openai
    max_tokens: int = 4096  # anthropic requires max_tokens; used when the client omits it
    name: str = ""  # the `x-hedge-served-by` value; defaults to the type

    @property
    def label(self) -> str:
        return self.name or self.type.value


class FallbackReason(enum.StrEnum):
    UNAVAILABLE = "Unavailable"  # no ready self-hosted backend
    OVERLOADED = "Overloaded"  # every backend's queue above maxQueueDepth
    ERROR = "Error"  # self-hosted attempts failed after retries


@dataclass(frozen=True, slots=True)
class ServingOptions:
    request_timeout_s: float = 300.0
    max_queue_depth: int = 16
    fallback_on_unavailable: bool = True
    fallback_on_overload: bool = True
    fallback_on_error: bool = True
    # No ready backend and no fallback taking the request: wait this long for one (a model
    # scaling from zero), then 503. 0 answers at once.
    hold_s: float = 0.0

    def falls_back_on(self, reason: FallbackReason) -> bool:
        if reason is FallbackReason.UNAVAILABLE:
            return self.fallback_on_unavailable
        if reason is FallbackReason.OVERLOADED:
            return self.fallback_on_overload
        return self.fallback_on_error


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What a source says about one model name."""

    model: str
    backends: tuple[str, ...] = ()
    fallback: tuple[ProviderSpec, ...] = ()
    options: ServingOptions = field(default_factory=ServingOptions)
    owner: str = "hedge"  # namespace (Kubernetes) or "hedge"; shown as `owned_by`
    created: int = 0  # unix seconds; shown as `created` in /v1/models
    # The owning ModelDeployment; None (a static route without one): ("", model).
    deployment: ModelKey | None = None
    # The revision of each backend, in the same order ("": unknown); empty: all unknown.
    revisions: tuple[str, ...] = ()
    # A canary in progress: its revision and share in percent of the ModelDeployment's
    # requests (None: no split, every ready backend serves).
    canary: str | None = None
    canary_weight: int | None = None
    # Revisions whose counters outlive their pods: the stable one, and an aborted canary
    # (never routed, but what it did stays on /metrics while it is the aborted one).
    stable: str | None = None
    aborted: str | None = None
    # The fallback budget: limits and the spend status reports (None: no ceiling).
    budget: BudgetSpec | None = None

    @property
    def deployment_key(self) -> ModelKey:
        return self.deployment if self.deployment is not None else ("", self.model)


def normalize_backend_url(url: str) -> str:
    """`http://10.0.0.1:8000/v1/` -> `http://10.0.0.1:8000` (requests carry `/v1/...`)."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not url.startswith("http://"):
        # Engine pods serve plain HTTP on the cluster network; the pooled client is HTTP only.
        raise ValueError(f"backend URL must start with http://: {url!r}")
    return url


class Backend:
    """Live state of one self-hosted endpoint (a vLLM pod)."""

    __slots__ = (
        "affinity_seed",
        "breaker",
        "counters",
        "inflight_at_scrape",
        "outstanding",
        "revision",
        "scraped_at",
        "url",
        "waiting",
    )

    def __init__(self, url: str, breaker: CircuitBreaker) -> None:
        self.url = url
        self.affinity_seed = stable_hash(url)
        self.breaker = breaker
        self.revision = ""  # the revision its pod runs ("": unknown)
        self.counters: RevisionCounters | None = None  # where its attempts are counted
        self.outstanding = 0
        # vllm:num_requests_waiting as last scraped, and our own in-flight count then.
        self.waiting: float = 0.0
        self.inflight_at_scrape = 0
        self.scraped_at: float | None = None

    def queue_estimate(self) -> float:
        """Requests waiting on the engine: last scrape plus what we sent since."""
        if self.scraped_at is None:
            return 0.0
        return self.waiting + max(0, self.outstanding - self.inflight_at_scrape)

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, outstanding={self.outstanding})"


class Route:
    """One model name as the request path sees it."""

    __slots__ = (
        "backends",
        "created",
        "demand",
        "deployment",
        "fallback",
        "label",
        "model",
        "namespace",
        "options",
        "owner",
        "rank",
        "split",
    )

    def __init__(
        self,
        spec: RouteSpec,
        backends: tuple[Backend, ...],
        demand: Demand,
        rank: int = 0,
        split: Split | None = None,
    ) -> None:
        self.model = spec.model
        self.backends = backends
        self.fallback = spec.fallback
        self.options = spec.options
        self.owner = spec.owner
        self.created = spec.created
        self.deployment = demand.key
        self.demand = demand
        self.split = split  # set while a canary of its ModelDeployment runs
        # The namespace of a Kubernetes route (None for a static one), and the route's place
        # in the table (lower: older claim), which settles names between namespaces.
        self.namespace = spec.deployment[0] if spec.deployment and spec.deployment[0] else None
        self.rank = rank
        # What metrics and logs call it: the bare name where this route owns it, else
        # `<namespace>/<name>` (two namespaces' routes never share a series).
        self.label = spec.model


class RoutingTable:
    def __init__(
        self,
        breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker,
        on_change: Callable[[RoutingTable], None] | None = None,
    ) -> None:
        self._breaker_factory = breaker_factory
        self._routes: dict[str, Route] = {}
        self._qualified: dict[str, Route] = {}  # "<namespace>/<name>"
        self._by_namespace: dict[str, dict[str, Route]] = {}
        self._backends: dict[str, Backend] = {}
        self._demand: dict[ModelKey, Demand] = {}
        self._splits: dict[ModelKey, Split] = {}
        self._revisions: dict[tuple[str, str, str], RevisionCounters] = {}
        self._listeners: list[Callable[[RoutingTable], None]] = []
        if on_change is not None:
            self._listeners.append(on_change)
        self.version = 0
        self.updated_at = time.monotonic()
        self._changed: asyncio.Future[None] | None = None

    def changed(self) -> asyncio.Future[None]:
        """A future resolved by the next `replace` (shared by every waiter: shield it
        before a timeout cancels it)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def resolve(self, model: str, scope: frozenset[str] | None = None) -> Route | None:
        """The route for `model` as a caller with this scope sees it (None: every namespace).

        `<namespace>/<name>` names that namespace's model (when the caller may see the
        namespace); a bare name is the oldest claim among the caller's namespaces, or the
        table's owner of that name for an unscoped caller.
        """
        if scope is None:
            if "/" in model:
                route = self._qualified.get(model)
                if route is not None:
                    return route
            return self._routes.get(model)
        if "/" in model:
            namespace, _, name = model.partition("/")
            if namespace in scope:
                route = self._by_namespace.get(namespace, {}).get(name)
                if route is not None:
                    return route
        best: Route | None = None
        for namespace in scope:
            route = self._by_namespace.get(namespace, {}).get(model)
            if route is not None and (best is None or route.rank < best.rank):
                best = route
        return best

    def current(self, route: Route) -> Route | None:
        """`route` as the table has it now: the same model name of the same ModelDeployment
        (namespace and name), or None once that ModelDeployment no longer serves it. Never
        another namespace's route of that name: a request resolved for one ModelDeployment
        (a held one, say) stays with it whatever the table says the bare name means now."""
        namespace, _ = route.deployment
        if namespace:
            found = self._by_namespace.get(namespace, {}).get(route.model)
        else:
            found = self._routes.get(route.model)
        return found if found is not None and found.deployment == route.deployment else None

    def routes(self) -> list[Route]:
        """The routes of bare model names (each name's owner)."""
        return list(self._routes.values())

    def all_routes(self) -> list[Route]:
        """Every route once, also those reachable only by their qualified name."""
        seen = {id(r): r for r in self._routes.values()}
        for route in self._qualified.values():
            seen.setdefault(id(route), route)
        return list(seen.values())

    def listing(self, scope: frozenset[str] | None = None) -> list[tuple[str, Route]]:
        """(id, route) of every model this caller can reach, each once: its bare name when
        that resolves to it for the caller, its qualified name otherwise."""
        if scope is None:
            candidates = list(self._qualified.items())
            unqualified = [r for r in self._routes.values() if r.namespace is None]
            seen = {id(r) for r in unqualified}
            out = [(r.model, r) for r in unqualified]
        else:
            candidates = [
                (f"{ns}/{name}", r)
                for ns in scope
                for name, r in self._by_namespace.get(ns, {}).items()
            ]
            out, seen = [], set()
        for qualified, route in candidates:
            if id(route) in seen:
                continue
            seen.add(id(route))
            bare = self.resolve(route.model, scope)
            out.append((route.model if bare is route else qualified, route))
        return sorted(out, key=lambda item: item[0])

    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    def demands(self) -> list[Demand]:
        """The live demand of every ModelDeployment in the table."""
        return list(self._demand.values())

    def revision_counters(self) -> list[RevisionCounters]:
        """The counters of every revision in the table (with backends, or the stable or
        canary revision of its ModelDeployment)."""
        return list(self._revisions.values())

    def replace(self, specs: Iterable[RouteSpec]) -> None:
        """Swap in a complete new table. The first spec listed for a model name owns the bare
        name; in its namespace, each later one is reachable as `<namespace>/<name>`."""
        backends: dict[str, Backend] = {}
        routes: dict[str, Route] = {}
        qualified: dict[str, Route] = {}
        by_namespace: dict[str, dict[str, Route]] = {}
        demand: dict[ModelKey, Demand] = {}
        splits: dict[ModelKey, Split] = {}
        revisions: dict[tuple[str, str, str], RevisionCounters] = {}

        def counters(key: ModelKey, revision: str) -> RevisionCounters:
            rkey = (key[0], key[1], revision)
            c = revisions.get(rkey) or self._revisions.get(rkey)
            if c is None:
                c = RevisionCounters(rkey)
            revisions[rkey] = c
            return c

        for rank, spec in enumerate(specs):
            namespace = spec.deployment[0] if spec.deployment and spec.deployment[0] else None
            if namespace is not None and shadowed_namespace(spec.model, namespace):
                continue  # `team-a/llama` served by team-b: never routed (the operator says)
            if spec.model in routes and (
                namespace is None or spec.model in by_namespace.get(namespace, {})
            ):
                continue  # a newer claim on a name its namespace (or the table) already has
            key = spec.deployment_key
            d = demand.get(key) or self._demand.get(key)
            if d is None:
                d = Demand(key)
            if key not in demand:
                d.budget.update(spec.budget)
            demand[key] = d
            live: list[Backend] = []
            for i, raw in enumerate(spec.backends):
                url = normalize_backend_url(raw)
                b = backends.get(url) or self._backends.get(url)
                if b is None:
                    b = Backend(url, self._breaker_factory())
                backends[url] = b
                revision = spec.revisions[i] if i < len(spec.revisions) else ""
                b.revision = revision
                b.counters = counters(key, revision) if revision else None
                if b not in live:
                    live.append(b)
            for named in (spec.stable, spec.canary, spec.aborted):
                if named:
                    counters(key, named)
            split: Split | None = None
            if spec.canary and spec.canary_weight is not None:
                split = splits.get(key) or self._splits.get(key)
                if split is None or split.canary != spec.canary:
                    split = Split(spec.canary, spec.canary_weight)
                split.weight = spec.canary_weight
                splits[key] = split
            route = Route(spec, tuple(live), d, rank, split)
            routes.setdefault(spec.model, route)
            if namespace is not None:
                qualified[f"{namespace}/{spec.model}"] = route
                by_namespace.setdefault(namespace, {})[spec.model] = route
        for name, route in qualified.items():
            if routes.get(route.model) is not route:
                route.label = name
        self._routes = routes
        self._qualified = qualified
        self._by_namespace = by_namespace
        self._backends = backends
        self._demand = demand
        self._splits = splits
        self._revisions = revisions
        self.version += 1
        self.updated_at = time.monotonic()
        for listener in self._listeners:
            listener(self)
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)  # wakes requests held for a backend

    def subscribe(self, listener: Callable[[RoutingTable], None]) -> None:
        """Call `listener(table)` after every `replace` (state keyed by model or backend is
        pruned this way, so it never outlives the table)."""
        self._listeners.append(listener)
