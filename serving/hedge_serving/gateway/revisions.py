"""Revisions of a ModelDeployment at the gateway: the canary's share of the traffic, and what
each revision did (the numbers the operator's rollout analysis judges).

    Split              the canary's weight as a deterministic accumulator: each request adds
                       the weight to a credit, and the canary takes the request that brings it
                       to 100. At 20 % every fifth request goes to the canary, whatever the
                       number of pods on either side, so its share is exact over any five
                       requests (not a coin flip per request, not a share of the pods).
    RevisionCounters   per (ModelDeployment, revision): self-hosted attempts by outcome, time
                       to first token and mean inter-token gap, as plain integers and fixed
                       buckets bumped on the request path (no label lookup, no lock) and read
                       by the metrics collector at scrape time
                       (`hedge_gateway_revision_*`, docs/contracts.md).
"""

from __future__ import annotations

from bisect import bisect_left

from hedge_core.contracts import OUTCOMES as CONTRACT_OUTCOMES

SUCCESS = 0
CLIENT_ERROR = 1
ERROR = 2
OUTCOMES = CONTRACT_OUTCOMES  # the `outcome` label, by index

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 5.0)


class Split:
    """How one ModelDeployment's requests are shared between its canary revision and the
    rest. The credit survives routing-table updates (the table keeps one Split per
    ModelDeployment), so a weight change neither resets nor skews the share."""

    __slots__ = ("_credit", "canary", "weight")

    def __init__(self, canary: str, weight: int) -> None:
        self.canary = canary
        self.weight = weight
        self._credit = 0

    def to_canary(self) -> bool:
        """Whether the next request goes to the canary."""
        self._credit += self.weight
        if self._credit >= 100:
            self._credit -= 100
            return True
        return False

    def __repr__(self) -> str:
        return f"Split({self.canary!r}, {self.weight}%)"


class Buckets:
    """A Prometheus histogram's state without the client library's per-observation cost:
    per-bucket counts (not cumulative; the last one is +Inf), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value on a bound is in it
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as a histogram family wants them, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class RevisionCounters:
    """What one revision of one ModelDeployment did at this gateway, since it started."""

    __slots__ = ("itl", "key", "outcomes", "ttft")

    def __init__(self, key: tuple[str, str, str]) -> None:
        self.key = key  # (namespace, ModelDeployment, revision)
        self.outcomes = [0, 0, 0]  # by SUCCESS, CLIENT_ERROR, ERROR
        self.ttft = Buckets(TTFT_BUCKETS)
        self.itl = Buckets(ITL_BUCKETS)

    def __repr__(self) -> str:
        return f"RevisionCounters({self.key!r}, outcomes={self.outcomes})"
