"""Pure: a ClientPolicy's status from its spec and what its Secrets hold (labels and data
key names only; the driver never passes a value here), and the Event a change of reason
deserves.

    reason             Ready   when
    ─────────────────  ──────  ──────────────────────────────────────────────────────
    InvalidSpec        False   the spec does not parse (the SpecError's text)
    SecretNotFound     False   a Secret named by spec.keys does not exist
    SecretNotReadable  False   the operator may not read it (RBAC: rbac.secretNamespaces)
    SecretNotLabelled  False   it lacks hedge.dev/client-key=true (the gateway ignores it)
    KeyNotFound        False   a secretRef.key is not one of the Secret's data keys
    NoKeys             False   every Secret is there, but they bind no data key at all
    KeysFound          True    otherwise: "N keys in M Secrets"

The first entry of spec.keys that fails decides (rules tried in the table's order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from hedge_core.api import ClientPolicy, ClientPolicyStatus, Condition, SpecError
from hedge_core.contracts import CLIENT_KEY_SELECTOR
from hedge_core.statuses import read, write
from hedge_operator.events import NORMAL, WARNING, Event

READY = "Ready"
KEYS_FOUND = "KeysFound"
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_READABLE = "SecretNotReadable"
SECRET_NOT_LABELLED = "SecretNotLabelled"
KEY_NOT_FOUND = "KeyNotFound"
NO_KEYS = "NoKeys"


@dataclass(frozen=True)
class SecretFacts:
    """What the operator keeps of one Secret: never a value."""

    labelled: bool  # carries hedge.dev/client-key=true
    data_keys: frozenset[str]


#: A Secret's facts; None: it does not exist; NOT_READABLE: the operator may not read it.
NOT_READABLE: Literal["not-readable"] = "not-readable"
Seen = SecretFacts | None | Literal["not-readable"]


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str
    keys: int | None = None  # data keys bound, once every Secret was read


def _missing(policy: ClientPolicy, secrets: Mapping[str, Seen]) -> Verdict | None:
    for name in policy.secret_names:
        seen = secrets.get(name)
        if seen is None:
            return Verdict(
                False,
                SECRET_NOT_FOUND,
                f"Secret {name!r} not found in namespace {policy.namespace}",
            )
        if seen == NOT_READABLE:
            return Verdict(
                False,
                SECRET_NOT_READABLE,
                f"the operator may not read Secret {name!r} in namespace {policy.namespace} "
                "(list the namespace in the chart's rbac.secretNamespaces)",
            )
    return None


def _unlabelled(policy: ClientPolicy, secrets: Mapping[str, Seen]) -> Verdict | None:
    for name in policy.secret_names:
        seen = secrets.get(name)
        if isinstance(seen, SecretFacts) and not seen.labelled:
            return Verdict(
                False,
                SECRET_NOT_LABELLED,
                f"Secret {name!r} is not a client-key Secret: label it {CLIENT_KEY_SELECTOR}",
            )
    return None


def _key_missing(policy: ClientPolicy, secrets: Mapping[str, Seen]) -> Verdict | None:
    for i, ref in enumerate(policy.keys):
        seen = secrets.get(ref.secret_name)
        if isinstance(seen, SecretFacts) and ref.key is not None and ref.key not in seen.data_keys:
            return Verdict(
                False,
                KEY_NOT_FOUND,
                f"Secret {ref.secret_name!r} has no data key {ref.key!r} "
                f"(spec.keys[{i}].secretRef.key)",
            )
    return None


def bound_keys(policy: ClientPolicy, secrets: Mapping[str, Seen]) -> int:
    """How many (Secret, data key) pairs spec.keys binds, among those that exist."""
    pairs: set[tuple[str, str]] = set()
    for ref in policy.keys:
        seen = secrets.get(ref.secret_name)
        if not isinstance(seen, SecretFacts):
            continue
        names = seen.data_keys if ref.key is None else seen.data_keys & {ref.key}
        pairs.update((ref.secret_name, k) for k in names)
    return len(pairs)


def verdict(policy: ClientPolicy, secrets: Mapping[str, Seen]) -> Verdict:
    """Ready or not, and why, by the rules of the module docstring's table."""
    for rule in (_missing, _unlabelled, _key_missing):
        found = rule(policy, secrets)
        if found is not None:
            return found
    count = bound_keys(policy, secrets)
    n_secrets = len(policy.secret_names)
    if count == 0:
        return Verdict(False, NO_KEYS, f"the {n_secrets} Secret(s) named hold no data key", 0)
    noun = "key" if count == 1 else "keys"
    secret_noun = "Secret" if n_secrets == 1 else "Secrets"
    return Verdict(True, KEYS_FOUND, f"{count} {noun} in {n_secrets} {secret_noun}", count)


def invalid(error: SpecError) -> Verdict:
    return Verdict(False, INVALID_SPEC, str(error))


def compute_status(
    old: Mapping[str, Any] | None, generation: int, found: Verdict, now: str
) -> dict[str, Any]:
    """The new status block: the Ready condition (its lastTransitionTime kept while its
    status stays), observedGeneration, keys; usage is kept as the gateways left it."""
    before = read(ClientPolicyStatus, old)
    previous = next((c for c in before.conditions if c.type == READY), None)
    status = "True" if found.ready else "False"
    since = previous.last_transition_time if previous and previous.status == status else now
    ready = Condition(
        type=READY,
        status=cast(Literal["True", "False"], status),
        reason=found.reason,
        message=found.message[:4096],
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in before.conditions if c.type != READY]
    return write(
        ClientPolicyStatus(
            observed_generation=generation,
            keys=found.keys,
            usage=before.usage,
            conditions=[ready, *others],
        )
    )


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch from `old` to `new` (top-level keys; None removes one); {} if equal."""
    old = old or {}
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def transition_event(old: Mapping[str, Any] | None, found: Verdict) -> Event | None:
    """An Event when Ready's reason changes (the first check included); None otherwise."""
    before = read(ClientPolicyStatus, old)
    previous = next((c for c in before.conditions if c.type == READY), None)
    if previous is not None and previous.reason == found.reason:
        return None
    return Event(NORMAL if found.ready else WARNING, found.reason, found.message)
