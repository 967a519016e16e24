"""The app registry and the cluster in the configuration file."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.service.node import Node


class AppConfigTests(SynchronousTestCase):
    def ini(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_no_registry_by_default(self) -> None:
        config = load()
        self.assertEqual((config.cluster, config.apps), ("default", {}))
        self.assertFalse(Node(config, Clock()).gateway.apps)

    def test_apps_map_to_their_cluster_or_the_nodes(self) -> None:
        path = self.ini("[broker]\ncluster = eu\n[app:shop]\ncluster = c2\n[app:pos-7]\n")
        config = load(path)
        self.assertEqual(config.app_clusters(), {"shop": "c2", "pos-7": "eu"})
        apps = Node(config, Clock()).gateway.apps
        self.assertEqual((apps.cluster_of("shop"), apps.cluster_of("pos-7")), ("c2", "eu"))
        self.assertNotIn("other", apps)

    def test_bad_values_are_one_clear_line(self) -> None:
        for text, message in (
            ("[app:shop]\nzone = 1\n", "[app:shop] zone: unknown key"),
            (
                "[app:shop]\ncluster = a b\n",
                "[app:shop] cluster: 'a b' is not a valid cluster name",
            ),
            ("[app:a/b]\n", "[app:a/b]: not a valid business id"),
            ("[broker]\ncluster = \n", "cluster: '' is not a valid cluster name"),
            ("[broker]\napps = shop\n", "[broker] apps: unknown key"),
            ("[broker]\napp_refresh = 0\n", "app_refresh: must be 0.1 to 3600 seconds, not 0.0"),
        ):
            with self.assertRaises(ConfigError) as e:
                load(self.ini(text))
            self.assertEqual(str(e.exception), message)
