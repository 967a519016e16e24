"""Backend throughput: append, read, claim, archive and history on memory and on Redis, one run.

    .venv/bin/python bench/backend_ops.py [--messages 50000] [--batch 100]
                                          [--users 1000] [--window 8]

Starts its own redis-server (Debian's, on a free port, nothing saved) and
drives both backends with the same pre-built batches: ``append_many`` of
``batch`` messages spread over ``batch / 5`` users (an actor's outbox), then
``read`` of every inbox a page of 100 at a time, then ``claim`` of ``batch``
send ids per call, then ``archive`` of each batch (the same messages, as
alice's conversation with each user) and a ``history`` page of 50 of each
conversation. Up to ``window`` calls are in flight at once, as many
actors would have. The memory backend is the baseline: the figure to watch
is how much of it Redis keeps, and how many round trips a message costs
(commands the client sent, and EVALSHA calls the server counted).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import react

from bench._common import free_port, wait_port
from o2obroker.backend import MemoryBackend, StoredMessage
from o2obroker.backend.archive import MemoryArchive, conversation
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.backend.redis.archive import RedisArchive


def make_batches(messages: int, batch: int, users: int) -> list[dict[str, list[StoredMessage]]]:
    now = int(time.time() * 1000)
    out = []
    n = 0
    per_user = 5
    while n < messages:
        inboxes: dict[str, list[StoredMessage]] = {}
        for i in range(batch):
            user = f"user{(n // per_user) % users}"
            mid = f"m{n}"
            body = {"text": "hello there", "order": n, "raw": b"\x00\x01"}
            # the fields an actor stores: its own mid and ts among them
            fields = {"mid": mid, "from": "alice", "body": body, "ts": now}
            m = StoredMessage(mid, now, fields)
            inboxes.setdefault(user, []).append(m)
            n += 1
            if n == messages or i == batch - 1:
                break
        out.append(inboxes)
    return out


async def windowed(calls: list[Callable[[], Deferred[Any]]], window: int) -> int:
    """Run the calls with at most ``window`` in flight; the number of entries
    the calls answered with that are lists (pages read), else 0."""
    got = 0
    for i in range(0, len(calls), window):
        for answer in await gatherResults([c() for c in calls[i : i + window]]):
            if isinstance(answer, list):
                got += len(answer)
    return got


async def run(
    backend: Any, archive: Any, batches: list[Any], users: int, batch: int, window: int
) -> dict[str, tuple[float, float]]:
    """{op: (messages a second, this process's CPU µs per message)}."""
    messages = sum(len(ms) for b in batches for ms in b.values())
    claims = [[(f"c{k}.{j}", f"m{j}") for j in range(batch)] for k in range(messages // batch)]
    # the same messages as the router archives them: alice's conversation with each user
    archived = [
        [StoredMessage(m.mid, m.ts, {**m.fields, "to": u}) for u, ms in b.items() for m in ms]
        for b in batches
    ]
    ops: dict[str, tuple[list[Callable[[], Deferred[Any]]], int | None]] = {
        "append": ([lambda b=b: backend.append_many(b) for b in batches], messages),
        "read": ([lambda u=u: backend.read(f"user{u}", 0, 100) for u in range(users)], None),
        "claim": (
            [
                lambda k=k, c=c: backend.claim(f"user{k % users}", 1, c)
                for k, c in enumerate(claims)
            ],
            len(claims) * batch,
        ),
        "archive": ([lambda a=a: archive.add(a) for a in archived], messages),
        "history": (
            [lambda u=u: page(archive, conversation("alice", f"user{u}")) for u in range(users)],
            None,
        ),
    }
    out = {}
    for op, (calls, count) in ops.items():
        wall, cpu = time.perf_counter(), time.process_time()
        got = await windowed(calls, window)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = count if count is not None else got
        out[op] = (n / wall, cpu / n * 1e6)
    return out


def page(archive: Any, thread: str) -> Deferred[list[Any]]:
    """A page of 50 of the archive, newest first, as the history frame reads it."""
    return archive.page(thread, None, 50).addCallback(lambda r: r[0])


def server_cpu(info: str) -> float:
    """Seconds of CPU redis-server has used (main thread, user and system)."""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_user_main_thread"]) + float(fields["used_cpu_sys_main_thread"])


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
    argv += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


async def main(args: argparse.Namespace) -> None:
    batches = make_batches(args.messages, args.batch, args.users)
    messages = sum(len(ms) for b in batches for ms in b.values())
    memory = MemoryBackend(reactor, inbox_cap=1_000_000)
    base = await run(memory, MemoryArchive(reactor), batches, args.users, args.batch, args.window)

    port = free_port()
    directory = tempfile.mkdtemp(prefix="o2o-bench-")
    proc = start_redis(port, directory)
    try:
        redis = RedisBackend(
            parse_urls(f"redis://127.0.0.1:{port}"), reactor, reactor, inbox_cap=1_000_000
        )
        redis.start()
        await redis.when_ready()
        shard = redis.shards[0]
        await shard.call("CONFIG", "RESETSTAT")
        cpu_before = server_cpu((await shard.call("INFO", "cpu")).decode())
        sent = shard.calls
        # the append pass alone, for the round trips it costs
        await windowed([lambda b=b: redis.append_many(b) for b in batches], args.window)
        trips = shard.calls - sent
        cpu = server_cpu((await shard.call("INFO", "cpu")).decode()) - cpu_before
        info = (await shard.call("INFO", "commandstats")).decode()
        evalsha = next(
            int(line.split("calls=")[1].split(",")[0])
            for line in info.splitlines()
            if line.startswith("cmdstat_evalsha:")
        )
        # the archive pass alone, for the server's CPU per archived message
        archive = RedisArchive(redis, reactor)
        archived = [
            [StoredMessage(m.mid, m.ts, {**m.fields, "to": u}) for u, ms in b.items() for m in ms]
            for b in batches
        ]
        before = server_cpu((await shard.call("INFO", "cpu")).decode())
        await windowed([lambda a=a: archive.add(a) for a in archived], args.window)
        archive_cpu = server_cpu((await shard.call("INFO", "cpu")).decode()) - before
        await shard.call("FLUSHALL")
        got = await run(redis, archive, batches, args.users, args.batch, args.window)
        await redis.stop()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"{messages} messages, batches of {args.batch} over {args.batch // 5} users,"
        f" window {args.window}"
    )
    print(f"{'':<8}{'msgs/s':>24}{'client CPU µs/msg':>30}")
    print(f"{'op':<8}{'memory':>12}{'redis':>12}{'memory':>15}{'redis':>15}")
    for op in ("append", "read", "claim", "archive", "history"):
        (mr, mc), (rr, rc) = base[op], got[op]
        print(f"{op:<8}{mr:>12,.0f}{rr:>12,.0f}{mc:>15.1f}{rc:>15.1f}")
    print(f"redis-server CPU, append: {cpu / messages * 1e6:.1f} µs per message")
    print(f"redis-server CPU, archive: {archive_cpu / messages * 1e6:.1f} µs per message")
    print(
        f"round trips: {trips} commands sent for {len(batches)} batches"
        f" ({trips / messages:.3f} per message); server counted {evalsha} EVALSHA"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--window", type=int, default=8)
    args = p.parse_args()
    react(lambda _: ensureDeferred(main(args)))
