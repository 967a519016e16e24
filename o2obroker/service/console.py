"""The admin console: a Python prompt inside the running node (twisted.conch's manhole).

Whoever reaches it runs code as the broker, so it is off unless configured,
listens on loopback only (reach it from elsewhere through an SSH tunnel), and
lets in only the SSH keys of an ``authorized_keys`` file. Telnet, plain text,
is served only when configured explicitly, on loopback, with a password file.
After twisted.conch.manhole_tap, with public keys instead of passwords.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import manhole, manhole_ssh, telnet
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import checkers, portal
from twisted.internet import protocol
from twisted.logger import Logger
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


def host_key(path: str | None) -> keys.Key:
    """The console's SSH host key: read from ``path``, made there (mode 0600) when it
    does not exist yet, or made for this run only when no path is configured."""
    if path and os.path.lexists(path):
        try:
            key = keys.Key.fromFile(path)
        except OSError as e:
            raise ConfigError(f"manhole_host_key: cannot read {path}: {e.strerror}") from None
        except (keys.BadKeyError, ValueError, IndexError, TypeError) as e:
            raise ConfigError(f"manhole_host_key: {path} is not a private key ({e})") from None
        if key.isPublic():
            raise ConfigError(f"manhole_host_key: {path} is a public key; give the private one")
        return key
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise ConfigError(f"manhole_host_key: cannot create {path}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
    else:
        log.warn(
            "manhole: no manhole_host_key configured; this run's host key is {fp}",
            fp=key.fingerprint(),
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


def ssh_factory(ns: dict[str, Any], authorized: list[keys.Key], key: keys.Key) -> Any:
    """An SSH server factory whose sessions are manholes over ``ns``."""
    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = _terminal(ns)
    checker = SSHPublicKeyChecker(AuthorizedKeys(authorized))
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
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


def telnet_factory(ns: dict[str, Any], passwd: str) -> protocol.ServerFactory:
    """A telnet server factory that asks for a user and password of a passwd(5)-style file."""
    if not os.access(passwd, os.R_OK):
        raise ConfigError(f"manhole_passwd: cannot read {passwd}")
    checker = checkers.FilePasswordDB(passwd, cache=True)
    guarded = portal.Portal(_TelnetRealm(ns), [checker])
    factory = protocol.ServerFactory()
    factory.protocol = lambda: telnet.TelnetTransport(telnet.AuthenticatingTelnetProtocol, guarded)
    return factory


def check_console_files(config: Config) -> None:
    """Read the console's key and password files now, so a bad one stops the start
    with a usage error rather than a traceback."""
    if config.manhole and config.manhole_keys:
        read_authorized_keys(config.manhole_keys)
    path = config.manhole_host_key
    if config.manhole and path and os.path.lexists(path):
        host_key(path)
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
