"""Build a node's business layer from its configuration (doc/business.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from o2obroker.backend.archive import MemoryArchive
from o2obroker.config import Config, ConfigError
from o2obroker.policy.breaker import CircuitBreaker
from o2obroker.policy.business import Business
from o2obroker.policy.events import EventQueue
from o2obroker.policy.hooks import ConnectHook, HookClient, PublishHook
from o2obroker.policy.keywords import KeywordFilter, WordList, WordListError, build_matcher
from o2obroker.policy.pipeline import Pipeline
from o2obroker.policy.plugins import FilterNotFound, find_filter


def word_lists(config: Config) -> list[WordList]:
    policy = config.policy
    return [
        WordList(name, tuple(config.filters[name].files), config.filters[name].action)
        for name in policy.filters
    ]


def check_business(config: Config) -> None:
    """Read the word lists and find the message filters once, at start-up, so
    that a bad file or name stops the start with one line (ConfigError)."""
    try:
        build_matcher(word_lists(config))
        for spec in config.policy.message_filters:
            find_filter(spec)
    except (WordListError, FilterNotFound) as e:
        raise ConfigError(f"[policy] {e}") from None


def off_thread(reactor: Any) -> Callable[[Callable[[], Any]], Deferred[Any]]:
    """Run a blocking function in the reactor's thread pool. A clock without
    one (a test's task.Clock) runs it at once."""
    pool = getattr(reactor, "getThreadPool", None)
    if pool is None:
        return lambda f: maybeDeferred(f)
    from twisted.internet.threads import deferToThreadPool

    return lambda f: deferToThreadPool(reactor, pool(), f)


def make_agent(reactor: Any) -> tuple[Any, Any]:
    """An HTTP agent with persistent connections for the hooks, and its pool."""
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    return Agent(reactor, pool=pool), pool


def build_business(
    config: Config,
    clock: IReactorTime,
    *,
    agent: Any = None,
    run: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    archive: Any = None,
) -> Business:
    """The pipeline, archive and hooks that ``config`` asks for (all None when off).

    ``archive`` is the backend's own archive, used when the archive is on;
    without one the node keeps a memory archive.
    """
    policy = config.policy
    if not config.archive.enabled:
        archive = None
    elif archive is None:
        archive = MemoryArchive(
            clock, max_messages=config.archive.max_messages, max_age=config.archive.max_age
        )
    clients: dict[str, HookClient] = {}
    pools: list[Any] = []

    def client(name: str) -> HookClient:
        nonlocal agent
        if name not in clients:
            h = config.hooks[name]
            if agent is None:
                agent, pool = make_agent(clock)
                pools.append(pool)
            clients[name] = HookClient(
                name,
                h.url,
                agent,
                clock,
                timeout=h.timeout,
                concurrency=h.concurrency,
                max_waiting=h.max_waiting,
                breaker=CircuitBreaker(clock, h.breaker_failures, h.breaker_reset),
                secret=h.secret,
            )
        return clients[name]

    def queue(kind: str, name: str) -> EventQueue:
        h = config.hooks[name]
        return EventQueue(
            kind,
            client(name),
            clock,
            node_id=config.node,
            batch=h.batch,
            window=h.window,
            cap=h.queue,
            backoff=h.backoff,
            max_backoff=h.max_backoff,
        )

    stages: list[Any] = []
    keywords = None
    if policy.filters:
        keywords = KeywordFilter(word_lists(config), run or off_thread(clock))
        stages.append(keywords)
    stages.extend(find_filter(spec) for spec in policy.message_filters)
    if policy.publish_hook:
        hook = config.hooks[policy.publish_hook]
        stages.append(PublishHook(client(policy.publish_hook), hook.on_failure, config.limits))
    connect = None
    if policy.connect_hook:
        hook = config.hooks[policy.connect_hook]
        connect = ConnectHook(client(policy.connect_hook), hook.on_failure, config.limits)
    business = Business(
        pipeline=Pipeline(stages) if stages else None,
        archive=archive,
        offline=queue("offline", policy.offline_hook) if policy.offline_hook else None,
        presence=queue("presence", policy.presence_hook) if policy.presence_hook else None,
        keywords=keywords,
        connect=connect,
    )
    business.clients = clients
    business.pools = pools
    return business
