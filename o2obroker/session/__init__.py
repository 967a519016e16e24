"""The protocol state of one device, the same for every transport."""

from o2obroker.session.auth import Authenticator, Identity
from o2obroker.session.gateway import Gateway, IConnection
from o2obroker.session.liveness import Liveness
from o2obroker.session.session import Session

__all__ = ["Authenticator", "Gateway", "IConnection", "Identity", "Liveness", "Session"]
