"""The supervisor's config keys: each bad value stops the start with a message naming it."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from o2obroker.config import Config, ConfigError, load, local_endpoint


class SupervisorConfigTests(unittest.TestCase):
    def refused(self, key: str, **values: Any) -> None:
        error = self.assertRaises(ConfigError, Config(**values).check)
        self.assertIn(key, str(error))

    def test_defaults_are_valid(self) -> None:
        Config().check()

    def test_bad_values_are_named(self) -> None:
        self.refused("sample_interval", sample_interval=0)
        self.refused("drain_rate", drain_rate=-1)
        self.refused("hook_timeout", hook_timeout=0)
        self.refused("alert_connections", alert_connections=-5)
        self.refused("alert_memory", alert_memory=101)
        self.refused("hard_memory", hard_memory=-1)
        self.refused("alert_clear", alert_clear=0)
        self.refused("alert_clear", alert_clear=1.5)
        self.refused("advice_", advice_async_above=40, advice_duplex_below=60)
        self.refused("advice_", advice_async_above=101)
        self.refused("hard_connections", alert_connections=100, hard_connections=99)
        self.refused("scale_out_url", scale_out_command="x", scale_out_url="http://h/")
        self.refused("scale_in_url", scale_in_url="ftp://h/")

    def test_edges_are_allowed(self) -> None:
        Config(alert_clear=1, alert_memory=100, hard_connections=100, alert_connections=100).check()
        Config(advice_async_above=-100, advice_duplex_below=-100).check()

    def test_ini_values_are_typed(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("[broker]\nalert_connections = many\n")
        error = self.assertRaises(ConfigError, load, path)
        self.assertIn("alert_connections", str(error))
        with open(path, "w", encoding="utf-8") as f:
            f.write("[broker]\nalert_cpu = 75\nscale_out_command = /bin/scale --up 'a b'\n")
        config = load(path)
        self.assertEqual(config.alert_cpu, 75.0)
        self.assertEqual(config.scale_out_command, "/bin/scale --up 'a b'")


class LocalEndpointTests(unittest.TestCase):
    def test_loopback_only(self) -> None:
        for ok in (
            "tcp:2222:interface=127.0.0.1",
            "tcp:port=2222:interface=127.0.0.5",
            r"tcp6:2222:interface=\:\:1",
            "tcp:2222:interface=localhost",
            "unix:/tmp/console.sock",
        ):
            self.assertTrue(local_endpoint(ok), ok)
        for bad in (
            "tcp:2222",
            "tcp:2222:interface=0.0.0.0",
            r"tcp6:2222:interface=\:\:",
            "tcp:2222:interface=192.168.1.4",
            "ssl:2222:interface=127.0.0.1",
            "tcp:2222:interface=example.com",
        ):
            self.assertFalse(local_endpoint(bad), bad)
