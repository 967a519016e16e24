"""A node's resync of its users on Redis: commands and time, two commits in one run.

    .venv/bin/python bench/resync.py BASE [--users 10000] [--rounds 2]

A node on a redis-server of its own has one live device for each of
``--users`` users. A sweep's worth of its state is then deleted (every
user's presence part, user-level record and device locations) and the node
resyncs every user, as after a resubscribe or a rejoin: presence parts and
locations are recorded again and the inboxes read where a device may have
missed something, and the users' watchers are looked up (each user is back
online for them). Counted: the commands the node sent to Redis for it, and
the time from the trigger until every actor is idle again and the presence
changes are out (a presence window of 10 ms), and the users whose device is
located again afterwards (calls that time out, 5 s, are not retried). BASE (a commit,
exported with ``git archive``) and the work tree run alternately, each in a
process of its own, ``--rounds`` times each; the best time of each is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the tree measured: it uses only what both commits have.
CHILD = r"""
import json, os, shutil, subprocess, sys, tempfile, time
from twisted.internet import defer, reactor, task
import o2obroker
from o2obroker.backend.redis import RedisBackend, parse_urls
from o2obroker.config import Config
from o2obroker.service.node import Node
sys.path.insert(0, "bench")
from _common import free_port, wait_port

USERS = int(os.environ["RESYNC_USERS"])


class Device:
    kind, service, cursor, live = "mobile", False, 0, True

    def __init__(self, user):
        self.user, self.device = user, "phone"
        self.welcomed = False

    def welcome(self, last, resumed): self.welcomed = True
    def send_msgs(self, items): pass
    def send_frame(self, frame): pass
    def send_presence(self, out): pass
    def receipts(self, items): pass
    def replaced(self): self.live = False
    def fail(self, error): pass
    def when_drained(self): return None
    def may_join(self, room): return True


async def until(check, step=0.01):
    while not check():
        await task.deferLater(reactor, step, lambda: None)


async def main():
    port = free_port()
    directory = tempfile.mkdtemp(prefix="o2o-bench-")
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
            "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        store = RedisBackend(parse_urls(f"redis://127.0.0.1:{port}"), reactor, reactor, "a")
        config = Config(secret="s" * 32, node="a", presence_window=0.01)
        node = Node(config, reactor, backend=store)
        node.start()
        await store.when_ready()
        await until(lambda: store.bus.ready)
        users = [f"u{i}" for i in range(USERS)]
        devices = [Device(u) for u in users]
        for i in range(0, USERS, 500):  # as hellos come, not all in one turn
            some = devices[i:i + 500]
            for d in some:
                node.router.actor(d.user).attach(d, None)
            await until(lambda: all(d.welcomed for d in some))
        shard = store.shards[0]
        hub = node.presence
        while True:  # every attach's presence merge has run
            found = await store.presence(users)
            if all(p.state == "online" for p in found.values()):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        await until(lambda: hub._timer is None and not hub._pending and not hub._work)
        for i in range(0, USERS, 500):
            keys = [store._key(u, k) for u in users[i:i + 500] for k in ("presn", "pres", "loc")]
            await shard.call("DEL", *keys)
        pub, actors = node.cluster_publisher, node.router.actors
        scheduler = node.actors.scheduler

        def idle():
            if hub._timer is not None or hub._pending or hub._work:
                return False
            if pub._resync or pub._resyncing is not None or getattr(pub, "_gate", None):
                return False
            if scheduler.pending():
                return False
            return not any(a._busy or a._queued for a in actors.values())

        await until(idle)
        await shard.call("CONFIG", "RESETSTAT")
        before = sum(s.calls for s in store.shards)
        started = time.perf_counter()
        pub.resubscribed(users)
        await until(lambda: not idle(), 0.001)  # the pass has begun
        calls = lambda: sum(s.calls for s in store.shards)
        while True:  # idle, and nothing more sent a while later (replies may be due)
            await until(idle, 0.002)
            took, sent = time.perf_counter() - started, calls() - before
            await task.deferLater(reactor, 0.2, lambda: None)
            if idle() and calls() - before == sent:
                break
        await store.when_ready()  # an overloaded connection was dropped and made again
        info = (await shard.call("INFO", "commandstats")).decode()
        stats = {
            line.split(":")[0][8:]: int(line.split("calls=")[1].split(",")[0])
            for line in info.splitlines()
            if line.startswith("cmdstat_")
        }
        # the work done: users whose device is located here again
        restored = len(await store.locations(users))
        print(json.dumps({"commands": sent, "seconds": took, "restored": restored,
                          "stats": stats, "module": o2obroker.__file__}))
        await node.stop()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


defer.ensureDeferred(main()).addBoth(lambda r: (reactor.stop(), r)[1]).addErrback(
    lambda f: (f.printTraceback(sys.stderr), sys.stderr.flush(), os._exit(1)))
reactor.run()
"""


def measure(tree: Path, users: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), RESYNC_USERS=str(users))
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(
            f"the run in {tree} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    got: dict[str, float] = json.loads(lines[-1])
    if not str(got["module"]).startswith(str(tree)):
        raise SystemExit(f"{tree} ran {got['module']}")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare with")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="the commands by name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="o2o-resync-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(
            ["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        for _ in range(args.rounds):
            runs["base"].append(measure(base, args.users))
            runs["new"].append(measure(ROOT, args.users))
    print(f"resync of {args.users} users, {args.rounds} rounds each, best time:")
    for name, label in (("base", args.base), ("new", "work tree")):
        best = min(runs[name], key=lambda r: r["seconds"])
        per = best["commands"] / args.users
        print(
            f"  {label:>10}: {best['commands']:7.0f} commands ({per:.3f} per user),"
            f" {best['seconds'] * 1000:7.0f} ms, {best['restored']:.0f} users restored"
        )
        if args.verbose:
            print(f"{'':14}as redis-server counted them: {best['stats']}")


if __name__ == "__main__":
    main()
