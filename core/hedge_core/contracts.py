"""Pure: the names the gateway, the operator and the engines agree on, each spelled once.

    what                                   written by                 read by
    ─────────────────────────────────────  ─────────────────────────  ──────────────────────
    gateway admin /metrics series and       gateway.metrics            operator signals
      their labels (docs/contracts.md)        (prometheus_client)        (the scraper's parser)
    vLLM's queue and KV-cache gauges        vLLM, the simulator        gateway.engine_metrics,
                                                                         operator signals
    who owns a bare model name that         -                          gateway.discovery
      several ModelDeployments claim                                     (route order), operator
                                                                         names (conflicts)
    the label a Secret opts in with to      the platform / tenant      gateway.discovery (its
      be read as a provider key                                          watch), operator
                                                                         validation
    the label a Secret opts in with to      the tenant                 gateway (its watch),
      be read for client keys                                            operator tenants
    the engine Services a ModelDeployment   operator builders          gateway.discovery (which
      owns, by name                                                      EndpointSlices count)
    which served names would shadow         -                          gateway.routing (never
      another namespace's qualified name                                 routed), operator
                                                                         validation (refused)

A counter's name is its exposed sample name (`..._total`): prometheus_client strips the
suffix when it registers a counter and adds it back on exposition, so the same string
serves both sides. Histograms are named by family; their samples add `_bucket`, `_sum` and
`_count`.

Imports nothing but the standard library and `hedge_core.api` (for `unix_seconds`).
"""

from __future__ import annotations

from typing import Any

from hedge_core.api import unix_seconds

# -- where /metrics is --------------------------------------------------------------------

METRICS_PATH = "/metrics"  # gateways' admin port and engines alike
ADMIN_PORT_NAME = "admin"  # the gateways' admin Service port, found through EndpointSlices

# -- gateway series the operator scrapes ---------------------------------------------------

NAMESPACE = "namespace"
MODEL_DEPLOYMENT = "model_deployment"
STATE = "state"
REVISION = "revision"
OUTCOME = "outcome"
PROVIDER = "provider"
TENANT = "tenant"  # a ClientPolicy, `<namespace>/<policy>`
KEY = "key"  # the name its policy gives a client key (never the key)
MODEL = "model"  # the model name the client asked for
SERVED_BY = "served_by"  # self-hosted, a fallback provider's label, or gateway (refused)

#: gauge {namespace, model_deployment, state}: requests in flight at one gateway.
DEMAND_IN_FLIGHT = "hedge_gateway_demand_in_flight"
#: counter {namespace, model_deployment}: requests that arrived.
DEMAND_ARRIVALS = "hedge_gateway_demand_arrivals_total"
#: counter {namespace, model_deployment, revision, outcome}: self-hosted attempts.
REVISION_REQUESTS = "hedge_gateway_revision_requests_total"
#: histogram {namespace, model_deployment, revision}: time to first token.
REVISION_TTFT = "hedge_gateway_revision_ttft_seconds"
#: histogram {namespace, model_deployment, revision}: each request's mean inter-token gap.
REVISION_ITL = "hedge_gateway_revision_itl_seconds"
#: counter {namespace, model_deployment, provider}: tokens the fallback providers reported.
FALLBACK_TOKENS = "hedge_gateway_fallback_tokens_total"

#: counter {tenant, key, model, served_by}: requests of ClientPolicy tenants.
TENANT_REQUESTS = "hedge_gateway_tenant_requests_total"
#: counter {tenant, key, model, served_by}: their tokens (prompt + completion).
TENANT_TOKENS = "hedge_gateway_tenant_tokens_total"
#: counter {tenant, key, model}: their requests refused with 429 by a ClientPolicy limit.
TENANT_RATE_LIMITED = "hedge_gateway_tenant_rate_limited_total"
#: `served_by` of a request the gateway answered itself (refused, or no model to serve it).
SERVED_BY_GATEWAY = "gateway"
SERVED_BY_SELF = "self-hosted"

MODEL_LABELS = (NAMESPACE, MODEL_DEPLOYMENT)
TENANT_LABELS = (TENANT, KEY, MODEL, SERVED_BY)
REVISION_LABELS = (NAMESPACE, MODEL_DEPLOYMENT, REVISION)

#: Each scraped series and its labels, in the order the gateway writes them.
GATEWAY_SERIES: dict[str, tuple[str, ...]] = {
    DEMAND_IN_FLIGHT: (*MODEL_LABELS, STATE),
    DEMAND_ARRIVALS: MODEL_LABELS,
    REVISION_REQUESTS: (*REVISION_LABELS, OUTCOME),
    REVISION_TTFT: REVISION_LABELS,
    REVISION_ITL: REVISION_LABELS,
    FALLBACK_TOKENS: (*MODEL_LABELS, PROVIDER),
    TENANT_REQUESTS: TENANT_LABELS,
    TENANT_TOKENS: TENANT_LABELS,
    TENANT_RATE_LIMITED: (TENANT, KEY, MODEL),
}
#: The tenant series, for usage reports (the operator's status.usage, `hedge usage`).
TENANT_SERIES = (TENANT_REQUESTS, TENANT_TOKENS, TENANT_RATE_LIMITED)
#: Line prefixes that select the scraped series on a gateway's page (and their comments).
#: The tenant counters are selected by their sample names: prometheus_client adds a
#: `..._created` gauge beside each labelled Counter, which nobody reads.
GATEWAY_PREFIXES = (
    "hedge_gateway_demand_",
    "hedge_gateway_revision_",
    FALLBACK_TOKENS,
    *TENANT_SERIES,
)

#: Values of `state`, by `DemandState` index: routed self-hosted, held while no engine pod
#: is ready (scale from zero), served by a fallback provider.
DEMAND_STATES = ("self_hosted", "held", "fallback")
#: Values of `outcome`, by index (the gateway's revisions.SUCCESS, CLIENT_ERROR, ERROR).
OUTCOMES = ("success", "client_error", "error")

# -- vLLM's gauges -------------------------------------------------------------------------

ENGINE_RUNNING = "vllm:num_requests_running"
ENGINE_WAITING = "vllm:num_requests_waiting"
ENGINE_KV_CACHE = "vllm:kv_cache_usage_perc"
ENGINE_PREFIXES = (ENGINE_RUNNING, ENGINE_WAITING, ENGINE_KV_CACHE)

# -- provider-key Secrets -----------------------------------------------------------------

#: A Secret is read as a fallback provider key only when it carries this label, set to
#: "true": the gateway watches only Secrets with it, the operator refuses references to
#: Secrets without it (docs/gateway.md, "Provider keys"). Any other Secret of the namespace
#: stays out of the gateway's memory, whatever a ModelDeployment names.
PROVIDER_KEY_LABEL = "hedge.dev/provider-key"
PROVIDER_KEY_SELECTOR = f"{PROVIDER_KEY_LABEL}=true"

# -- client-key Secrets -------------------------------------------------------------------

#: A Secret a ClientPolicy names is read for client keys only when it carries this label,
#: set to "true": the gateway lists and watches only Secrets with it, and the operator marks
#: a ClientPolicy naming an unlabelled Secret Ready=False, SecretNotLabelled
#: (docs/tenants.md). An unlabelled Secret never reaches the gateway.
CLIENT_KEY_LABEL = "hedge.dev/client-key"
CLIENT_KEY_SELECTOR = f"{CLIENT_KEY_LABEL}=true"

# -- engine Services -------------------------------------------------------------------------

#: The label the EndpointSlice controller sets on each slice: the Service it is for.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def shared_service_name(md_name: str) -> str:
    """The Service in front of every revision's engine pods of a ModelDeployment."""
    return md_name


def revision_service_name(md_name: str, revision: str) -> str:
    """The headless Service of one revision's engine pods."""
    return f"{md_name}-{revision}"


# -- model-name ownership -------------------------------------------------------------------

OwnershipKey = tuple[int, str, str]

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _namespace_name(text: str) -> bool:
    """Whether `text` can be a namespace name (a DNS-1123 label)."""
    return 0 < len(text) <= 63 and set(text) <= _LABEL_CHARS and text[0] != "-" and text[-1] != "-"


def shadowed_namespace(served_name: str, own_namespace: str) -> str | None:
    """The other namespace whose qualified names `<namespace>/<name>` a served name would
    shadow, or None. Every model is reachable as `<namespace>/<name>`, so a served name
    `team-a/llama` in team-b would catch team-a's clients whenever team-a's `llama` is
    absent. A served name with a `/` is therefore allowed only when its first segment is
    the object's own namespace or cannot be a namespace name at all (`Qwen/Qwen2.5-7B`,
    with capitals, can; `meta-llama/llama-3` outside namespace meta-llama cannot)."""
    prefix, slash, _ = served_name.partition("/")
    if not slash or prefix == own_namespace or not _namespace_name(prefix):
        return None
    return prefix


def created_seconds(creation_timestamp: Any) -> int:
    """`metadata.creationTimestamp` in whole unix seconds, 0 when missing or unreadable.

    Whole seconds because that is the API server's resolution: two objects created in the
    same second are then ordered by namespace and name, on both sides alike."""
    return int(unix_seconds(creation_timestamp) or 0)


def ownership_key(created: float, namespace: str, name: str) -> OwnershipKey:
    """The order that settles a bare model name several ModelDeployments claim: the least
    key owns it — the oldest by `created` (unix seconds, compared whole: see
    `created_seconds`), then by namespace, then by name. Total and stable: no two objects
    share (namespace, name)."""
    return (int(created), namespace, name)


__all__ = [
    "ADMIN_PORT_NAME",
    "DEMAND_ARRIVALS",
    "DEMAND_IN_FLIGHT",
    "DEMAND_STATES",
    "ENGINE_KV_CACHE",
    "ENGINE_PREFIXES",
    "ENGINE_RUNNING",
    "ENGINE_WAITING",
    "FALLBACK_TOKENS",
    "GATEWAY_PREFIXES",
    "GATEWAY_SERIES",
    "KEY",
    "METRICS_PATH",
    "MODEL",
    "MODEL_DEPLOYMENT",
    "MODEL_LABELS",
    "NAMESPACE",
    "OUTCOME",
    "OUTCOMES",
    "PROVIDER",
    "PROVIDER_KEY_LABEL",
    "PROVIDER_KEY_SELECTOR",
    "REVISION",
    "REVISION_ITL",
    "REVISION_LABELS",
    "REVISION_REQUESTS",
    "REVISION_TTFT",
    "SERVED_BY",
    "SERVED_BY_GATEWAY",
    "SERVED_BY_SELF",
    "SERVICE_NAME_LABEL",
    "STATE",
    "TENANT",
    "TENANT_LABELS",
    "TENANT_RATE_LIMITED",
    "TENANT_REQUESTS",
    "TENANT_SERIES",
    "TENANT_TOKENS",
    "OwnershipKey",
    "created_seconds",
    "ownership_key",
    "revision_service_name",
    "shadowed_namespace",
    "shared_service_name",
]
