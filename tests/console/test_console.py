"""The admin console: a real SSH client logs in with a key on loopback and talks to the manhole."""

from __future__ import annotations

import os
import shlex
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import telnet
from twisted.conch.ssh import connection, keys, session, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from o2obroker.config import Config, ConfigError
from o2obroker.service import tap
from o2obroker.service.console import (
    console_service,
    fingerprint,
    host_key,
    namespace,
    read_authorized_keys,
)
from o2obroker.service.node import Node
from tests.harness import Harness


def new_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


class _Collects:
    """What a console client has printed so far, and waits for a piece of it."""

    output: bytes
    _wanted: list[tuple[bytes, Deferred[bytes]]]

    def dataReceived(self, data: bytes) -> None:
        self.output += data
        for item in list(self._wanted):
            if item[0] in self.output:
                self._wanted.remove(item)
                item[1].callback(self.output)

    def wait_for(self, text: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if text in self.output:
            d.callback(self.output)
        else:
            self._wanted.append((text, d))
        return d.addTimeout(20, reactor)


class _Shell(_Collects, SSHChannel):
    """An interactive session with a pty, like ``ssh -t``; collects what the console prints."""

    name = b"session"

    def __init__(self, opened: Deferred[Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.opened = opened
        self.output = b""
        self._wanted: list[tuple[bytes, Deferred[bytes]]] = []

    def channelOpen(self, data: bytes) -> None:
        pty = session.packRequest_pty_req(b"xterm", (24, 200, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallbacks(lambda _: self.opened.callback(self), self.opened.errback)

    def run(self, line: str) -> None:
        self.write(line.encode() + b"\r")


class _Connection(connection.SSHConnection):
    def __init__(self, opened: Deferred[Any]) -> None:
        super().__init__()
        self.opened = opened

    def serviceStarted(self) -> None:
        self.openChannel(_Shell(self.opened, conn=self))


class _KeyAuth(userauth.SSHUserAuthClient):
    preferredOrder = [b"publickey"]

    def __init__(self, user: bytes, conn: Any, key: keys.Key) -> None:
        super().__init__(user, conn)
        self._key: keys.Key | None = key

    def getPublicKey(self) -> keys.Key | None:
        key, self._key = self._key, None  # one key, one try
        self._tried = key
        return None if key is None else key.public()

    def getPrivateKey(self) -> Deferred[keys.Key]:
        return defer.succeed(self._tried)


class _Client(SSHClientTransport):
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        if hostKey != self.factory.host_public.blob():
            return defer.fail(ValueError("unknown host key"))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        f = self.factory
        self.requestService(_KeyAuth(b"admin", _Connection(f.opened), f.key))

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if not self.factory.lost.called:
            self.factory.lost.callback(None)


class _ClientFactory(protocol.ClientFactory):
    protocol = _Client

    def __init__(self, key: keys.Key, host_public: keys.Key) -> None:
        self.key = key
        self.host_public = host_public
        self.opened: Deferred[Any] = Deferred()
        self.lost: Deferred[None] = Deferred()


class SSHConsoleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.harness = Harness()
        self.admin = new_key()
        self.keys_path = self.mktemp()
        with open(self.keys_path, "wb") as f:
            f.write(b"# the operators\n\n" + self.admin.public().toString("openssh") + b" ops\n")
        self.host_key_path = self.mktemp()
        config = Config(
            manhole="tcp:0:interface=127.0.0.1",
            manhole_keys=self.keys_path,
            manhole_host_key=self.host_key_path,
        )
        config.check()
        self.console = console_service(config, namespace(self.harness.node), reactor)
        self.console.startService()
        self.addCleanup(self.console.stopService)

    @inlineCallbacks
    def connect(self, key: keys.Key) -> Any:
        ssh = self.console.getServiceNamed("ssh")
        ports: list[Any] = []
        ssh._waitingForPort.addCallback(lambda p: ports.append(p) or p)  # keep it for stop
        port = ports[0]
        host = keys.Key.fromFile(self.host_key_path)
        factory = _ClientFactory(key, host.public())
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield endpoint.connect(factory)
        self.addCleanup(lambda: factory.lost)  # cleanups run last first: close, then wait
        self.addCleanup(client.transport.loseConnection)
        return factory

    @inlineCallbacks
    def test_key_login_runs_broker_stats(self) -> Any:
        self.harness.login("alice")
        factory = yield self.connect(self.admin)
        shell = yield factory.opened.addTimeout(20, reactor)
        yield shell.wait_for(b">>> ")
        shell.run("s = broker.stats(); print('CONN', s['connections'], 'ACTORS', s['actors'])")
        out = yield shell.wait_for(b"ACTORS 1")
        self.assertIn(b"CONN {'tcp': 1} ACTORS 1", out)
        shell.run("broker.user('alice')['devices']['phone']['transport']")
        out = yield shell.wait_for(b"'tcp'")
        self.assertIn(b"'tcp'", out)

    @inlineCallbacks
    def test_unknown_key_is_refused(self) -> Any:
        factory = yield self.connect(new_key())
        yield factory.lost.addTimeout(20, reactor)
        self.assertFalse(factory.opened.called)

    def test_host_key_is_kept_for_the_next_start(self) -> None:
        with open(self.host_key_path, "rb") as f:
            first = f.read()
        self.assertFalse(keys.Key.fromString(first).isPublic())
        self.assertEqual(os.stat(self.host_key_path).st_mode & 0o777, 0o600)

    def test_host_key_fingerprint_is_logged_as_ssh_shows_it(self) -> None:
        kept = keys.Key.fromFile(self.host_key_path)
        with capturedLogs() as events:
            host_key(self.host_key_path)
        [line] = [e for e in events if "fp" in e]
        self.assertEqual(line["fp"], fingerprint(kept))
        self.assertRegex(line["fp"], r"^SHA256:[A-Za-z0-9+/]{43}$")


class ConsoleConfigTests(unittest.TestCase):
    def keys_file(self) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(new_key().public().toString("openssh") + b"\n")
        return path

    def test_off_unless_configured(self) -> None:
        self.assertIsNone(console_service(Config(), {}))

    def test_ssh_without_keys_is_refused(self) -> None:
        config = Config(manhole="tcp:2222:interface=127.0.0.1")
        error = self.assertRaises(ConfigError, config.check)
        self.assertIn("manhole_keys", str(error))

    def test_ssh_off_loopback_is_refused(self) -> None:
        keys_path = self.keys_file()
        for endpoint in ("tcp:2222", "tcp:2222:interface=0.0.0.0", "tcp:2222:interface=10.1.2.3"):
            config = Config(manhole=endpoint, manhole_keys=keys_path)
            error = self.assertRaises(ConfigError, config.check)
            self.assertIn("not on loopback", str(error))
        for endpoint in (
            "tcp:2222:interface=127.0.0.1",
            r"tcp6:2222:interface=\:\:1",
            "unix:/run/o2obroker/console.sock",
        ):
            Config(manhole=endpoint, manhole_keys=keys_path).check()

    def test_telnet_needs_passwords_and_loopback(self) -> None:
        config = Config(manhole_telnet="tcp:2323:interface=127.0.0.1")
        self.assertIn("manhole_passwd", str(self.assertRaises(ConfigError, config.check)))
        config = Config(manhole_telnet="tcp:2323", manhole_passwd="/etc/o2o-passwd")
        self.assertIn("not on loopback", str(self.assertRaises(ConfigError, config.check)))
        Config(manhole_telnet="tcp:2323:interface=127.0.0.1", manhole_passwd="/x").check()

    def test_telnet_listens_on_loopback_with_a_password_file(self) -> None:
        passwd = self.mktemp()
        with open(passwd, "w", encoding="utf-8") as f:
            f.write("ops:correct horse battery staple\n")
        config = Config(manhole_telnet="tcp:0:interface=127.0.0.1", manhole_passwd=passwd)
        config.check()
        console = console_service(config, {})
        telnet = console.getServiceNamed("telnet")
        self.assertEqual(telnet.endpoint._interface, "127.0.0.1")
        self.assertRaises(KeyError, console.getServiceNamed, "ssh")
        config.manhole_passwd = self.mktemp()  # missing
        self.assertIn(
            "cannot read", str(self.assertRaises(ConfigError, console_service, config, {}))
        )

    def test_empty_or_bad_keys_file_is_refused(self) -> None:
        empty = self.mktemp()
        with open(empty, "wb") as f:
            f.write(b"# nobody yet\n")
        self.assertIn(
            "holds no key", str(self.assertRaises(ConfigError, read_authorized_keys, empty))
        )
        bad = self.mktemp()
        with open(bad, "wb") as f:
            f.write(b"ssh-ed25519 not-base64!!\n")
        self.assertIn("line 1", str(self.assertRaises(ConfigError, read_authorized_keys, bad)))
        missing = self.mktemp()
        self.assertIn(
            "cannot read", str(self.assertRaises(ConfigError, read_authorized_keys, missing))
        )

    def test_options_build_the_console_into_the_service_tree(self) -> None:
        options = tap.Options()
        options.parseOptions(
            ["--manhole", "tcp:0:interface=127.0.0.1", "--manhole-keys", self.keys_file()]
        )
        top = tap.makeService(options, reactor)
        console = top.getServiceNamed("console")
        self.assertEqual(console.getServiceNamed("ssh").endpoint._interface, "127.0.0.1")
        self.assertFalse(console.running)

    def test_options_refuse_an_unreadable_keys_file(self) -> None:
        options = tap.Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--manhole", "tcp:0:interface=127.0.0.1", "--manhole-keys", self.mktemp()],
        )
        self.assertIn("manhole_keys: cannot read", str(error))

    def test_options_refuse_a_console_without_keys(self) -> None:
        options = tap.Options()
        self.assertRaises(
            usage.UsageError, options.parseOptions, ["--manhole", "tcp:2222:interface=127.0.0.1"]
        )


class _Telnet(_Collects, telnet.TelnetProtocol):
    """A telnet client that agrees to what the manhole asks for (echo, window size...)."""

    def __init__(self) -> None:
        self.output = b""
        self._wanted: list[tuple[bytes, Deferred[bytes]]] = []

    def enableRemote(self, option: bytes) -> bool:
        return option in (telnet.ECHO, telnet.SGA)

    def enableLocal(self, option: bytes) -> bool:
        return option in (telnet.NAWS, telnet.SGA, telnet.LINEMODE)

    def send(self, line: bytes) -> None:
        self.transport.write(line)


def _telnet_client() -> protocol.Factory:
    return protocol.Factory.forProtocol(lambda: telnet.TelnetTransport(_Telnet))


class TelnetConsoleTests(unittest.TestCase):
    @inlineCallbacks
    def test_password_login_runs_broker_stats(self) -> Any:
        harness = Harness()
        passwd = self.mktemp()
        with open(passwd, "w", encoding="utf-8") as f:
            f.write("ops:staple\n")
        config = Config(manhole_telnet="tcp:0:interface=127.0.0.1", manhole_passwd=passwd)
        console = console_service(config, namespace(harness.node), reactor)
        console.startService()
        self.addCleanup(console.stopService)
        ports: list[Any] = []
        console.getServiceNamed("telnet")._waitingForPort.addCallback(
            lambda p: ports.append(p) or p
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port)
        transport = yield endpoint.connect(_telnet_client())
        client = transport.protocol
        self.addCleanup(transport.loseConnection)
        yield client.wait_for(b"Username: ")
        client.send(b"ops\n")
        yield client.wait_for(b"Password: ")
        client.send(b"staple\n")
        yield client.wait_for(b">>> ")
        client.send(b"print('NODE', broker.stats()['node'])\n")
        out = yield client.wait_for(b"NODE n1")
        self.assertIn(b"NODE n1", out)


SSH = "/usr/bin/ssh"


class OpenSSHClientTests(unittest.TestCase):
    """The console with the real OpenSSH client, as an operator uses it."""

    timeout = 60

    def setUp(self) -> None:
        if not os.path.exists(SSH):
            raise unittest.SkipTest("no ssh client")
        self.node = Node(Config(), reactor)  # the real reactor: sends are answered by it
        admin = new_key()
        self.key_path = os.path.abspath(self.mktemp())
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(admin.toString("openssh"))
        self.public_line = admin.public().toString("openssh")
        keys_path = self.mktemp()
        with open(keys_path, "wb") as f:
            f.write(self.public_line + b" ops\n")
        self.host_key_path = self.mktemp()
        config = Config(
            manhole="tcp:0:interface=127.0.0.1",
            manhole_keys=keys_path,
            manhole_host_key=self.host_key_path,
        )
        self.console = console_service(config, namespace(self.node), reactor)
        self.console.startService()
        self.addCleanup(self.console.stopService)
        ports: list[Any] = []
        self.console.getServiceNamed("ssh")._waitingForPort.addCallback(
            lambda p: ports.append(p) or p
        )
        self.port = ports[0].getHost().port
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def ssh(
        self, command: str | None, *options: str, stdin: str | None = None
    ) -> Deferred[tuple[bytes, bytes, int]]:
        argv = [
            SSH,
            "-F",
            "/dev/null",
            "-i",
            self.key_path,
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            *options,
            "admin@127.0.0.1",
            *([command] if command is not None else []),
        ]
        if stdin is None:
            return getProcessOutputAndValue(argv[0], argv[1:], env=dict(os.environ))
        shell = "printf '%s' " + shlex.quote(stdin) + " | " + shlex.join(argv)
        return getProcessOutputAndValue("/bin/sh", ["-c", shell], env=dict(os.environ))

    async def test_one_command_prints_and_exits(self) -> None:
        out, err, code = await self.ssh("broker.stats()['node']")
        self.assertEqual((out, code), (b"'n1'\n", 0), err)
        out, err, code = await self.ssh("print('a'); print('b')")
        self.assertEqual((out, code), (b"a\nb\n", 0), err)

    async def test_one_command_on_a_terminal_ends_lines_for_it(self) -> None:
        out, err, code = await self.ssh("print('a'); print('b')", "-tt")
        self.assertEqual((out, code), (b"a\r\nb\r\n", 0), err)

    async def test_a_failing_command_exits_non_zero(self) -> None:
        out, _, code = await self.ssh("broker.user(")
        self.assertEqual(code, 1)
        self.assertIn(b"SyntaxError", out)
        out, _, code = await self.ssh("1 / 0")
        self.assertEqual(code, 1)
        self.assertIn(b"ZeroDivisionError", out)

    async def test_a_deferred_is_waited_for(self) -> None:
        out, err, code = await self.ssh("broker.inbox('alice')")
        self.assertEqual((code, out), (0, b"{'first': 1, 'last': 0, 'user': 'alice'}\n"), err)

    async def test_receipts_of_console_sends_are_counted(self) -> None:
        out, err, code = await self.ssh("broker.send('alice', {'text': 'hi'})")
        self.assertEqual(code, 0, err)
        self.assertIn(b"'status': 'stored'", out)
        out, err, code = await self.ssh("broker.stats()['receipts']")
        self.assertEqual((out, code), (b"{'stored': 1}\n", 0), err)

    async def test_piped_input_ends_the_session_cleanly(self) -> None:
        out, err, code = await self.ssh("-tt", stdin="print('NODE', broker.stats()['node'])\n")
        self.assertEqual(code, 0, err)
        self.assertIn(b"NODE n1", out)
        # no traceback of an unimplemented end of input in the node's log
        self.assertEqual([e for e in self.events if e.get("log_failure")], [])

    async def test_login_is_logged_with_the_sha256_fingerprint_ssh_shows(self) -> None:
        await self.ssh("1")
        [login] = [e for e in self.events if e.get("event") == "console_login"]
        expected = keys.Key.fromString(self.public_line).fingerprint(
            keys.FingerprintFormats.SHA256_BASE64
        )
        self.assertEqual(login["key"], "SHA256:" + expected.rstrip("="))
        self.assertEqual(login["user"], "admin")
        self.assertRegex(login["peer"], r"^127\.0\.0\.1:\d+$")

    async def test_a_refused_key_is_logged(self) -> None:
        other = new_key()
        with open(self.key_path, "wb") as f:
            f.write(other.toString("openssh"))
        _, _, code = await self.ssh("1")
        self.assertEqual(code, 255)
        refused = [e for e in self.events if e.get("event") == "console_refused"]
        self.assertTrue(refused)
        self.assertEqual(refused[0]["key"], fingerprint(other))


class TelnetLoginLogTests(unittest.TestCase):
    @inlineCallbacks
    def test_a_wrong_password_is_logged(self) -> Any:
        passwd = self.mktemp()
        with open(passwd, "w", encoding="utf-8") as f:
            f.write("ops:staple\n")
        config = Config(manhole_telnet="tcp:0:interface=127.0.0.1", manhole_passwd=passwd)
        console = console_service(config, namespace(Harness().node), reactor)
        console.startService()
        self.addCleanup(console.stopService)
        ports: list[Any] = []
        console.getServiceNamed("telnet")._waitingForPort.addCallback(
            lambda p: ports.append(p) or p
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports[0].getHost().port)
        transport = yield endpoint.connect(_telnet_client())
        client = transport.protocol
        self.addCleanup(transport.loseConnection)
        yield client.wait_for(b"Username: ")
        client.send(b"ops\n")
        yield client.wait_for(b"Password: ")
        client.send(b"guess\n")
        yield client.wait_for(b"Authentication failed")
        [refused] = [e for e in events if e.get("event") == "console_refused"]
        self.assertEqual(refused["user"], "ops")
        self.assertRegex(refused["peer"], r"^127\.0\.0\.1:\d+$")
        yield client.wait_for(b"Username: ")
        client.output = b""  # the next prompts are new ones
        client.send(b"ops\n")
        yield client.wait_for(b"Password: ")
        client.send(b"staple\n")
        yield client.wait_for(b">>> ")
        [login] = [e for e in events if e.get("event") == "console_login"]
        self.assertEqual(login["user"], "ops")
