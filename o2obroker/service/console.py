"""The admin console: a Python prompt inside the running node (twisted.conch's manhole).

Whoever reaches it runs code as the broker, so it is off unless configured,
listens on loopback only (reach it from elsewhere through an SSH tunnel), and
lets in only the SSH keys of an ``authorized_keys`` file. Telnet, plain text,
is served only when configured explicitly, on loopback, with a password file.
After twisted.conch.manhole_tap, with public keys instead of passwords.
"""

from __future__ import annotations

import contextlib
import io
import os
import pprint
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import manhole, manhole_ssh, telnet
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.error import IgnoreAuthentication
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.cred import checkers, portal
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from o2obroker.config import Config, ConfigError, local_endpoint
from o2obroker.service.facade import Broker
from o2obroker.service.listen import Listener

log = Logger()


def read_authorized_keys(path: str) -> list[keys.Key]:
    """The public keys of an OpenSSH ``authorized_keys`` file (options before a key are
    not supported: such a line is refused, not silently widened)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"manhole_keys: cannot read {path}: {e.strerror}") from None
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            found.append(keys.Key.fromString(line))
        except (keys.BadKeyError, ValueError, IndexError) as e:
            raise ConfigError(
                f"manhole_keys: {path} line {number}: not a public key ({e})"
            ) from None
    if not found:
        raise ConfigError(f"manhole_keys: {path} holds no key; a console without keys is refused")
    return found


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """Every key of the file, for any user name: the key is the credential."""

    def __init__(self, authorized: list[keys.Key]) -> None:
        self.keys = authorized

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterator[keys.Key]:
        return iter(self.keys)


def read_host_key(path: str) -> keys.Key:
    """The private host key in ``path``; ConfigError when it cannot serve as one."""
    try:
        key = keys.Key.fromFile(path)
    except OSError as e:
        raise ConfigError(f"manhole_host_key: cannot read {path}: {e.strerror}") from None
    except (keys.BadKeyError, ValueError, IndexError, TypeError) as e:
        raise ConfigError(f"manhole_host_key: {path} is not a private key ({e})") from None
    if key.isPublic():
        raise ConfigError(f"manhole_host_key: {path} is a public key; give the private one")
    return key


def host_key(path: str | None) -> keys.Key:
    """The console's SSH host key: read from ``path``, made there (mode 0600) when it
    does not exist yet, or made for this run only when no path is configured. Its
    fingerprint is logged as ``ssh`` shows it, for the operator's first connection."""
    if path and os.path.lexists(path):
        key = read_host_key(path)
        log.info("manhole: host key {fp} from {path}", fp=fingerprint(key), path=path)
        return key
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise ConfigError(f"manhole_host_key: cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
        log.info("manhole: new host key {fp} in {path}", fp=fingerprint(key), path=path)
    else:
        log.warn(
            "manhole: no manhole_host_key configured; this run's host key is {fp}",
            fp=fingerprint(key),
        )
    return key


def namespace(node: Any, top: service.IService | None = None, **extra: Any) -> dict[str, Any]:
    """What the console's prompt starts with: the facade and the live objects."""
    ns: dict[str, Any] = {
        "broker": Broker(node),
        "node": node,
        "config": node.config,
        "gateway": node.gateway,
        "router": node.router,
        "actors": node.actors,
        "backend": node.backend,
        "supervisor": getattr(node, "supervisor", None),
        "application": top,
        "__name__": "__console__",
        "__doc__": None,
    }
    ns.update(extra)
    return ns


def _terminal(ns: dict[str, Any]) -> Any:
    def make() -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, ns)

    return make


def fingerprint(key: keys.Key) -> str:
    """A key's fingerprint as ``ssh`` and ``ssh-keygen -l`` show it: ``SHA256:<base64>``."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def _peer(transport: Any) -> str:
    address = transport.getPeer() if transport is not None else None
    address = getattr(address, "address", address)  # SSH transports wrap the TCP address
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else "-"


class _ConsoleUserAuth(userauth.SSHUserAuthServer):
    """SSH user auth that logs each console login, and each refused one, with the key's
    SHA256 fingerprint and the peer (conch itself says it only at debug level)."""

    _blob: bytes | None = None

    @property
    def _log(self) -> Logger:
        return _CONCH_USERAUTH_LOG

    def auth_publickey(self, packet: bytes) -> Any:
        self._blob = getNS(packet[1:], 2)[1]
        return super().auth_publickey(packet)

    def _key(self) -> str:
        try:
            return fingerprint(keys.Key.fromString(self._blob)) if self._blob else "no key"
        except keys.BadKeyError:
            return "a bad key"

    def _cbFinishedAuth(self, result: Any) -> None:
        log.info(
            "console login: {user} from {peer} with key {key}",
            event="console_login",
            user=self.user.decode("utf-8", "replace"),
            peer=_peer(self.transport.transport),
            key=self._key(),
        )
        super()._cbFinishedAuth(result)

    def _ebBadAuth(self, reason: Any) -> None:
        if not reason.check(IgnoreAuthentication) and self.method != b"none":
            log.warn(
                "console login refused: {user} from {peer} with {method} ({key})",
                event="console_refused",
                user=self.user.decode("utf-8", "replace"),
                peer=_peer(self.transport.transport),
                method=self.method.decode("ascii", "replace"),
                key=self._key(),
            )
        super()._ebBadAuth(reason)


# conch's own lines keep conch's namespaces under our subclasses, so that the node's log
# filter (o2obroker.logs.quiet) still knows them
_CONCH_TRANSPORT_LOG = Logger(namespace="twisted.conch.ssh.transport")
_CONCH_USERAUTH_LOG = Logger(namespace="twisted.conch.ssh.userauth")


class _ConsoleTransport(SSHServerTransport):
    """The console's SSH transport: a client that says goodbye is not an error."""

    @property
    def _log(self) -> Logger:
        return _CONCH_TRANSPORT_LOG

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if reasonCode == DISCONNECT_BY_APPLICATION:  # ``ssh`` ends every session so
            return
        log.warn(
            "console: {peer} disconnected with SSH error {code}: {reason}",
            peer=_peer(self.transport),
            code=reasonCode,
            reason=description.decode("utf-8", "replace"),
        )


class _Session(manhole_ssh.TerminalSession):
    """A console session: an interactive prompt (``ssh -t``), or one command run, printed
    and exited with its status (``ssh host 'broker.stats()'``). End of input closes it."""

    width, height = 80, 24  # without a pty
    pty = False
    namespace: dict[str, Any]
    _proto: Any = None
    _terminal: Any = None

    def getPty(self, term: bytes, windowSize: Any, attrs: Any) -> None:
        super().getPty(term, windowSize, attrs)
        self.pty = True

    def openShell(self, proto: Any) -> None:
        self._proto = proto
        self._terminal = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, size: Any) -> None:
        self.height, self.width = size[:2]
        if self._terminal is not None:
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self) -> None:
        # piped input has ended (printf 'broker.stats()\n' | ssh -tt ...): so has the session
        if self._proto is not None:
            self._proto.processEnded(Failure(ProcessDone(0)))

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        run_command(self.namespace, cmd.decode("utf-8", "replace"), proto, crlf=self.pty)


def run_command(ns: dict[str, Any], source: str, proto: Any, crlf: bool = False) -> Deferred[None]:
    """Run one console command (an expression is printed; a Deferred is waited for),
    write its output to ``proto`` and end it with exit status 0, or 1 on an exception.
    ``crlf``: lines end in CR LF, for a client that asked for a terminal (``ssh -t``)."""
    out = io.StringIO()

    def finish(value: Any, failed: bool = False) -> None:
        if failed:
            out.write(value.getTraceback())
        elif value is not None:
            out.write(pprint.pformat(value, width=100) + "\n")
        text = out.getvalue()
        if crlf:
            text = text.replace("\n", "\r\n")
        if text:
            proto.write(text.encode("utf-8"))
        reason = ProcessTerminated(exitCode=1) if failed else ProcessDone(0)
        proto.processEnded(Failure(reason))

    try:
        with contextlib.redirect_stdout(out):
            try:
                code = compile(source, "<console>", "eval")
            except SyntaxError:
                exec(compile(source, "<console>", "exec"), ns)
                value = None
            else:
                value = eval(code, ns)
    except (Exception, SystemExit):
        finish(Failure(), failed=True)
        return succeed(None)
    result = maybeDeferred(lambda: value)
    result.addCallbacks(finish, lambda f: finish(f, failed=True))
    return result


class _ConsoleRealm(manhole_ssh.TerminalRealm):
    sessionFactory = _Session

    def __init__(self, ns: dict[str, Any]) -> None:
        super().__init__()
        self.ns = ns
        self.chainedProtocolFactory = _terminal(ns)

    def _getAvatar(self, avatarId: Any) -> Any:
        user = super()._getAvatar(avatarId)
        ISession(user.original).namespace = self.ns
        return user


def ssh_factory(ns: dict[str, Any], authorized: list[keys.Key], key: keys.Key) -> Any:
    """An SSH server factory whose sessions are manholes over ``ns``."""
    checker = SSHPublicKeyChecker(AuthorizedKeys(authorized))
    factory = manhole_ssh.ConchFactory(portal.Portal(_ConsoleRealm(ns), [checker]))
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    factory.services = {**factory.services, b"ssh-userauth": _ConsoleUserAuth}
    factory.protocol = _ConsoleTransport
    factory.noisy = False
    return factory


@implementer(portal.IRealm)
class _TelnetRealm:
    def __init__(self, ns: dict[str, Any]) -> None:
        self.ns = ns

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if telnet.ITelnetProtocol in interfaces:
            proto = telnet.TelnetBootstrapProtocol(
                insults.ServerProtocol, manhole.ColoredManhole, self.ns
            )
            return telnet.ITelnetProtocol, proto, lambda: None
        raise NotImplementedError()


class _TelnetLogin(telnet.AuthenticatingTelnetProtocol):
    """Telnet's user-and-password prompt, logging each login and each refused one."""

    _user = b""

    def telnet_User(self, line: bytes) -> str:
        self._user = line  # the parent forgets it once the password is in
        return str(super().telnet_User(line))

    def _cbLogin(self, ial: Any) -> None:
        log.info(
            "console login: {user} from {peer} over telnet",
            event="console_login",
            user=self._user.decode("utf-8", "replace"),
            peer=_peer(self.transport),
        )
        super()._cbLogin(ial)

    def _ebLogin(self, failure: Any) -> None:
        log.warn(
            "console login refused: {user} from {peer} over telnet (wrong user or password)",
            event="console_refused",
            user=self._user.decode("utf-8", "replace"),
            peer=_peer(self.transport),
        )
        super()._ebLogin(failure)


def telnet_factory(ns: dict[str, Any], passwd: str) -> protocol.ServerFactory:
    """A telnet server factory that asks for a user and password of a passwd(5)-style file."""
    if not os.access(passwd, os.R_OK):
        raise ConfigError(f"manhole_passwd: cannot read {passwd}")
    checker = checkers.FilePasswordDB(passwd, cache=True)
    guarded = portal.Portal(_TelnetRealm(ns), [checker])
    factory = protocol.ServerFactory()
    factory.protocol = lambda: telnet.TelnetTransport(_TelnetLogin, guarded)
    factory.noisy = False
    return factory


def check_console_files(config: Config) -> None:
    """Read the console's key and password files now, so a bad one stops the start
    with a usage error rather than a traceback."""
    if config.manhole and config.manhole_keys:
        read_authorized_keys(config.manhole_keys)
    path = config.manhole_host_key
    if config.manhole and path and os.path.lexists(path):
        read_host_key(path)
    passwd = config.manhole_passwd
    if config.manhole_telnet and passwd and not os.access(passwd, os.R_OK):
        raise ConfigError(f"manhole_passwd: cannot read {passwd}")


def console_service(
    config: Config, ns: dict[str, Any], reactor: Any = None
) -> service.MultiService | None:
    """The console's listeners, or None when none is configured. Refuses (ConfigError)
    a listener off loopback, SSH without keys and telnet without passwords."""
    if not (config.manhole or config.manhole_telnet):
        return None
    top = service.MultiService()
    top.setName("console")
    if config.manhole:
        if not config.manhole_keys:
            raise ConfigError("manhole: needs manhole_keys; a console without keys is refused")
        if not local_endpoint(config.manhole):
            raise ConfigError(f"manhole: {config.manhole!r} is not on loopback")
        factory = ssh_factory(
            ns, read_authorized_keys(config.manhole_keys), host_key(config.manhole_host_key)
        )
        Listener("manhole", config.manhole, factory, reactor, "ssh").setServiceParent(top)
    if config.manhole_telnet:
        if not config.manhole_passwd:
            raise ConfigError("manhole_telnet: needs manhole_passwd")
        if not local_endpoint(config.manhole_telnet):
            raise ConfigError(f"manhole_telnet: {config.manhole_telnet!r} is not on loopback")
        plain = telnet_factory(ns, config.manhole_passwd)
        Listener(
            "manhole_telnet", config.manhole_telnet, plain, reactor, "telnet"
        ).setServiceParent(top)
    return top
