"""In-process message filters: twisted.plugin drop-ins, or objects named by dotted path."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from twisted.plugin import getPlugins
from twisted.python.reflect import namedAny

from o2obroker.policy.pipeline import IMessageFilter


class FilterNotFound(ValueError):
    """A configured message filter does not exist or is not an IMessageFilter."""


def find_filter(spec: str, package: ModuleType | None = None) -> Any:
    """The filter ``spec`` names: a dotted path (``pkg.module.thing``) to an
    IMessageFilter provider, or to a class or factory called without arguments
    to make one; else the ``name`` of a plugin in ``package`` (default:
    ``o2obroker.plugins``)."""
    if "." in spec:
        try:
            found = namedAny(spec)
        except Exception as e:
            raise FilterNotFound(f"message filter {spec}: cannot import it ({e})") from None
        if not IMessageFilter.providedBy(found) and callable(found):
            try:
                found = found()
            except Exception as e:
                raise FilterNotFound(f"message filter {spec}: cannot make one ({e})") from None
        if not IMessageFilter.providedBy(found):
            raise FilterNotFound(f"message filter {spec}: does not provide IMessageFilter")
        return found
    if package is None:
        import o2obroker.plugins as package
    for plugin in getPlugins(IMessageFilter, package):
        if getattr(plugin, "name", None) == spec:
            return plugin
    raise FilterNotFound(f"message filter {spec}: no plugin of that name in {package.__name__}")
