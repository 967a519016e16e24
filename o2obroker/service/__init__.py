"""Assembly: build a node's object graph and its twistd service tree from a Config."""

from o2obroker.service.node import Node
from o2obroker.service.tap import Options, makeService

__all__ = ["Node", "Options", "makeService"]
