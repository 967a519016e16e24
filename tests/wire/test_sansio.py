"""wire/ stays sans-IO: no Twisted, no sockets, no clock, no other broker layer."""

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import o2obroker.wire

FORBIDDEN = {
    "twisted",
    "autobahn",
    "txredisapi",
    "socket",
    "select",
    "selectors",
    "asyncio",
    "time",
    "o2obroker.service",
    "o2obroker.transports",
    "o2obroker.session",
    "o2obroker.actors",
    "o2obroker.routing",
    "o2obroker.backend",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


class SansIOTests(SynchronousTestCase):
    def test_no_forbidden_import(self) -> None:
        sources = sorted(Path(o2obroker.wire.__file__).parent.glob("*.py"))
        self.assertGreater(len(sources), 5)
        for path in sources:
            for name in _imports(path):
                for forbidden in FORBIDDEN:
                    self.assertFalse(
                        name == forbidden or name.startswith(forbidden + "."),
                        f"{path.name} imports {name}",
                    )

    def test_public_names_are_exported(self) -> None:
        for name in o2obroker.wire.__all__:
            self.assertTrue(hasattr(o2obroker.wire, name), name)
