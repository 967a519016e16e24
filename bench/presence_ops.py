"""Presence on Redis: commands and Redis CPU per hello, per presence change and per watched user.

    python bench/presence_ops.py --base COMMIT [--users 2000] [--turns 1,20,200] [--watch 500]
                                 [--rounds 1]

Starts its own redis-server (Debian's, on a free port, nothing saved) and
plays the same calls through the Redis backend of two trees, one after the
other on that server: the baseline, an export of ``COMMIT`` (``git archive``),
and this tree. A hello is what a device's arrival asks of the backend on a
node of a cluster (``locate`` of the device, ``merge_presence`` of the node's
part), and with its inbox read (``inbox_state``, what the user's actor asks
next to the locate); a presence change is a ``merge_presence``. ``--turns`` are the numbers
of users whose calls arrive in one reactor turn (a busy node reads many
sockets in one). Each tree runs in a child process of its own, with its own
key prefix; the figures are Redis commands the backend sent (what
``o2o_redis_commands_total`` counts), CPU of redis-server's main thread and
wall time from a turn's calls to their last answer, per user (with a turn of
1, the latency of a lone call). With ``--rounds N`` the two trees take turns
N times, first one then the other, and each figure is the best of its N (a
shared machine's noise only ever adds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
from typing import Any

from bench._common import PYTHON, ROOT, free_port, wait_port


def start_redis(port: int, directory: str) -> subprocess.Popen[bytes]:
    argv = ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", directory, "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


async def child(reactor: Any, port: int, users: int, turns: list[int], watch: int) -> None:
    """Measure in this process, with whatever ``o2obroker`` is first on the path."""
    from twisted.internet.defer import gatherResults

    from o2obroker.backend.interface import Presence
    from o2obroker.backend.redis import RedisBackend, parse_urls

    b = RedisBackend(parse_urls(f"redis://127.0.0.1:{port}"), reactor, reactor)
    b.start()
    await b.when_ready()
    await b.heartbeat({"id": b.node_id}, 600.0)
    shard = b.shards[0]

    async def cpu() -> float:
        info = (await shard.call("INFO", "cpu")).decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_user_main_thread"]) + float(
            fields["used_cpu_sys_main_thread"]
        )

    async def measure(name: str, each_turn: Any, turn: int, n: int) -> dict[str, Any]:
        calls, used = shard.calls, await cpu()
        calls += 1  # the INFO above
        wall = time.perf_counter()
        for first in range(0, n, turn):
            await gatherResults(each_turn(range(first, min(first + turn, n))))
        wall = time.perf_counter() - wall
        calls, used = shard.calls - calls, await cpu() - used
        return {
            "op": name,
            "turn": turn,
            "commands": calls / n,
            "cpu_us": used / n * 1e6,
            "wall_us": wall / n * 1e6,
        }

    out = []
    online = Presence("online", "", 1, 1)
    away = Presence("away", "", 1, 2)
    for turn in turns:
        tag = uuid.uuid4().hex[:6]

        def hello(some: range, tag: str = tag) -> list[Any]:
            calls = [b.locate(f"{tag}{i}", "phone") for i in some]
            return calls + [b.merge_presence(f"{tag}{i}", online) for i in some]

        def hello_inbox(some: range, tag: str = tag) -> list[Any]:
            calls = [b.locate(f"{tag}i{i}", "phone") for i in some]
            calls += [b.inbox_state(f"{tag}i{i}") for i in some]
            return calls + [b.merge_presence(f"{tag}i{i}", online) for i in some]

        def change(some: range, tag: str = tag) -> list[Any]:
            return [b.merge_presence(f"{tag}{i}", away) for i in some]

        out.append(await measure("hello", hello, turn, users))
        out.append(await measure("hello + inbox", hello_inbox, turn, users))
        out.append(await measure("presence change", change, turn, users))
    watched = [f"w{i}" for i in range(watch)]
    out.append(
        await measure("watched user", lambda _: [b.watch("ann", watched, watch)], watch, watch)
    )
    await b.stop()
    print(json.dumps(out))


def run_tree(tree: str, port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    # the tree's package first; bench/_common.py from this one
    env = {**os.environ, "PYTHONPATH": f"{tree}:{ROOT}"}
    argv = [PYTHON, os.path.abspath(__file__), "--child", str(port)]
    argv += ["--users", str(args.users), "--turns", args.turns, "--watch", str(args.watch)]
    done = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def best(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each row's lowest figures over ``runs``."""
    out = []
    for rows in zip(*runs, strict=True):
        row = dict(rows[0])
        for k in ("commands", "cpu_us", "wall_us"):
            row[k] = min(r[k] for r in rows)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="the commit to measure against")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--turns", default="1,20,200")
    parser.add_argument("--watch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    turns = [int(t) for t in args.turns.split(",")]
    if args.child:
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.task import react

        react(lambda r: ensureDeferred(child(r, args.child, args.users, turns, args.watch)))
        return
    if not args.base:
        parser.error("--base COMMIT is needed")
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        os.mkdir(base)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
        port = free_port()
        redis = start_redis(port, tmp)
        try:
            befores, afters = [], []
            for r in range(max(1, args.rounds)):
                # every other round the work tree goes first: neither gains from its place
                if r % 2:
                    afters.append(run_tree(str(ROOT), port, args))
                    befores.append(run_tree(base, port, args))
                else:
                    befores.append(run_tree(base, port, args))
                    afters.append(run_tree(str(ROOT), port, args))
            before, after = best(befores), best(afters)
        finally:
            redis.terminate()
            redis.wait()
    print(
        f"{'per user':<18}{'turn':>6}{'commands':>10}{'':>4}{'Redis CPU µs':>14}"
        f"{'':>3}{'wall µs':>12}"
    )
    print(f"{'':<18}{'':>6}{'before':>8}{'after':>8}{'before':>9}{'after':>8}", end="")
    print(f"{'before':>9}{'after':>8}")
    for b, a in zip(before, after, strict=True):
        print(
            f"{b['op']:<18}{b['turn']:>6}{b['commands']:>8.2f}{a['commands']:>8.2f}"
            f"{b['cpu_us']:>9.1f}{a['cpu_us']:>8.1f}{b['wall_us']:>9.0f}{a['wall_us']:>8.0f}"
        )


if __name__ == "__main__":
    main()
