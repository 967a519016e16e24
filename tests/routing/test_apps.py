"""The app registry's two sources merged, and the shared copy kept fresh on a clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.backend.interface import BackendUnavailable
from o2obroker.routing.apps import AppRegistry, SharedApps, app_settings, valid_name


class MergeTests(SynchronousTestCase):
    def test_shared_apps_join_the_configured_ones_and_win_on_the_same_id(self) -> None:
        apps = AppRegistry({"shop": "c1", "pos": "c2"}, shared=True)
        apps.replace_shared({"pos": {"cluster": "eu"}, "kiosk": {"cluster": "c3", "tier": 2}})
        self.assertEqual(
            (apps.cluster_of("shop"), apps.cluster_of("pos"), apps.cluster_of("kiosk")),
            ("c1", "eu", "c3"),
        )
        self.assertEqual(
            apps.listing(),
            {
                "kiosk": {"cluster": "c3", "tier": 2, "source": "shared"},
                "pos": {"cluster": "eu", "source": "shared"},
                "shop": {"cluster": "c1", "source": "config"},
            },
        )
        # removed from the shared registry: a configured app stays, with its own cluster
        apps.replace_shared({})
        self.assertEqual((apps.cluster_of("pos"), apps.cluster_of("kiosk")), ("c2", None))
        self.assertFalse(apps.admits("kiosk"))

    def test_the_first_shared_app_turns_checking_on(self) -> None:
        apps = AppRegistry(shared=True)
        apps.replace_shared({})
        self.assertTrue(apps.admits(None))
        apps.replace_shared({"shop": {"cluster": "c1"}})
        self.assertFalse(apps.admits(None))
        self.assertTrue(apps.admits("shop"))

    def test_not_loaded_until_the_shared_registry_is_read(self) -> None:
        self.assertTrue(AppRegistry({"shop": "c"}).loaded)
        apps = AppRegistry(shared=True)
        self.assertFalse(apps.loaded)
        apps.replace_shared({})
        self.assertTrue(apps.loaded)

    def test_names_and_settings_are_checked(self) -> None:
        self.assertTrue(valid_name("store-0042@acme"))
        for bad in ("", "a b", "a/b", "x" * 129, "tab\t", 7):
            self.assertFalse(valid_name(bad), bad)
        self.assertEqual(app_settings("shop", "eu", tier=2), {"cluster": "eu", "tier": 2})
        self.assertRaises(ValueError, app_settings, "a/b", "eu")
        self.assertRaises(ValueError, app_settings, "shop", "e u")
        self.assertRaises(ValueError, app_settings, "shop", "eu", when=object())


class WhenLoadedTests(SynchronousTestCase):
    def test_a_wait_that_timed_out_is_forgotten(self) -> None:
        apps, clock = AppRegistry(shared=True), Clock()
        gave_up = [apps.when_loaded().addTimeout(5, clock) for _ in range(100)]
        for d in gave_up:
            d.addErrback(lambda f: None)
        waiting = apps.when_loaded()
        clock.advance(5)
        # the hellos that gave up hold nothing: only the one still waiting is kept
        self.assertEqual(apps._waiting, [waiting])
        apps.replace_shared({})
        self.assertIsNone(self.successResultOf(waiting))


class FakeStore:
    """A shared registry with a version, answering ``read`` as the Redis script does."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.reads: list[str | None] = []
        self.pending: list[Deferred[Any]] = []
        self.hold = False
        self.down = False

    def edit(self, **records: dict[str, Any]) -> None:
        self.records = dict(records)
        self.version += 1

    def read(self, version: str | None) -> Deferred[Any]:
        self.reads.append(version)
        if self.down:
            return fail(BackendUnavailable("redis: not connected"))
        answer = (str(self.version), None if version == str(self.version) else dict(self.records))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            d.addCallback(lambda _: answer)
            return d
        return succeed(answer)


class SharedAppsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeStore()
        self.apps = AppRegistry(shared=True)
        self.shared = SharedApps(self.apps, self.store.read, self.clock, interval=2.0)
        self.shared.start()
        self.addCleanup(self.shared.stop)

    def test_an_edit_is_seen_within_one_interval_and_reads_are_cheap_meanwhile(self) -> None:
        self.assertTrue(self.apps.loaded)
        self.store.edit(shop={"cluster": "c1"})
        self.clock.advance(1.9)
        self.assertNotIn("shop", self.apps)
        self.clock.advance(0.1)
        self.assertIn("shop", self.apps)
        self.clock.advance(2.0)
        # the second read named the version it held: the store answered with no records
        self.assertEqual(self.store.reads, [None, "0", "1"])
        self.store.edit()
        self.clock.advance(2.0)
        self.assertNotIn("shop", self.apps)

    def test_an_unreadable_store_keeps_the_last_copy(self) -> None:
        self.store.edit(shop={"cluster": "c1"})
        self.clock.advance(2.0)
        self.store.down = True
        self.clock.advance(10.0)
        self.assertIn("shop", self.apps)
        self.store.down = False
        self.store.edit()
        self.clock.advance(2.0)
        self.assertNotIn("shop", self.apps)

    def test_a_refresh_during_a_read_looks_again_after_it(self) -> None:
        self.store.hold = True
        self.clock.advance(2.0)  # a read under way, begun before the edit
        self.store.edit(shop={"cluster": "c1"})
        done = self.shared.refresh()
        self.clock.advance(2.0)  # no second read while one is under way
        self.assertEqual(len(self.store.pending), 1)
        self.store.pending.pop(0).callback(None)
        self.assertNoResult(done)
        self.store.pending.pop(0).callback(None)
        self.successResultOf(done)
        self.assertIn("shop", self.apps)
