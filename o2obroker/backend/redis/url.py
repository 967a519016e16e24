"""``redis://`` and ``rediss://`` URLs: one per shard, checked before anything connects."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisTarget:
    """Where one shard lives and how to log in to it."""

    host: str
    port: int = 6379
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def name(self) -> str:
        """For logs: never the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisTarget:
    """One URL: ``redis[s]://[[user]:password@]host[:port][/db]``.

    Raises ValueError with a sentence an operator can act on.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{url!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: the scheme must be redis:// or rediss://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: query strings and fragments are not understood")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the path must be a database number, like /0")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username and password is None:
        raise ValueError(f"{url!r}: a user name needs a password (redis://user:password@host)")
    return RedisTarget(
        host=parts.hostname,
        port=port or 6379,
        tls=parts.scheme == "rediss",
        username=username,
        password=password or None,
        db=int(path) if path else 0,
    )


def parse_urls(text: str) -> list[RedisTarget]:
    """A comma-separated list, one URL per shard; the order decides the sharding."""
    targets = [parse_url(u) for u in text.split(",") if u.strip()]
    if not targets:
        raise ValueError("no URL given")
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{name} is listed twice")
    return targets
