"""Real redis-server processes for the tests: free port, temp dir, nothing saved.

``shared()`` is one server per test process, started on first use and stopped
when the process exits; tests keep apart by key prefix, so none of them flushes
another's data. A test that stops and starts Redis makes its own
``RedisServer`` and stops it in a cleanup. Nothing here touches a system Redis
service.
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from itertools import count

from twisted.trial.unittest import SkipTest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_prefixes = count()


_given: set[int] = set()


def free_port() -> int:
    """A loopback port free now, and never handed out before in this process:
    the kernel may offer a port again once its probe socket is closed, and two
    listeners of one node (tcp and http) were once given the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port


def unique_prefix() -> str:
    """A key prefix no other test in this process uses."""
    return f"t{os.getpid()}-{next(_prefixes)}"


class RedisServer:
    """One redis-server child on loopback; ``start()`` returns once it accepts."""

    def __init__(
        self, *args: str, port: int | None = None, conf: str = "", tls: bool = False
    ) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            raise SkipTest("redis-server is not installed (make test installs it)")
        self.args = list(args)
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="o2o-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls  # then the port speaks TLS only (conf names the files)
        # lines a command line cannot carry (ACL users, TLS files)
        self.conf = os.path.join(self.dir, "redis.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            return
        argv = [REDIS_SERVER, self.conf, "--bind", "127.0.0.1"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port)]
        else:
            argv += ["--port", str(self.port)]
        argv += ["--dir", self.dir, "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--logfile", "", *self.args]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.dir
        )
        _running.add(self)
        # wait for the server's own word that it listens: reads, not sleeps
        out = self.process.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {seen[-500:]!r}")
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                self.stop()
                raise RuntimeError(f"redis-server exited: {seen[-500:]!r}")
            seen += chunk

    def stop(self) -> None:
        process, self.process = self.process, None
        _running.discard(self)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save; what is on disk is what is left."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_running: set[RedisServer] = set()
_shared: dict[int, RedisServer] = {}


def shared(n: int = 0) -> RedisServer:
    """The test process's own server number ``n``, started on first use."""
    server = _shared.get(n)
    if server is None:
        server = RedisServer()
        server.start()
        _shared[n] = server
    return server


@atexit.register
def _stop_all() -> None:
    for server in list(_running) + list(_shared.values()):
        server.destroy()
