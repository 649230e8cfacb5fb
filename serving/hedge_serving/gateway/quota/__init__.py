"""Per-tenant quotas exact across gateway replicas: limits and decisions (`limits`, pure),
and the stores that count them, in this process or in Redis (`store`)."""

from hedge_serving.gateway.quota.limits import Decision, LimitSet, ratelimit_headers
from hedge_serving.gateway.quota.store import LocalStore, QuotaStore, RedisStore

__all__ = ["Decision", "LimitSet", "LocalStore", "QuotaStore", "RedisStore", "ratelimit_headers"]
