"""Who is this? HS256 JWTs in production, a plain user id in development."""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from o2obroker.wire import ProtocolError
from o2obroker.wire.frames import Hello, valid_user
from o2obroker.wire.limits import Limits

#: user ids no client may take: the HTTP API publishes as ``system`` by default,
#: so a client that said hello as ``system`` could claim its send ids first
RESERVED_USERS = frozenset({"system"})
#: seconds of clock difference allowed between the token's issuer and the node
LEEWAY = 10.0


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user and what its credentials allow."""

    user: str
    rooms: frozenset[str] | None = None  # None: any room
    app: str | None = None  # the token's app claim: it wins over the hello's

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms


class Authenticator:
    """Checks a hello's credentials; raises ProtocolError 401 when they fail.

    ``mode`` is ``token`` (a JWT signed with ``secret``: ``sub`` names the
    user, ``exp`` and ``nbf`` are honoured, ``rooms`` limits joins) or
    ``none``, where a hello names its user and nothing is checked. Times are
    read from ``clock``, with ``leeway`` seconds for the issuer's clock. A
    client is told only "bad token" or "token expired"; the detail goes to
    the log.
    """

    log = Logger()

    def __init__(
        self,
        mode: str,
        secret: str | None,
        limits: Limits,
        clock: IReactorTime,
        *,
        leeway: float = LEEWAY,
    ) -> None:
        if mode not in ("token", "none"):
            raise ValueError(f"auth must be 'token' or 'none', not {mode!r}")
        if mode == "token" and not secret:
            raise ValueError("auth 'token' needs a secret")
        self.mode = mode
        self._secret = secret
        self._limits = limits
        self._clock = clock
        self._leeway = leeway

    def authenticate(self, hello: Hello) -> Identity:
        identity = self._identify(hello)
        if identity.user in RESERVED_USERS:
            raise ProtocolError(401, "reserved user id", fatal=True)
        return identity

    def _identify(self, hello: Hello) -> Identity:
        if self.mode == "none":
            user = hello.user
            if user is None and hello.token is not None and self._secret:
                return self._from_token(hello.token, hello.user)
            if user is None:
                raise ProtocolError(401, "hello needs a user (auth is none) or a token", fatal=True)
            return Identity(user)
        if hello.token is None:
            raise ProtocolError(401, "hello needs a token", fatal=True)
        return self._from_token(hello.token, hello.user)

    def _from_token(self, token: str, claimed: str | None) -> Identity:
        try:
            # times are checked below, against the node's clock
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={
                    "require": ["sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as e:
            self.log.info("bad token: {error}", error=str(e))
            raise ProtocolError(401, "bad token", fatal=True) from None
        now = self._clock.seconds()
        exp = self._time(claims, "exp")
        if exp is not None and exp <= now - self._leeway:
            raise ProtocolError(401, "token expired", fatal=True)
        nbf = self._time(claims, "nbf")
        if nbf is not None and nbf > now + self._leeway:
            self.log.info("bad token: not valid before {nbf}", nbf=nbf)
            raise ProtocolError(401, "bad token", fatal=True)
        user = claims.get("sub")
        if not isinstance(user, str) or not valid_user(user, self._limits):
            raise ProtocolError(401, "bad token: sub is not a valid user id", fatal=True)
        if claimed is not None and claimed != user:
            raise ProtocolError(401, "hello names another user than its token", fatal=True)
        app = claims.get("app")
        if app is not None and not isinstance(app, str):
            raise ProtocolError(401, "bad token: app must be a string", fatal=True)
        rooms = claims.get("rooms", "*")
        if rooms == "*":
            return Identity(user, None, app)
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise ProtocolError(401, "bad token: rooms must be a list of names or '*'", fatal=True)
        return Identity(user, frozenset(rooms), app)

    def _time(self, claims: dict[str, object], name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if type(value) not in (int, float) or value != value:
            self.log.info("bad token: {name} is not a number", name=name)
            raise ProtocolError(401, "bad token", fatal=True)
        return float(value)  # type: ignore[arg-type]


def make_token(
    secret: str,
    user: str,
    *,
    exp: float | None = None,
    rooms: list[str] | None = None,
    app: str | None = None,
) -> str:
    """Sign a token as the broker expects it (for tools, tests and back ends)."""
    claims: dict[str, object] = {"sub": user}
    if app is not None:
        claims["app"] = app
    if exp is not None:
        claims["exp"] = int(exp)
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm="HS256")
