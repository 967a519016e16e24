"""The Redis backend (txredisapi): durable inboxes and shared state for a cluster of nodes."""

from o2obroker.backend.redis.backend import RedisBackend, jump_hash, shard_of
from o2obroker.backend.redis.url import RedisTarget, parse_url, parse_urls

__all__ = ["RedisBackend", "RedisTarget", "jump_hash", "parse_url", "parse_urls", "shard_of"]
