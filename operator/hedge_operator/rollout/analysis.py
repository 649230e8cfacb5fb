"""Pure: the canary analysis, one step's numbers in, a verdict out.

    judge      at the end of a step's pause: the canary's error rate against
               maxErrorRatePercent, its TTFT and ITL against stable's (a ratio and a floor
               in milliseconds, so scheduling noise is not a regression), after minRequests
               requests that are not the client's fault; else Inconclusive
    tripped    at any time during a step: a hard failure that must not wait for the end of
               the step (the tripwire's rate over its minimum of requests, or surely above
               it by the Wilson score bound on fewer)

No I/O, no clock: the caller passes the windows (each revision's numbers since the step
began, `dataplane.signals.RevisionStats`) and the thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hedge_operator.dataplane.signals import RevisionStats

PASS = "Pass"
FAIL = "Fail"
INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float = 0.05  # fractions, not percent
    max_ttft_ratio: float = 1.5
    max_itl_ratio: float = 1.5
    min_ttft_increase: float = 0.010  # seconds
    min_itl_increase: float = 0.002
    min_requests: int = 20
    tripwire_error_rate: float = 0.20
    tripwire_min_requests: int = 10


@dataclass(frozen=True)
class Verdict:
    verdict: str  # Pass | Fail | Inconclusive
    message: str
    canary: RevisionStats
    stable: RevisionStats


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}s"


def judge(canary: RevisionStats, stable: RevisionStats, t: Thresholds) -> Verdict:
    """The canary's step window against the stable revision's."""
    judged = canary.requests - canary.client_errors
    if judged < t.min_requests:
        return Verdict(
            INCONCLUSIVE,
            f"waiting for {t.min_requests} canary requests ({judged:.0f} so far)",
            canary,
            stable,
        )
    rate = canary.error_rate or 0.0
    if rate > t.max_error_rate:
        return Verdict(
            FAIL,
            f"canary error rate {_pct(rate)} ({canary.errors:.0f} of {judged:.0f}) > "
            f"{_pct(t.max_error_rate)}; stable {_pct(stable.error_rate)}",
            canary,
            stable,
        )
    for what, c, s, limit, slack in (
        (
            "time to first token",
            canary.ttft_mean,
            stable.ttft_mean,
            t.max_ttft_ratio,
            t.min_ttft_increase,
        ),
        (
            "inter-token latency",
            canary.itl_mean,
            stable.itl_mean,
            t.max_itl_ratio,
            t.min_itl_increase,
        ),
    ):
        # Slower by the ratio and by more than the slack: a canary 1 ms behind a 2 ms
        # stable is scheduling noise, not a regression.
        if c is not None and s is not None and s > 0 and c / s > limit and c - s > slack:
            return Verdict(
                FAIL,
                f"canary {what} {_secs(c)} is {c / s:.2f}x stable's {_secs(s)} (limit {limit:g}x)",
                canary,
                stable,
            )
    latency = (
        f"TTFT {_secs(canary.ttft_mean)} vs {_secs(stable.ttft_mean)}, "
        f"ITL {_secs(canary.itl_mean)} vs {_secs(stable.itl_mean)}"
    )
    return Verdict(
        PASS,
        f"canary error rate {_pct(rate)} ({canary.errors:.0f} of {judged:.0f}), {latency}",
        canary,
        stable,
    )


#: z of the one-sided confidence the tripwire needs to fire on a small sample (99 %).
TRIPWIRE_Z = 2.326


def wilson_lower(errors: float, requests: float, z: float = TRIPWIRE_Z) -> float:
    """The lower end of the Wilson score interval of an error rate: the rate the canary is
    at least at, with the confidence of `z`."""
    if requests <= 0:
        return 0.0
    p = errors / requests
    z2 = z * z
    centre = p + z2 / (2 * requests)
    spread = z * math.sqrt(p * (1 - p) / requests + z2 / (4 * requests * requests))
    return max(0.0, (centre - spread) / (1 + z2 / requests))


def tripped(canary: RevisionStats, t: Thresholds) -> str | None:
    """A hard failure that must not wait for the end of the step: the canary's error rate at
    the tripwire over at least `tripwire_min_requests`, or already surely above it (99 %
    confidence) on fewer. The second matters when a canary fails every request: the
    gateway's circuit breaker then sends it one probe a second, and waiting for ten requests
    would take ten seconds; three failures out of three are enough evidence."""
    judged = canary.requests - canary.client_errors
    rate = canary.error_rate
    if rate is None or canary.errors <= 0:
        return None
    sure = wilson_lower(canary.errors, judged)
    if judged >= t.tripwire_min_requests and rate >= t.tripwire_error_rate:
        how = "reached"
    elif sure >= t.tripwire_error_rate:
        how = f"is above (at least {_pct(sure)} with 99% confidence)"
    else:
        return None
    return (
        f"canary error rate {_pct(rate)} ({canary.errors:.0f} of {judged:.0f}) {how} the "
        f"tripwire {_pct(t.tripwire_error_rate)}"
    )
