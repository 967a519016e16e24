"""Shared pieces of the benchmarks: start servers as child processes, wait for ports."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

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


def start_broker(port: int, *extra: str) -> subprocess.Popen[bytes]:
    """A real broker, as `twistd -n o2obroker` runs it, on the embedded backend."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        str(Path(PYTHON).parent / "twistd"),
        "--nodaemon",
        "--pidfile=",
        "--logfile=/dev/null",
        "o2obroker",
        "--auth",
        "none",
        "--tcp",
        f"tcp:{port}:interface=127.0.0.1",
        "--http",
        f"tcp:{free_port()}:interface=127.0.0.1",
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
    return proc


def start_script(script: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        preexec_fn=lambda: raise_nofile(),
    )
