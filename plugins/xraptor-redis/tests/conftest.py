"""Fixtures of the xraptor-redis tests (defined in redis_support and cluster_support)."""

from cluster_support import own_redis_cluster, redis_cluster
from redis_support import redis_module_server, redis_server, redis_url

__all__ = ["own_redis_cluster", "redis_cluster", "redis_module_server", "redis_server", "redis_url"]
