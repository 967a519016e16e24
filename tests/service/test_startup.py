"""``twistd -n o2obroker`` with a bad config or a busy port: one line on stderr, exit 1.

Each test runs the real twistd as a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

TWISTD = str(Path(sys.executable).with_name("twistd"))
FREE = ["--tcp", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]


class StartupErrorTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()

    def file(self, name: str, text: str | bytes) -> str:
        path = self.dir / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return str(path)

    def busy_port(self) -> int:
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen()
        return int(s.getsockname()[1])

    async def refused(self, *args: str) -> str:
        """Run twistd; assert exit 1 and one stderr line without a traceback; return it."""
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [TWISTD, "-n", "o2obroker", *FREE, *args],
            env=dict(os.environ),
            path=str(self.dir),
            reactor=reactor,
        )
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn(b"Traceback", out + err)
        lines = err.decode().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("o2obroker: "), lines[0])
        # twistd's pid file goes with the process, so the next start is not "stale"
        self.assertFalse((self.dir / "twistd.pid").exists())
        return lines[0]

    async def test_tcp_port_in_use(self) -> None:
        port = self.busy_port()
        line = await self.refused("--tcp", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(
            line,
            f"o2obroker: tcp: cannot listen on tcp:{port}:interface=127.0.0.1: "
            "address already in use",
        )

    async def test_http_port_in_use(self) -> None:
        port = self.busy_port()
        line = await self.refused("--http", f"tcp:{port}:interface=127.0.0.1")
        self.assertIn(f"o2obroker: http: cannot listen on tcp:{port}", line)

    async def test_console_port_in_use(self) -> None:
        port = self.busy_port()
        admin = keys.Key(ed25519.Ed25519PrivateKey.generate()).public().toString("openssh")
        line = await self.refused(
            "--manhole",
            f"tcp:{port}:interface=127.0.0.1",
            "--manhole-keys",
            self.file("keys", admin + b"\n"),
        )
        self.assertIn(f"o2obroker: manhole: cannot listen on tcp:{port}", line)

    async def test_unknown_endpoint_type(self) -> None:
        line = await self.refused("--tcp", "tcpx:9100")
        self.assertIn("o2obroker: tcp: 'tcpx:9100' is not a server endpoint", line)

    async def test_hook_command_with_unbalanced_quotes(self) -> None:
        config = self.file("hook.ini", '[broker]\nscale_out_command = notify "ops\n')
        line = await self.refused("--config", config)
        self.assertIn("scale_out_command", line)
        self.assertIn("No closing quotation", line)

    async def test_malformed_host_key(self) -> None:
        admin = keys.Key(ed25519.Ed25519PrivateKey.generate()).public().toString("openssh")
        keys_path = self.file("keys", admin + b"\n")
        host_key = self.file("host_key", "not a key\n")
        config = self.file(
            "console.ini",
            "[broker]\nmanhole = tcp:0:interface=127.0.0.1\n"
            f"manhole_keys = {keys_path}\nmanhole_host_key = {host_key}\n",
        )
        line = await self.refused("--config", config)
        self.assertIn("manhole_host_key:", line)
        self.assertIn("is not a private key", line)

    async def test_unreadable_host_key(self) -> None:
        admin = keys.Key(ed25519.Ed25519PrivateKey.generate()).public().toString("openssh")
        (self.dir / "host_key").mkdir()  # unreadable even for root
        line = await self.refused(
            "--manhole",
            "tcp:0:interface=127.0.0.1",
            "--manhole-keys",
            self.file("keys", admin + b"\n"),
            "--config",
            self.file("c.ini", f"[broker]\nmanhole_host_key = {self.dir / 'host_key'}\n"),
        )
        self.assertIn("manhole_host_key: cannot read", line)

    async def test_ini_without_section_header(self) -> None:
        line = await self.refused("--config", self.file("flat.ini", "node = n2\n"))
        self.assertIn("line 1: no section header", line)

    async def test_bad_value_without_the_usage_dump(self) -> None:
        line = await self.refused("--hb", "often")
        self.assertEqual(line, "o2obroker: hb: 'often' is not an integer")

    async def test_a_daemon_tells_the_waiting_parent(self) -> None:
        port = self.busy_port()
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                *(TWISTD, "--logfile", "node.log", "--pidfile", "node.pid", "o2obroker"),
                *(*FREE, "--tcp", f"tcp:{port}:interface=127.0.0.1"),
            ],
            env=dict(os.environ),
            path=str(self.dir),
            reactor=reactor,
        )
        self.assertEqual(code, 1, (out, err))
        self.assertIn(b"An error has occurred", err)
        self.assertIn(f"tcp: cannot listen on tcp:{port}".encode(), err)
        # twistd's daemon tells the parent first and removes its pid file next:
        # the parent may return before the file is gone
        pidfile = self.dir / "node.pid"
        for _ in range(250):
            if not pidfile.exists():
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(pidfile.exists())
        log = (self.dir / "node.log").read_text()
        self.assertIn(f"cannot start: tcp: cannot listen on tcp:{port}", log)
