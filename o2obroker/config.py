"""Configuration: an ini file, command-line overrides, each key checked with a clear error."""

from __future__ import annotations

import configparser
import ipaddress
import re
import shlex
from dataclasses import dataclass, field, fields
from typing import Any

from o2obroker.wire.limits import Limits

#: the longest graceful stop: a node that needs more has a client problem, not a drain
MAX_STOP_DRAIN = 3600


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


# -- the business layer (doc/business.md): sections [policy], [filter:NAME], [hook:NAME],
# [archive]. Policies are keyed by app; "" is the node's own [policy]. An app registry
# will add [policy:APP] sections that apply to that app's clients.


@dataclass
class FilterSettings:
    """``[filter:NAME]``: a keyword list from files, and what a match does."""

    files: list[str] = field(default_factory=list)
    action: str = "mask"  # mask | reject


@dataclass
class HookSettings:
    """``[hook:NAME]``: one application endpoint and how it is called."""

    url: str = ""
    timeout: float = 2.0  # seconds per call
    concurrency: int = 16  # calls under way at once
    max_waiting: int = 1000  # calls waiting for a slot; past it a call fails at once
    on_failure: str = "allow"  # allow | refuse, when the application cannot answer
    breaker_failures: int = 5  # failures in a row that open the circuit
    breaker_reset: float = 30.0  # seconds open before one probe call
    secret: str | None = None  # sent as "Authorization: Bearer <secret>"
    # offline and presence events
    batch: int = 100  # events per call
    window: float = 0.2  # seconds events gather before a call
    queue: int = 10_000  # events waiting; past it the oldest are dropped (counted, logged)
    backoff: float = 1.0  # first retry delay, doubled per failure
    max_backoff: float = 60.0


@dataclass
class PolicySettings:
    """``[policy]``: which stages screen messages, and which hooks are called."""

    filters: list[str] = field(default_factory=list)  # [filter:NAME] sections, in order
    message_filters: list[str] = field(default_factory=list)  # plugin names or dotted paths
    publish_hook: str | None = None  # [hook:NAME] sections
    connect_hook: str | None = None
    offline_hook: str | None = None
    presence_hook: str | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.filters
            or self.message_filters
            or self.publish_hook
            or self.connect_hook
            or self.offline_hook
            or self.presence_hook
        )


@dataclass
class ArchiveSettings:
    """``[archive]``: the history archive, off by default."""

    enabled: bool = False
    max_messages: int = 1000  # per conversation and per room
    max_age: float = 7 * 24 * 3600.0  # seconds


@dataclass
class AppSettings:
    """``[app:ID]``: one business id of the app registry (doc/configuration.md)."""

    cluster: str = ""  # the cluster serving the app; empty: this node's


@dataclass
class Config:
    """Everything a node is built from. Names match the ini keys and the options."""

    tcp: str = "tcp:9100:interface=127.0.0.1"
    http: str = "tcp:8080:interface=127.0.0.1"
    auth: str | None = None  # token | none; default: token when a secret is set
    secret: str | None = None
    api_key: str | None = None
    node: str = "n1"
    cluster: str = "default"  # the group of nodes this one serves with (doc/operations.md)
    hb: int = 30
    hello_timeout: float = 10.0
    stall_timeout: float = 30.0
    inbox_cap: int = 10_000
    inbox_ttl: float = 7 * 24 * 3600.0
    dedupe_ttl: float = 600.0
    # the Redis backend (doc/cluster.md): comma-separated redis:// or rediss:// URLs,
    # one per shard; empty: the embedded in-memory backend
    redis: str | None = None
    redis_ca: str | None = None  # PEM file of the CA for rediss://; default: the system's
    redis_timeout: float = 5.0  # seconds a Redis call may take before it fails
    # the node registry (doc/cluster.md): seconds between heartbeats (a node is
    # dead after two without one), and the host clients and peers reach it by
    node_heartbeat: float = 2.0
    # the shared app registry (doc/configuration.md): seconds between two reads of it
    app_refresh: float = 2.0
    public_host: str = "127.0.0.1"
    # worker processes of this node sharing its ports (doc/operations.md); more than
    # one needs the Redis backend, where they meet
    workers: int = 1
    # the store (doc/configuration.md): seconds a backend call may take before its
    # sends get 503; bytes the inboxes may hold per user and in all (0: no bound)
    backend_timeout: float = 5.0
    max_stored_bytes_per_user: int = 16 << 20
    max_stored_bytes: int = 512 << 20
    # presence (doc/protocol.md section 5; doc/presence.md)
    watch_cap: int = 1000  # users on one user's watch list
    presence_grace: float = 20.0  # seconds a dropped device still counts, for quick reconnects
    presence_window: float = 0.5  # seconds of changes coalesced before watchers are told
    presence_skew: float = 5.0  # seconds a watch's since is moved back, for clocks of other nodes
    presence_naive: bool = False  # benchmark baseline only: no grace, coalescing or transfer hold
    transfer_rate: int = 32768  # bytes/s assumed of a link before its rate is measured
    # per-connection rate limit (doc/protocol.md section 7, 429): frames/s, 0 = off;
    # burst 0 means twice the rate
    rate_limit: float = 0.0
    rate_burst: int = 0
    # HTTP port (doc/web.md): browser origins allowed, comma-separated, "*" for any;
    # empty: any with auth token, loopback pages only with auth none.
    allowed_origins: str = ""
    # front proxies (addresses or networks, comma-separated) whose X-Forwarded-For
    # names the client in the log; empty: the peer of the connection is the client
    trusted_proxies: str = ""
    ws_max_frame: int = 0  # largest WebSocket frame payload; 0: max_frame
    ws_max_message: int = 0  # largest WebSocket message, after decompression; 0: max_frame
    ws_auto_ping: float = 0.0  # seconds between WebSocket-level pings; 0: off
    ws_auto_ping_timeout: float = 10.0  # close when a WebSocket ping gets no pong in time
    ws_handshake_timeout: float = 10.0  # to finish the WebSocket opening handshake
    ws_compression: bool = False  # accept permessage-deflate (CPU, and zlib state per socket)
    lp_timeout: int = 25  # seconds a long-poll is held; a session expires after twice that
    request_deadline: float = 30.0  # to deliver a whole HTTP request, however slowly
    # supervisor (doc/operations.md); a threshold of 0 is off
    sample_interval: float = 5.0
    alert_connections: int = 0
    alert_cpu: float = 90.0
    alert_memory: float = 90.0
    alert_clear: float = 0.8  # an alert ends when every metric is under threshold x this
    alert_cooldown: float = 300.0
    scale_out_command: str | None = None
    scale_out_url: str | None = None
    scale_in_command: str | None = None
    scale_in_url: str | None = None
    hook_timeout: float = 30.0
    scale_in_connections: int = 0
    scale_in_cpu: float = 10.0
    scale_in_memory: float = 50.0
    scale_in_after: float = 600.0
    hard_connections: int = 0
    hard_memory: float = 0.0
    advice_async_above: float = 80.0
    advice_duplex_below: float = 50.0
    advice_min_connections: int = 1000
    drain_rate: float = 200.0
    # seconds a node drains on SIGTERM/SIGINT before it stops; 0: it stops at once
    stop_drain: float = 0.0
    # admin console (doc/operations.md): off unless an endpoint is given, loopback only
    manhole: str | None = None
    manhole_keys: str | None = None
    manhole_host_key: str | None = None
    manhole_telnet: str | None = None
    manhole_passwd: str | None = None
    # the log (doc/operations.md): text lines, or one JSON object a line
    log_format: str = "text"
    limits: Limits = field(default_factory=Limits)
    policies: dict[str, PolicySettings] = field(default_factory=dict)
    filters: dict[str, FilterSettings] = field(default_factory=dict)
    hooks: dict[str, HookSettings] = field(default_factory=dict)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    # the app registry: business id -> its settings; empty: apps are not checked
    apps: dict[str, AppSettings] = field(default_factory=dict)

    @property
    def policy(self) -> PolicySettings:
        """The node's own policy, ``[policy]`` (empty when not given)."""
        return self.policies.get("", PolicySettings())

    def app_clusters(self) -> dict[str, str]:
        """The app registry as business id -> cluster."""
        return {app: a.cluster or self.cluster for app, a in self.apps.items()}

    @property
    def auth_mode(self) -> str:
        if self.auth is not None:
            return self.auth
        return "token" if self.secret else "none"

    def check(self) -> None:
        """Raise ConfigError for any combination that cannot work."""
        if self.auth not in (None, "token", "none"):
            raise ConfigError(f"auth: must be 'token' or 'none', not {self.auth!r}")
        if self.auth_mode == "token" and not self.secret:
            raise ConfigError("auth: 'token' needs a secret (secret = ... or --secret)")
        if self.hb < 1:
            raise ConfigError(f"hb: must be at least 1 second, not {self.hb}")
        for name in (
            "hello_timeout",
            "stall_timeout",
            "inbox_ttl",
            "dedupe_ttl",
            "backend_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        for name in ("ws_auto_ping_timeout", "ws_handshake_timeout", "request_deadline"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        for name in ("ws_max_frame", "ws_max_message", "ws_auto_ping"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be 0 (default) or positive")
        if self.lp_timeout < 1:
            raise ConfigError(f"lp_timeout: must be at least 1 second, not {self.lp_timeout}")
        for name in ("max_stored_bytes_per_user", "max_stored_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be 0 (no bound) or a number of bytes")
        if 0 < self.max_stored_bytes < self.max_stored_bytes_per_user:
            raise ConfigError("max_stored_bytes: must not be below max_stored_bytes_per_user")
        if self.inbox_cap < 1:
            raise ConfigError("inbox_cap: must be at least 1")
        if self.watch_cap < 1:
            raise ConfigError(f"watch_cap: must be at least 1, not {self.watch_cap}")
        if self.presence_grace < 0:
            raise ConfigError(f"presence_grace: must not be negative, not {self.presence_grace}")
        if not 0 < self.presence_window <= 60:
            raise ConfigError(
                "presence_window: must be above 0 and at most 60 seconds,"
                f" not {self.presence_window}"
            )
        if not 0 <= self.presence_skew <= 3600:
            raise ConfigError(f"presence_skew: must be 0 to 3600 seconds, not {self.presence_skew}")
        if self.rate_limit < 0 or self.rate_burst < 0:
            raise ConfigError("rate_limit and rate_burst: must not be negative")
        if self.transfer_rate < 1:
            raise ConfigError(f"transfer_rate: must be at least 1 byte/s, not {self.transfer_rate}")
        if not self.node or "/" in self.node:
            raise ConfigError(f"node: {self.node!r} is not a valid node id")
        if not _name(self.cluster):
            raise ConfigError(f"cluster: {self.cluster!r} is not a valid cluster name")
        for app, a in self.apps.items():
            if not _name(app) or "/" in app:
                raise ConfigError(f"[app:{app}]: not a valid business id")
            if a.cluster and not _name(a.cluster):
                raise ConfigError(f"[app:{app}] cluster: {a.cluster!r} is not a valid cluster name")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: must be 'text' or 'json', not {self.log_format!r}")
        for origin in self.allowed_origins.replace(" ", ",").split(","):
            origin = origin.strip().rstrip("/")
            if origin and origin not in ("*", "null") and not _ORIGIN.match(origin):
                raise ConfigError(
                    f"allowed_origins: {origin!r} is not an origin like https://shop.example"
                    " (scheme://host[:port]), null or *"
                )
        for item in self.trusted_proxies.replace(" ", ",").split(","):
            try:
                if item.strip():
                    ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    f"trusted_proxies: {item.strip()!r} is not an address or network"
                    " like 10.0.0.0/8"
                ) from None
        _check_supervisor(self)
        _check_console(self)
        _check_redis(self)
        _check_business(self)


def _name(s: str) -> bool:
    """A cluster or app name: 1 to 128 bytes, no space or control character."""
    return 0 < len(s.encode("utf-8", "surrogatepass")) <= 128 and all(
        c.isprintable() and not c.isspace() for c in s
    )


def _check_redis(c: Config) -> None:
    if not 0.1 <= c.node_heartbeat <= 3600:
        raise ConfigError(f"node_heartbeat: must be 0.1 to 3600 seconds, not {c.node_heartbeat}")
    if not 0.1 <= c.app_refresh <= 3600:
        raise ConfigError(f"app_refresh: must be 0.1 to 3600 seconds, not {c.app_refresh}")
    if not c.public_host.strip():
        raise ConfigError("public_host: must not be empty")
    if c.redis_timeout <= 0:
        raise ConfigError(f"redis_timeout: must be positive, not {c.redis_timeout}")
    if not 1 <= c.workers <= MAX_WORKERS:
        raise ConfigError(f"workers: must be 1 to {MAX_WORKERS}, not {c.workers}")
    if c.workers > 1:
        if not c.redis:
            raise ConfigError(
                f"workers: {c.workers} workers need the Redis backend (redis = ..., --redis):"
                " the embedded backend lives in one process"
            )
        for key in ("tcp", "http"):
            if not re.match(r"tcp6?:", getattr(c, key)):
                raise ConfigError(
                    f"{key}: workers share tcp: or tcp6: ports only, not {getattr(c, key)!r}"
                )
    if not c.redis:
        if c.redis_ca:
            raise ConfigError("redis_ca: only means something with redis = rediss://...")
        return
    # the backend's own parser, so that what passes here is what connects
    from o2obroker.backend.redis.url import parse_urls

    try:
        targets = parse_urls(c.redis)
    except ValueError as e:
        raise ConfigError(f"redis: {e}") from None
    if c.redis_ca:
        if not any(t.tls for t in targets):
            raise ConfigError("redis_ca: only means something with rediss:// URLs")
        try:
            with open(c.redis_ca, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigError(f"redis_ca: cannot read {c.redis_ca}: {e.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"redis_ca: {c.redis_ca} holds no PEM certificate")


#: worker processes a node may run
MAX_WORKERS = 64


def _check_business(c: Config) -> None:
    for app, policy in c.policies.items():
        where = f"[policy:{app}]" if app else "[policy]"
        if app:
            # kept by app already, so that an app registry only has to lift this
            raise ConfigError(f"{where}: per-app policies need an app registry; use [policy]")
        for name in policy.filters:
            if name not in c.filters:
                raise ConfigError(f"{where} filters: no section [filter:{name}]")
        for kind in ("publish", "connect", "offline", "presence"):
            name = getattr(policy, f"{kind}_hook")
            if name is not None and name not in c.hooks:
                raise ConfigError(f"{where} {kind}_hook: no section [hook:{name}]")
    for name, f in c.filters.items():
        if f.action not in ("mask", "reject"):
            raise ConfigError(f"[filter:{name}] action: must be mask or reject, not {f.action!r}")
        if not f.files:
            raise ConfigError(f"[filter:{name}] files: name at least one word list file")
    for name, h in c.hooks.items():
        where = f"[hook:{name}]"
        if not h.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} url: must be an http:// or https:// URL, not {h.url!r}")
        if h.on_failure not in ("allow", "refuse"):
            raise ConfigError(f"{where} on_failure: must be allow or refuse, not {h.on_failure!r}")
        for key in ("timeout", "window", "backoff", "max_backoff", "breaker_reset"):
            if getattr(h, key) <= 0:
                raise ConfigError(f"{where} {key}: must be positive")
        for key in ("concurrency", "batch", "queue", "breaker_failures", "max_waiting"):
            if getattr(h, key) < 1:
                raise ConfigError(f"{where} {key}: must be at least 1")
    a = c.archive
    if a.max_messages < 1 or a.max_age <= 0:
        raise ConfigError("[archive] max_messages and max_age: must be positive")


def _check_supervisor(c: Config) -> None:
    for name in ("sample_interval", "hook_timeout", "drain_rate"):
        if getattr(c, name) <= 0:
            raise ConfigError(f"{name}: must be positive")
    if not 0 <= c.stop_drain <= MAX_STOP_DRAIN:
        raise ConfigError(
            f"stop_drain: must be 0 (stop at once) to {MAX_STOP_DRAIN} seconds, not {c.stop_drain}"
        )
    for name in (
        "alert_connections",
        "alert_cpu",
        "alert_cooldown",
        "scale_in_connections",
        "scale_in_cpu",
        "scale_in_after",
        "hard_connections",
        "advice_min_connections",
    ):
        if getattr(c, name) < 0:
            raise ConfigError(f"{name}: must be 0 or positive, not {getattr(c, name)}")
    for name in ("alert_memory", "scale_in_memory", "hard_memory"):
        if not 0 <= getattr(c, name) <= 100:
            raise ConfigError(f"{name}: a percentage of system memory, 0 to 100")
    if not 0 < c.alert_clear <= 1:
        raise ConfigError("alert_clear: a fraction of each threshold, above 0 and up to 1")
    if not -100 <= c.advice_duplex_below <= c.advice_async_above <= 100:
        raise ConfigError(
            "advice_duplex_below, advice_async_above: need -100 <= duplex_below "
            "<= async_above <= 100 (occupancy P in %)"
        )
    if c.hard_connections and c.hard_connections < c.alert_connections:
        raise ConfigError("hard_connections: must not be below alert_connections")
    for hook in ("scale_out", "scale_in"):
        command, url = getattr(c, f"{hook}_command"), getattr(c, f"{hook}_url")
        if command and url:
            raise ConfigError(f"{hook}_command, {hook}_url: give one of them, not both")
        if command is not None:
            try:
                argv = shlex.split(command)
            except ValueError as e:
                raise ConfigError(f"{hook}_command: {command!r}: {e}") from None
            if not argv:
                raise ConfigError(f"{hook}_command: empty; leave the key out for no hook")
        if url and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{hook}_url: must be an http:// or https:// URL, not {url!r}")


def _check_console(c: Config) -> None:
    if c.manhole:
        if not c.manhole_keys:
            raise ConfigError(
                "manhole: needs manhole_keys (--manhole-keys), an authorized_keys file; "
                "a console without keys is refused"
            )
        if not local_endpoint(c.manhole):
            raise ConfigError(
                f"manhole: {c.manhole!r} is not on loopback; add interface=127.0.0.1 "
                "and reach it from elsewhere through an SSH tunnel"
            )
    if c.manhole_telnet:
        if not c.manhole_passwd:
            raise ConfigError("manhole_telnet: needs manhole_passwd, a passwd(5)-style file")
        if not local_endpoint(c.manhole_telnet):
            raise ConfigError(
                f"manhole_telnet: {c.manhole_telnet!r} is not on loopback; telnet is "
                "plain text and only ever listens on 127.0.0.1 or ::1"
            )


def local_endpoint(description: str) -> bool:
    """Whether a server endpoint description listens on loopback only.

    ``tcp:``/``tcp6:`` need an ``interface=`` in 127.0.0.0/8 or ::1 (no
    interface means every interface); ``unix:`` sockets are local by nature.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind = parts[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key == "interface":
            try:
                return ipaddress.ip_address(value).is_loopback
            except ValueError:
                return value == "localhost"
    return False


_LIMIT_KEYS = {f.name for f in fields(Limits)}
_TOP_KEYS = {f.name for f in fields(Config)} - {"limits", "apps"}


#: what a browser sends as ``Origin``: scheme://host[:port], no path
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+\Z")
_TRUE = frozenset(("1", "yes", "true", "on"))
_FALSE = frozenset(("0", "no", "false", "off"))


def _convert(name: str, raw: str, like: Any) -> Any:
    if like is None or isinstance(like, str):
        return raw
    if isinstance(like, bool):
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        # a typo must not turn a feature off (or on) without a word
        raise ConfigError(f"{name}: {raw!r} is not yes or no")
    try:
        if isinstance(like, int):
            return int(raw)
        if isinstance(like, float):
            return float(raw)
    except ValueError:
        kind = "an integer" if isinstance(like, int) else "a number"
        raise ConfigError(f"{name}: {raw!r} is not {kind}") from None
    return raw


def _list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _fill(obj: Any, where: str, items: list[tuple[str, str]]) -> None:
    """Set ``obj``'s fields from ini items, each converted like its default."""
    names = {f.name: f for f in fields(obj)}
    for key, raw in items:
        if key not in names:
            raise ConfigError(f"{where} {key}: unknown key")
        like = getattr(type(obj)(), key)
        if isinstance(like, list):
            setattr(obj, key, _list(raw))
        else:
            value = None if raw == "" and like is None else _convert(f"{where} {key}", raw, like)
            setattr(obj, key, value)


def _business_section(config: Config, section: str, items: list[tuple[str, str]]) -> bool:
    """Read a section of the business layer; False when ``section`` is not one."""
    kind, _, name = section.partition(":")
    name = name.strip()
    if kind == "policy":
        policy = config.policies.setdefault(name, PolicySettings())
        _fill(policy, f"[{section}]", items)
    elif kind == "filter" and name:
        _fill(config.filters.setdefault(name, FilterSettings()), f"[{section}]", items)
    elif kind == "hook" and name:
        _fill(config.hooks.setdefault(name, HookSettings()), f"[{section}]", items)
    elif kind == "app" and name:
        _fill(config.apps.setdefault(name, AppSettings()), f"[{section}]", items)
    elif section == "archive":
        _fill(config.archive, "[archive]", items)
    else:
        return False
    return True


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build a Config from an ini file's ``[broker]`` and ``[limits]`` sections,
    then apply ``overrides`` (command-line values; None means not given)."""
    config = Config()
    limit_values: dict[str, Any] = {}
    if path is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as e:
            raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
        except configparser.MissingSectionHeaderError as e:
            raise ConfigError(
                f"config: {path} line {e.lineno}: no section header; keys go under [broker]"
            ) from None
        except configparser.Error as e:
            # configparser's messages span lines (file, line, the text): keep one
            message = " ".join(str(e).split())
            raise ConfigError(f"config: {path}: {message}") from None
        for section in parser.sections():
            if section in ("broker", "limits"):
                continue
            if not _business_section(config, section, parser.items(section)):
                raise ConfigError(f"config: unknown section [{section}] in {path}")
        for key, raw in parser.items("broker") if parser.has_section("broker") else []:
            if key not in _TOP_KEYS:
                raise ConfigError(f"[broker] {key}: unknown key")
            setattr(config, key, _convert(key, raw, getattr(Config(), key)))
        for key, raw in parser.items("limits") if parser.has_section("limits") else []:
            if key not in _LIMIT_KEYS:
                raise ConfigError(f"[limits] {key}: unknown key")
            limit_values[key] = _convert(key, raw, getattr(Limits(), key))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in _LIMIT_KEYS:
            limit_values[key] = _convert(key, str(value), getattr(Limits(), key))
        elif key in _TOP_KEYS:
            setattr(config, key, _convert(key, str(value), getattr(Config(), key)))
        else:
            raise ConfigError(f"{key}: unknown setting")
    if limit_values:
        try:
            config.limits = Limits(**limit_values)
        except ValueError as e:
            raise ConfigError(f"[limits]: {e}") from None
    config.check()
    return config
