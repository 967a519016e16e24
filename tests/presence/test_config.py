"""The presence keys of the configuration: each bad value is refused by name."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load


class PresenceConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = load()
        self.assertEqual(
            (config.watch_cap, config.presence_grace, config.presence_window, config.presence_skew),
            (1000, 20.0, 0.5, 5.0),
        )
        self.assertFalse(config.presence_naive)

    def test_ini_keys(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[broker]\nwatch_cap = 50\npresence_grace = 0\npresence_window = 2\n"
                "presence_skew = 0\npresence_naive = yes\ntransfer_rate = 8192\n"
            )
        config = load(path)
        self.assertEqual(config.watch_cap, 50)
        self.assertEqual(config.presence_grace, 0.0)  # 0: no grace period
        self.assertEqual(config.presence_window, 2.0)
        self.assertEqual(config.presence_skew, 0.0)
        self.assertTrue(config.presence_naive)
        self.assertEqual(config.transfer_rate, 8192)

    def test_each_limit_is_crossed(self) -> None:
        for key, bad, good in [
            ("watch_cap", "0", "1"),
            ("presence_grace", "-1", "0"),
            ("presence_window", "0", "0.01"),
            ("presence_window", "61", "60"),
            ("presence_skew", "-1", "0"),
            ("presence_skew", "3601", "3600"),
            ("transfer_rate", "0", "1"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                load(overrides={key: bad})
            self.assertIn(key, str(caught.exception))
            load(overrides={key: good})

    def test_wrong_type(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load(overrides={"watch_cap": "many"})
        self.assertIn("watch_cap", str(caught.exception))
