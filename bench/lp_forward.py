"""Long-poll requests forwarded to the node holding the session, against the same sent to it.

    .venv/bin/python bench/lp_forward.py [--requests 2000] [--concurrency 8]

Two real brokers (`twistd -n o2obroker --redis`) on one redis-server started
here. Long-poll sessions are opened on node A; then ``--requests`` ``/lp/send``
requests (each one ``ping`` frame: the answer carries no receipt, so the
figure is the HTTP path, not the store) go, ``--concurrency`` at a time over
keep-alive connections of the client's own, first straight to A (the
baseline), then to B, which forwards each to A over its pool of persistent
connections. Prints requests/s and p50/p99 latency of each: what a forward
costs on top of the request itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import treq
from _common import ROOT, free_port, start_broker, wait_port
from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer


async def run(base: str, sids: list[str], n: int, pool: HTTPConnectionPool) -> list[float]:
    """``n`` sends, one per session in turn, each session one at a time; latencies (s)."""
    latencies: list[float] = []
    left = iter(range(n))

    async def worker(sid: str) -> None:
        for _ in left:
            t0 = time.perf_counter()
            r = await treq.post(f"{base}/lp/send?sid={sid}", data=b'{"t":"ping"}', pool=pool)
            await r.content()
            if r.code != 200:
                raise RuntimeError(f"{r.code} from {base}")
            latencies.append(time.perf_counter() - t0)

    await defer.gatherResults([defer.Deferred.fromCoroutine(worker(s)) for s in sids])
    return latencies


async def main(args: argparse.Namespace) -> None:
    redis = RedisServer()
    redis.start()
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    procs = [
        start_broker(tcp, "--redis", redis.url, "--node", name, http=http)
        for name, (tcp, http) in ports.items()
    ]
    try:
        a, b = (f"http://127.0.0.1:{ports[n][1]}" for n in ("a", "b"))
        for _, http in ports.values():
            wait_port(http)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = args.concurrency
        sids = []
        for i in range(args.concurrency):
            hello = {"t": "hello", "user": f"u{i}", "device": "web"}
            r = await treq.post(f"{a}/lp/open", data=json.dumps(hello).encode(), pool=pool)
            sids.append(json.loads(await r.content())["sid"])
        # until B knows A from the registry and forwards instead of answering 404
        for _ in range(100):
            r = await treq.post(f"{b}/lp/send?sid={sids[0]}", data=b'{"t":"ping"}', pool=pool)
            await r.content()
            if r.code == 200:
                break
            await defer.Deferred.fromCoroutine(_sleep(0.1))
        await run(a, sids, 200, pool)  # warm-up of both paths
        await run(b, sids, 200, pool)
        print(f"{args.requests} /lp/send requests, {args.concurrency} at a time")
        for label, base in (("direct to the owner", a), ("forwarded by another node", b)):
            t0 = time.perf_counter()
            lat = await run(base, sids, args.requests, pool)
            took = time.perf_counter() - t0
            q = statistics.quantiles(lat, n=100)
            print(
                f"  {label:26} {args.requests / took:8.0f} req/s"
                f"   p50 {q[49] * 1000:6.2f} ms   p99 {q[98] * 1000:6.2f} ms"
            )
        await pool.closeCachedConnections()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        redis.destroy()


async def _sleep(s: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(s, d.callback, None)
    await d


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    def go() -> None:
        d = defer.Deferred.fromCoroutine(main(args))
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
