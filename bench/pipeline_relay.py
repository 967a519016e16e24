"""Relay throughput through the message pipeline, and the archive's cost per message.

    .venv/bin/python bench/pipeline_relay.py [--messages 100000] [--batch 500] [--rounds 3]

In one run, alternately, a real broker (`twistd -n o2obroker`, embedded
backend) relays the same 1:1 traffic over binary TCP (hello, send, receipt,
msg, ack; bodies of text with Chinese and Latin words) with:

- ``off``: no policy (the baseline);
- ``filter``: a keyword filter of 10,000 words (a few of them in the bodies,
  masked);
- ``hook``: a publish hook answered by a local twisted.web server
  (bench/hook_app.py, one call per actor batch);
- ``archive``: the history archive on.

Then, in this process, the pipeline's screen of a batch alone (no stage, and
the 10,000-word filter on text that passes and on text it masks), and the
memory archive alone, in this process with the broker's GC settings:
microseconds per archived message (200,000 messages over 10,100
conversations, 20 each), against building the same StoredMessage list (the baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from _common import free_port, start_broker, start_script, wait_port
from tcp_relay import frame, run_once
from twisted.internet import defer, reactor


def configs(tmp: str, hook_port: int) -> dict[str, list[str]]:
    words = os.path.join(tmp, "words.txt")
    with open(words, "w", encoding="utf-8") as f:
        f.write("\n".join(f"词{i:05d}" for i in range(9_998)))
        f.write("\n坏蛋\nspam\n")
    texts = {
        "off": "",
        "filter": f"[policy]\nfilters = words\n[filter:words]\nfiles = {words}\n",
        "hook": (
            "[policy]\npublish_hook = app\n"
            f"[hook:app]\nurl = http://127.0.0.1:{hook_port}/hook\ntimeout = 10\n"
        ),
        "archive": "[archive]\nenabled = yes\n",
    }
    out = {}
    for name, text in texts.items():
        if not text:
            out[name] = []
            continue
        path = os.path.join(tmp, f"{name}.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        out[name] = ["--config", path]
    return out


def archive_cost(n: int = 200_000) -> tuple[float, float]:
    """Microseconds per message: building StoredMessages, and building plus archiving them."""
    from twisted.internet.task import Clock

    from o2obroker.backend.archive import MemoryArchive
    from o2obroker.backend.interface import StoredMessage
    from o2obroker.service.tap import tune_gc

    tune_gc()  # as the broker runs

    def build() -> list[StoredMessage]:
        return [
            StoredMessage(
                f"m{i}",
                i,
                {"mid": f"m{i}", "from": f"u{i % 100}", "to": f"v{i % 101}", "body": i, "ts": i},
            )
            for i in range(n)
        ]

    start = time.perf_counter()
    build()
    base = time.perf_counter() - start
    archive = MemoryArchive(Clock(), max_messages=1000)
    start = time.perf_counter()
    messages = build()
    for i in range(0, n, 500):
        archive.add(messages[i : i + 500])  # an actor batch at a time
    full = time.perf_counter() - start
    return base / n * 1e6, full / n * 1e6


def pipeline_cost(words: str, n: int = 100_000) -> dict[str, float]:
    """Microseconds per message of the pipeline's screen of a claimed batch (500
    sends), in this process: no stage (the baseline), and the 10,000-word
    filter on text that passes and on text that is masked."""
    from twisted.internet.defer import maybeDeferred

    from o2obroker.policy import Pipeline
    from o2obroker.policy.keywords import KeywordFilter, WordList
    from o2obroker.wire import Send

    class Device:
        device = "phone"

        def send_frame(self, frame: dict) -> None:
            pass

    device = Device()
    out = {}
    stage = KeywordFilter([WordList("w", (words,), "mask")], maybeDeferred)
    for name, stages, text in [
        ("no stage", [], "你好 hello there"),
        ("filter, passes", [stage], "你好 hello there"),
        ("filter, masks", [stage], "你好 坏蛋 hello spam"),
    ]:
        pipeline = Pipeline(stages)
        accepted = [
            (device, Send(str(i), "bob", None, {"text": text}), f"m{i}") for i in range(500)
        ]
        kept = [None] * 500
        start = time.perf_counter()
        for _ in range(n // 500):
            pipeline.screen("alice", None, kept, list(accepted))
        out[name] = (time.perf_counter() - start) / n * 1e6
    return out


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="o2o-bench-")
    hook_port = free_port()
    app = start_script("hook_app.py", str(hook_port))
    wait_port(hook_port)
    kinds = configs(tmp, hook_port)
    results: dict[str, list[float]] = {k: [] for k in kinds}
    n_batches = args.messages // args.batch
    try:
        for rnd in range(args.rounds):
            for kind, extra in kinds.items():
                port = free_port()
                proc = start_broker(port, *extra)
                try:
                    prefix = f"r{rnd}-"
                    batches = [
                        b"".join(
                            frame(
                                {
                                    "t": "send",
                                    "id": f"{prefix}{b}-{i}",
                                    "to": "bob",
                                    "body": {"text": f"你好 {i} 坏蛋 hello spam"},
                                }
                            )
                            for i in range(args.batch)
                        )
                        for b in range(n_batches)
                    ]
                    rate = await run_once(port, True, batches, args.batch, args.window)
                    results[kind].append(rate)
                    print(f"round {rnd + 1} {kind:8s} {rate:10,.0f} msgs/s", flush=True)
                finally:
                    proc.terminate()
                    proc.wait()
    finally:
        app.terminate()
        app.wait()
    # each variant against the baseline of its own round: the machine's load drifts
    # between rounds far more than within one
    for kind, rates in results.items():
        ratios = [r / off for r, off in zip(rates, results["off"], strict=True)]
        print(
            f"median {kind:8s} {statistics.median(rates):10,.0f} msgs/s"
            f"  {statistics.median(ratios):5.2f} of off (median of per-round ratios)"
        )
    for name, us in pipeline_cost(os.path.join(tmp, "words.txt")).items():
        print(f"pipeline screen, {name:15s} {us:6.2f} us/message")
    build_us, full_us = archive_cost()
    print(
        f"archive alone: {full_us - build_us:.2f} us/message "
        f"(build {build_us:.2f} us, build + archive {full_us:.2f} us)"
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    defer.ensureDeferred(main(args)).addBoth(lambda r: (print(r) if r else None, reactor.stop()))
    reactor.run()
