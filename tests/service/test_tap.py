"""twistd o2obroker: options, config file and the service tree, inspected without starting it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from o2obroker.service.tap import Options, makeService

ROOT = Path(__file__).resolve().parents[2]


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        config = self.parse()["settings"]
        self.assertEqual(config.tcp, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(config.http, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.auth_mode, "none")
        self.assertEqual(config.limits.max_frame, 1 << 20)

    def test_secret_means_token(self) -> None:
        self.assertEqual(self.parse("--secret", "s3cret")["settings"].auth_mode, "token")

    def test_token_without_secret_is_refused(self) -> None:
        with self.assertRaises(UsageError) as e:
            self.parse("--auth", "token")
        self.assertIn("secret", str(e.exception))

    def test_bad_number(self) -> None:
        with self.assertRaises(UsageError) as e:
            self.parse("--max-frame", "lots")
        self.assertIn("max_frame", str(e.exception))

    def test_config_file_and_override(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[broker]\nnode = n7\nhb = 12\n[limits]\nmax_body = 1000\n")
        config = self.parse("--config", path, "--hb", "5")["settings"]
        self.assertEqual((config.node, config.hb, config.limits.max_body), ("n7", 5, 1000))

    def test_unknown_key_is_named(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[broker]\nnodes = n7\n")
        with self.assertRaises(UsageError) as e:
            self.parse("--config", path)
        self.assertIn("nodes", str(e.exception))

    def test_example_config_loads(self) -> None:
        config = self.parse("--config", str(ROOT / "etc" / "o2obroker.ini"))["settings"]
        self.assertEqual(config.node, "n1")


class ServiceTreeTests(SynchronousTestCase):
    def test_tree(self) -> None:
        options = Options()
        options.parseOptions(
            ["--tcp", "tcp:0:interface=127.0.0.1", "--node", "x1", "--cluster", "eu"]
        )
        top = makeService(options, reactor=MemoryReactorClock())
        self.assertTrue(IServiceCollection.providedBy(top))
        tcp = top.getServiceNamed("tcp")
        self.assertEqual(tcp.endpoint._port, 0)
        self.assertEqual(top.node.config.node, "x1")
        self.assertEqual(top.node.config.cluster, "eu")

    def test_plugin_is_found(self) -> None:
        import twisted.plugins

        names = [p.tapname for p in getPlugins(IPlugin, twisted.plugins) if hasattr(p, "tapname")]
        self.assertIn("o2obroker", names)


class InstalledTests(TestCase):
    """A plain (not editable) install finds the plugin from any directory."""

    timeout = 300

    def test_plugin_ships_with_the_package(self) -> None:
        target = Path(self.mktemp()).absolute()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(ROOT),
            ],
            check=True,
            capture_output=True,
        )
        self.assertTrue((target / "twisted" / "plugins" / "o2obroker_plugin.py").exists())
        self.assertFalse((target / "twisted" / "plugins" / "__init__.py").exists())
        env = dict(os.environ, PYTHONPATH=str(target))
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, twisted.plugins, o2obroker;"
                "from twisted.plugin import getPlugins, IPlugin;"
                "print(o2obroker.__file__);"
                "print([p.tapname for p in getPlugins(IPlugin, twisted.plugins)"
                " if hasattr(p, 'tapname')])",
            ],
            cwd="/",
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.assertIn(str(target), out.splitlines()[0])
        self.assertIn("'o2obroker'", out)
