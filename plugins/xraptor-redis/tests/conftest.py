"""Fixtures of the xraptor-redis tests (defined in redis_support)."""

from redis_support import redis_module_server, redis_server, redis_url

__all__ = ["redis_module_server", "redis_server", "redis_url"]
