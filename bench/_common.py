"""Shared pieces of the benchmarks: start servers as child processes, wait for ports."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import defer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = 20_000) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Blocking wait, before any reactor runs (benchmark set-up only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def settle(pid: int, tries: int = 40) -> int:
    """A process's RSS once it has stopped moving (it may still be handling the
    last connections)."""
    proc = psutil.Process(pid)
    last = proc.memory_info().rss
    for _ in range(tries):
        time.sleep(0.25)
        now = proc.memory_info().rss
        if abs(now - last) < 64 << 10:
            return now
        last = now
    return last


def start_broker(
    port: int, *extra: str, http: int | None = None, backlog: int | None = None
) -> subprocess.Popen[bytes]:
    """A real broker, as `twistd -n o2obroker` runs it (the embedded backend
    unless ``extra`` says otherwise), binary TCP on ``port`` (with a listen
    ``backlog`` if given), HTTP on ``http`` (a free port if not given); back
    once both listen.

    Its log goes to stdout, thrown away here: ``--logfile=/dev/null`` would
    make twistd rotate /dev/null itself (rename it, create a plain file) once
    a megabyte of log was written to it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    http = http or free_port()
    cmd = [
        str(Path(PYTHON).parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        "o2obroker",
        "--auth",
        "none",
        "--tcp",
        f"tcp:{port}:interface=127.0.0.1" + (f":backlog={backlog}" if backlog else ""),
        "--http",
        f"tcp:{http}:interface=127.0.0.1",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: raise_nofile(),
    )
    wait_port(port)
    wait_port(http)
    return proc


def start_script(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        preexec_fn=lambda: raise_nofile(),
    )


async def drive(
    sender: Any,
    receiver: Any,
    chunks: list[bytes],
    batch: int,
    window: int,
    total: int,
    sender_counts: bool = True,
) -> float:
    """Write pre-encoded ``chunks`` (``batch`` messages each) from ``sender``,
    keeping at most ``window`` chunks ahead of what ``receiver`` has counted,
    until the receiver has ``total`` messages (and, with ``sender_counts``, the
    sender ``total`` receipts). Both are counting protocols with ``count`` and
    an ``on_count`` hook. Close both; return messages per second."""
    done: defer.Deferred[None] = defer.Deferred()
    state = {"sent": 0}

    def pump() -> None:
        while state["sent"] < len(chunks) and (state["sent"] - receiver.count // batch) < window:
            sender.transport.write(chunks[state["sent"]])
            state["sent"] += 1
        finished = receiver.count >= total and (not sender_counts or sender.count >= total)
        if finished and not done.called:
            done.callback(None)

    receiver.on_count = sender.on_count = pump
    start = time.perf_counter()
    pump()
    await done
    elapsed = time.perf_counter() - start
    sender.transport.loseConnection()
    receiver.transport.loseConnection()
    return total / elapsed
