"""Presence load: the bytes presence costs on the wire, optimised against naive.

    python bench/presence_load.py [--users 2000] [--watch 50] [--hours 1] [--seed 1] [--no-since]

Simulates N users, each watching K others, through a real node (sessions,
user actors, presence hub, in-memory backend, heartbeat wheel) on a
``task.Clock``. Each device is a fake connection that encodes every frame the
broker writes to it, as the binary transport would, and counts its bytes; the
client behind it answers pings, watches its list on a fresh connection, and
keeps its own view of the users it watches. One scenario, drawn from the seed
before anything runs, is played twice. The baseline is ``presence_naive``: a
broker that follows the protocol and nothing more (only user-level changes
are sent, each at once; only silent devices are pinged; no grace period, no
coalescing, no transfer hold) with clients that watch their whole list on
every connection. The other run has the broker's savings, and clients that
keep their view across sessions and watch again with ``since``
(``--no-since``: without). Both runs must end in the same presence state, in
the backend and in every connected client's view; the script fails
otherwise.

Presence traffic counted: presence frames, pings and pongs, and the watch
frames clients send. Messages are in the scenario (they are what keeps a
device visibly alive, and large ones start transfer holds) but not in the
presence figures.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from o2obroker.config import Config
from o2obroker.service.node import Node
from o2obroker.session.gateway import IConnection
from o2obroker.wire import encode_cbor
from o2obroker.wire.limits import Limits

PRESENCE_TYPES = ("presence", "ping", "pong", "watch")
HB = 30
GRACE = 20.0
EPOCH = 1_763_800_000.0  # when the simulated hour starts

# The churn: mean seconds between events of one connected device (options override them).
CHURN = {
    "message_every": 60.0,  # a message sent; received ones are acked
    "report_every": 600.0,  # a status change: a quarter are background-and-back flips,
    # a quarter three quick changes in a row
    "drop_every": 300.0,  # phones only: the link drops, back within 1-10 s
    "upload_every": 1800.0,  # a 200-400 KiB message over the device's own link
    "online_for": 1200.0,  # a session, ended by bye
    "offline_for": 600.0,  # between sessions
}
STATES = [
    ("away", ""),
    ("busy", "in a meeting"),
    ("online", ""),
    ("busy", "driving"),
    ("away", "lunch"),
]


@dataclass
class Wire:
    """Frames and bytes by type and direction, as the binary transport would carry them."""

    frames: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    since: int = 0  # watch frames with since (the rest ask for every user)

    def count(self, kind: str, n: int) -> None:
        self.frames[kind] += 1
        self.bytes[kind] += n

    def presence(self) -> tuple[int, int]:
        return (
            sum(self.frames[t] for t in PRESENCE_TYPES),
            sum(self.bytes[t] for t in PRESENCE_TYPES),
        )


@implementer(IConnection)
class SimDevice:
    """One device: the broker's IConnection on one side, a well-behaved client on the other."""

    kind = "mobile"
    transport_name = "tcp"

    def __init__(self, sim: Sim, user: str, name: str) -> None:
        self.sim = sim
        self.user = user
        self.name = name
        self.closed = False
        self.pending = 0  # bytes written to the device that its link has not carried yet
        self.owed_pong = False
        self.busy_until = 0.0  # the device's own upload, which its pong would wait behind
        self.view: dict[str, tuple[str, str]] = {}
        self.seen_ts = 0  # the largest presence ts in the view: a later watch's since
        self.session = sim.node.gateway.connect(self)

    # -- the broker's side (IConnection) -----------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        self.sim.wire.count(frame["t"], len(encode_cbor(frame)) + 4)
        self._client(frame)

    def send_many(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            self.send(frame)

    def send_msgs(self, items: list[tuple[int, Any]]) -> None:
        if self.closed:
            return
        n = 0
        for seq, template in items:
            n += len(template.cbor(seq)) + 4
        self.sim.wire.count("msg", n)
        self.sim.later(self.write, {"t": "ack", "seq": items[-1][0]})  # as every client does
        if n >= 64 << 10:
            self.pending += n
            self.sim.at(self.sim.clock.seconds() + n / self.sim.link[self.user], self._drained, n)

    def send_out(self, out: Any) -> int:
        if self.closed:
            return 0
        n = len(out.cbor()) + 4
        self.sim.wire.count("presence", n)
        self._client(out.frame)
        return n

    def unsent(self) -> int:
        return self.pending

    def when_drained(self) -> Deferred[None] | None:
        return None  # the simulated link carries what is written: no backlog pacing

    def close(self, last: dict[str, Any] | None = None) -> None:
        if last is not None:
            self.send(last)
        self.closed = True

    # -- the client's side ---------------------------------------------------

    def write(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        self.sim.wire.count(frame["t"], len(encode_cbor(frame)) + 4)
        if "since" in frame:
            self.sim.wire.since += 1
        self.session.touch()
        self.session.receive(frame)

    def _client(self, frame: dict[str, Any]) -> None:
        t = frame["t"]
        if t == "presence":
            self.view[frame["user"]] = (frame["state"], frame["status"])
            self.seen_ts = max(self.seen_ts, frame["ts"])
        elif t == "ping":
            # a pong waits behind a large frame on either side of the link
            if self.pending or self.busy_until > self.sim.clock.seconds():
                self.owed_pong = True
            else:
                self.sim.later(self.write, {"t": "pong"})
        elif t == "welcome":
            kept = self.sim.kept_views.pop((self.user, self.name), None)
            watch = {"t": "watch", "users": self.sim.watch[self.user]}
            if kept is not None and frame.get("presence_kept"):
                self.view, self.seen_ts = kept  # up to date: what it missed follows
            elif kept is not None and self.sim.since:
                # the view of the last session, brought up to date by what changed since
                self.view, self.seen_ts = kept
                watch["since"] = self.seen_ts
                self.sim.later(self.write, watch)
            else:
                self.sim.later(self.write, watch)

    def _drained(self, n: int) -> None:
        self.pending = max(0, self.pending - n)
        if not self.pending:
            self._settle_pong()

    def _settle_pong(self) -> None:
        if self.owed_pong and not self.closed:
            self.owed_pong = False
            self.write({"t": "pong"})


@dataclass(order=True)
class Event:
    t: float
    n: int
    action: str = field(compare=False)
    user: str = field(compare=False)
    device: str = field(compare=False)
    arg: Any = field(compare=False, default=None)


def scenario(
    users: int, watch: int, seconds: float, seed: int, churn: dict[str, float]
) -> tuple[list[Event], dict[str, list[str]], dict[str, float]]:
    """Every device's life for ``seconds``: sessions, drops, status changes, messages, transfers."""
    rnd = random.Random(seed)
    names = [f"u{i:05d}" for i in range(users)]
    watch_lists = {u: rnd.sample([v for v in names if v != u], watch) for u in names}
    link = {u: rnd.uniform(16 << 10, 96 << 10) for u in names}  # bytes/s of the user's links
    events: list[Event] = []
    count = 0

    def add(t: float, action: str, user: str, device: str, arg: Any = None) -> None:
        nonlocal count
        if t < seconds:
            count += 1
            events.append(Event(t, count, action, user, device, arg))

    for user in names:
        devices = ["phone"] + (["web"] if rnd.random() < 0.3 else [])
        for device in devices:
            t = (
                rnd.uniform(0, 60)
                if rnd.random() < 0.7
                else rnd.expovariate(1 / churn["offline_for"])
            )
            while t < seconds:
                end = t + rnd.expovariate(1 / churn["online_for"])
                add(t, "connect", user, device, rnd.choice(STATES[:3]))
                s = t + rnd.expovariate(1 / churn["message_every"])
                while s < end:  # messages (and the acks of those received): proof of life
                    add(s, "message", user, device, rnd.choice(watch_lists[user]))
                    s += rnd.expovariate(1 / churn["message_every"])
                s = t + rnd.expovariate(1 / churn["report_every"])
                while s < end:  # status changes; half are the app flipping to background
                    r = rnd.random()  # and back, or a few quick changes in a row
                    if r < 0.25:
                        add(s, "report", user, device, ("away", ""))
                        add(s + rnd.uniform(0.1, 0.4), "report", user, device, ("online", ""))
                    elif r < 0.5:
                        for k in range(3):
                            add(s + 0.1 * k, "report", user, device, rnd.choice(STATES))
                    else:
                        add(s, "report", user, device, rnd.choice(STATES))
                    s += rnd.expovariate(1 / churn["report_every"])
                if device == "phone":
                    s = t + rnd.expovariate(1 / churn["drop_every"])
                    while s < end - 15:  # flaky mobile link: back within the grace period
                        add(s, "drop", user, device, rnd.uniform(1, 10))
                        s += rnd.expovariate(1 / churn["drop_every"])
                s = t + rnd.expovariate(1 / churn["upload_every"])
                while s < end - 60:  # a large upload to someone watched, then held transfers
                    add(
                        s,
                        "upload",
                        user,
                        device,
                        (rnd.choice(watch_lists[user]), rnd.randint(200, 400) << 10),
                    )
                    s += 60 + rnd.expovariate(1 / churn["upload_every"])
                add(end, "bye", user, device)
                t = end + rnd.expovariate(1 / churn["offline_for"])
    events.sort()
    return events, watch_lists, link


class Sim:
    """One run of the scenario through a real node on a fake clock."""

    def __init__(
        self, naive: bool, watch: dict[str, list[str]], link: dict[str, float], since: bool = True
    ) -> None:
        self.clock = Clock()
        # a real epoch: presence ts are as large on this wire as on a real one
        self.clock.advance(EPOCH)
        self.wire = Wire()
        self.watch = watch
        self.link = link
        config = Config(
            auth="none",
            hb=HB,
            presence_grace=GRACE,
            presence_naive=naive,
            watch_cap=max(1000, max(len(w) for w in watch.values())),
            limits=Limits(max_body=1 << 20, max_watch=1000),
        )
        self.node = Node(config, self.clock)
        self.node.gateway.start()  # heartbeats; the supervisor is not part of this
        self.devices: dict[tuple[str, str], SimDevice] = {}
        # what each device's client keeps of its last session: its view and the largest ts
        self.kept_views: dict[tuple[str, str], tuple[dict[str, tuple[str, str]], int]] = {}
        self.since = since and not naive  # the baseline's clients watch without since
        self._timed: list[tuple[float, int, Any, Any]] = []
        self._soon: list[tuple[Any, Any]] = []
        self._n = 0

    def at(self, t: float, fn: Any, arg: Any) -> None:
        """Something the links do later (a large frame arriving), without a DelayedCall each."""
        self._n += 1
        self._timed.append((t, self._n, fn, arg))
        self._timed.sort()

    def later(self, fn: Any, arg: Any) -> None:
        """A client's answer: after the broker's call returns, as over a real link."""
        self._soon.append((fn, arg))

    def run(self, events: list[Event], seconds: float) -> None:
        for e in events:
            self._advance(EPOCH + e.t)
            getattr(self, "_" + e.action)(e)
            self._answer()
        # quiet time: grace periods, windows and transfers run out; heartbeats go on
        self._advance(EPOCH + seconds + GRACE + 3 * HB)

    def _advance(self, t: float) -> None:
        clock = self.clock
        while True:
            nxt = self._timed[0][0] if self._timed else None
            step_to = t if nxt is None or nxt > t else nxt
            while clock.seconds() + 1 <= step_to:
                clock.advance(1)
                self._answer()
            clock.advance(max(0.0, step_to - clock.seconds()))
            self._answer()
            if nxt is None or nxt > t:
                return
            _, _, fn, arg = self._timed.pop(0)
            fn(arg)
            self._answer()

    def _answer(self) -> None:
        while self._soon:
            soon, self._soon = self._soon, []
            for fn, arg in soon:
                fn(arg)
            self.clock.advance(0)

    # -- the scenario's actions ------------------------------------------------

    def _connect(self, e: Event) -> None:
        old = self.devices.get((e.user, e.device))
        if old is not None and not old.closed:
            return
        d = self.devices[(e.user, e.device)] = SimDevice(self, e.user, e.device)
        state, status = e.arg
        d.write(
            {"t": "hello", "user": e.user, "device": e.device, "state": state, "status": status}
        )

    def _bye(self, e: Event) -> None:
        d = self.devices.get((e.user, e.device))
        if d is not None and not d.closed:
            d.write({"t": "bye"})
            d.closed = True
            self.kept_views[(e.user, e.device)] = (d.view, d.seen_ts)

    def _drop(self, e: Event) -> None:
        d = self.devices.get((e.user, e.device))
        if d is None or d.closed:
            return
        d.closed = True
        d.session.lost()
        self.kept_views[(e.user, e.device)] = (d.view, d.seen_ts)
        again = self.clock.seconds() + e.arg
        self.at(again, self._reconnect, (e.user, e.device, d))

    def _reconnect(self, arg: tuple[str, str, SimDevice]) -> None:
        user, device, old = arg
        if self.devices.get((user, device)) is not old:
            return
        d = self.devices[(user, device)] = SimDevice(self, user, device)
        d.write(
            {
                "t": "hello",
                "user": user,
                "device": device,
                "state": old.session.presence_state,
                "status": old.session.presence_status,
            }
        )

    def _report(self, e: Event) -> None:
        d = self.devices.get((e.user, e.device))
        if d is not None and not d.closed:
            state, status = e.arg
            d.write({"t": "presence", "state": state, "status": status})

    def _message(self, e: Event) -> None:
        d = self.devices.get((e.user, e.device))
        if d is not None and not d.closed:
            d.write({"t": "send", "id": f"m{e.n}", "to": e.arg, "body": {"text": "hello"}})

    def _upload(self, e: Event) -> None:
        d = self.devices.get((e.user, e.device))
        if d is None or d.closed:
            return
        to, size = e.arg
        duration = size / self.link[e.user]
        d.busy_until = self.clock.seconds() + duration
        d.session.touch()
        d.session.receiving(size, 0)  # the transport saw the prefix of a large frame
        self.at(self.clock.seconds() + duration, self._uploaded, (d, e.n, to, size))

    def _uploaded(self, arg: tuple[SimDevice, int, str, int]) -> None:
        d, n, to, size = arg
        if d.closed:
            return
        d.write({"t": "send", "id": f"big{n}", "to": to, "body": "x" * (size - 100)})
        d.session.received()
        d._settle_pong()

    # -- results -------------------------------------------------------------

    def records(self) -> dict[str, tuple[str, str, int]]:
        found = self.node.backend._presence  # the embedded backend's own table
        return {u: (p.state, p.status, p.devices) for u, p in sorted(found.items())}

    def views(self) -> dict[tuple[str, str], dict[str, tuple[str, str]]]:
        return {k: dict(d.view) for k, d in sorted(self.devices.items()) if not d.closed}


def check(sim: Sim, mode: str) -> None:
    """Every connected client's view of every user it watches is the broker's state."""
    records = sim.records()
    wrong = 0
    for (user, _), view in sim.views().items():
        for watched in sim.watch[user]:
            truth = records.get(watched, ("offline", "", 0))[:2]
            if view.get(watched) != truth:
                wrong += 1
                if wrong <= 5:
                    print(f"  {mode}: {user} sees {watched} as {view.get(watched)}, not {truth}")
    if wrong:
        raise SystemExit(f"{mode}: {wrong} views disagree with the broker's state")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--watch", type=int, default=50)
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--no-since", action="store_true", help="optimised clients watch without since too"
    )
    for name, value in CHURN.items():
        p.add_argument("--" + name.replace("_", "-"), type=float, default=value, metavar="S")
    args = p.parse_args()
    seconds = args.hours * 3600
    churn = {name: getattr(args, name) for name in CHURN}
    events, watch, link = scenario(args.users, args.watch, seconds, args.seed, churn)
    kinds = Counter(e.action for e in events)
    print(
        f"scenario: {args.users} users watching {args.watch} each, {seconds:.0f} s simulated, "
        f"hb {HB} s, grace {GRACE:.0f} s, seed {args.seed}"
    )
    print("churn (mean s): " + ", ".join(f"{k} {v:g}" for k, v in churn.items()))
    print("events: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    results = {}
    for mode in ("naive", "optimised"):
        started = time.process_time()
        sim = Sim(mode == "naive", watch, link, since=not args.no_since)
        sim.run(events, seconds)
        check(sim, mode)
        results[mode] = sim
        frames, nbytes = sim.wire.presence()
        stats = sim.node.metrics.stats
        print(
            f"{mode:>9}: presence traffic {frames:>9,} frames {nbytes:>12,} bytes  "
            + "  ".join(
                f"{t} {sim.wire.frames[t]:,}/{sim.wire.bytes[t]:,}B" for t in PRESENCE_TYPES
            )
            + f" ({sim.wire.since:,} with since)"
            + f"  | pings saved: liveness {stats.pings_saved_live:,} transfer "
            f"{stats.pings_saved_transfer:,}; coalesced {stats.presence_coalesced:,}"
            f"  ({time.process_time() - started:.1f} s CPU)"
        )
    naive, best = results["naive"], results["optimised"]
    if naive.records() != best.records():
        raise SystemExit("final presence records differ between the two modes")
    if naive.views() != best.views():
        raise SystemExit("final client views differ between the two modes")
    online = sum(1 for r in best.records().values() if r[0] != "offline")
    print(
        f"final states identical: {len(best.records())} users with a record, {online} not offline, "
        f"{len(best.views())} connected devices whose views match"
    )
    saved = 1 - best.wire.presence()[1] / naive.wire.presence()[1]
    verdict = "met" if saved >= 0.8 else "missed"
    print(f"presence bytes saved: {saved:.1%} (goal of 80% {verdict})")


if __name__ == "__main__":
    main()
