"""Per-tenant quotas exact across gateway replicas: limits and decisions (`limits`, pure),
and the stores that count them, in this process or in Redis (`store`).

Only the pure part is imported here: `store` brings in the Redis client, which a gateway
loads when it starts counting (`hedge_serving.gateway.cli`).
"""

from hedge_serving.gateway.quota.limits import Decision, LimitSet, ratelimit_headers

__all__ = ["Decision", "LimitSet", "ratelimit_headers"]
