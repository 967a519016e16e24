"""A drop-in message filter: refuses bodies with a link (found by twisted.plugin)."""

from __future__ import annotations

from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from o2obroker.policy import REJECTED, IMessageFilter


@implementer(IPlugin, IMessageFilter)
class NoLinks:
    name = "no-links"

    def check(self, messages: list[Any]) -> list[Any]:
        return [REJECTED if "http" in str(m.body) else m.body for m in messages]


no_links = NoLinks()
