"""Drop-in message filters (``IMessageFilter`` plugins), found with ``twisted.plugin``.

A module in any ``o2obroker/plugins/`` directory on ``sys.path`` that defines
objects providing ``o2obroker.policy.IMessageFilter`` offers them by their
``name``; ``message_filters`` in the config picks which run (doc/business.md).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
