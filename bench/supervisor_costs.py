"""What the supervisor costs the reactor: one sample, one hello's admission check, a drain.

Runs a node on a task.Clock with N binary devices on StringTransports (tests/harness.py)
and the real psutil sampler:

    .venv/bin/python bench/supervisor_costs.py [N]

The drain's CPU per slice is mostly the sessions' own closing; with many
connections it grows with N only because task.Clock keeps its calls in a list
it sorts on every callLater (each closed TCP connection schedules its abort
timer), which the real reactor's heap does not do.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Harness


def main(n: int = 2000) -> None:
    h = Harness(drain_rate=200)
    for i in range(n):
        h.login(f"u{i}")
    supervisor = h.node.supervisor

    def one_sample() -> None:
        supervisor.tick()
        h.clock.advance(0)  # the actor's mailbox runs on the next turn

    rounds = 2000
    t = timeit.timeit(one_sample, number=rounds)
    print(f"sample (psutil + state machine): {t / rounds * 1e6:.1f} us, {n} connections")
    rounds = 100_000
    t = timeit.timeit(h.node.gateway.refusal, number=rounds)
    print(f"admission check per hello: {t / rounds * 1e9:.0f} ns")

    done: list[None] = []
    supervisor.drain().addCallback(done.append)
    ticks, worst, start = 1, 0.0, time.perf_counter()
    while not done:
        t0 = time.perf_counter()
        h.clock.advance(0.1)
        worst = max(worst, time.perf_counter() - t0)
        ticks += 1
    total = time.perf_counter() - start
    print(
        f"drain of {n} sessions at 200/s: {ticks} slices over {(ticks - 1) / 10:.1f} s of clock, "
        f"{total / ticks * 1e3:.2f} ms CPU per slice (worst {worst * 1e3:.2f} ms)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
