"""The business sections of the configuration, the start-up checks, plugins and SIGHUP."""

from __future__ import annotations

import os
import signal

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from o2obroker.config import ConfigError, load
from o2obroker.policy import REJECTED, Candidate
from o2obroker.policy.build import build_business, check_business
from o2obroker.policy.plugins import FilterNotFound, find_filter
from o2obroker.service import tap
from o2obroker.service.node import Node
from o2obroker.service.tap import NodeService, Options
from tests.policy import dropins


class BusinessConfigTests(SynchronousTestCase):
    def ini(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def words(self, text: str = "spam\n") -> str:
        return self.ini(text)

    def test_off_by_default(self) -> None:
        config = load()
        self.assertTrue(config.policy.empty)
        self.assertFalse(config.archive.enabled)
        business = build_business(config, Clock())
        self.assertFalse(business.active)

    def test_sections(self) -> None:
        path = self.ini(
            "[policy]\nfilters = soft, hard\nmessage_filters = a.b.c\npublish_hook = app\n"
            "offline_hook = app\n"
            f"[filter:soft]\nfiles = {self.words()}, {self.words('x')}\n"
            f"[filter:hard]\nfiles = {self.words()}\naction = reject\n"
            "[hook:app]\nurl = http://127.0.0.1:9000/o2o\ntimeout = 1.5\non_failure = refuse\n"
            "queue = 50\n"
            "[archive]\nenabled = yes\nmax_messages = 20\nmax_age = 60\n"
        )
        config = load(path)
        self.assertEqual(config.policy.filters, ["soft", "hard"])
        self.assertEqual(config.policy.message_filters, ["a.b.c"])
        self.assertEqual(len(config.filters["soft"].files), 2)
        self.assertEqual(config.filters["hard"].action, "reject")
        hook = config.hooks["app"]
        self.assertEqual((hook.timeout, hook.on_failure, hook.queue), (1.5, "refuse", 50))
        self.assertEqual((config.archive.enabled, config.archive.max_messages), (True, 20))

    def test_each_mistake_is_named(self) -> None:
        words = self.words()
        for text, expected in [
            ("[policy]\nfilters = nope\n", "[policy] filters: no section [filter:nope]"),
            ("[policy]\npublish_hook = nope\n", "[policy] publish_hook: no section [hook:nope]"),
            ("[policy]\nbogus = 1\n", "[policy] bogus: unknown key"),
            (f"[filter:f]\nfiles = {words}\naction = drop\n", "action: must be mask or reject"),
            ("[filter:f]\naction = mask\n", "[filter:f] files: name at least one"),
            ("[hook:h]\nurl = ftp://x\n", "[hook:h] url: must be an http"),
            ("[hook:h]\nurl = http://x\non_failure = maybe\n", "on_failure: must be allow"),
            ("[hook:h]\nurl = http://x\ntimeout = 0\n", "[hook:h] timeout: must be positive"),
            ("[hook:h]\nurl = http://x\nconcurrency = 0\n", "concurrency: must be at least 1"),
            ("[hook:h]\nurl = http://x\nqueue = lots\n", "'lots' is not an integer"),
            ("[archive]\nmax_messages = 0\n", "[archive] max_messages and max_age"),
            ("[archive]\nenabled = ture\n", "[archive] enabled: 'ture' is not yes or no"),
            ("[policy:shop]\nfilters =\n", "per-app policies need an app registry"),
            ("[hook]\nurl = http://x\n", "unknown section [hook]"),
        ]:
            with self.assertRaises(ConfigError, msg=text) as e:
                load(self.ini(text))
            self.assertIn(expected, str(e.exception))

    def test_unreadable_word_list_stops_the_start_with_one_line(self) -> None:
        path = self.ini("[policy]\nfilters = f\n[filter:f]\nfiles = /nonexistent/words.txt\n")
        options = Options()
        with self.assertRaises(usage.UsageError) as e:
            options.parseOptions(["--config", path])
        self.assertEqual(
            str(e.exception),
            "[policy] cannot read word list /nonexistent/words.txt: No such file or directory",
        )

    def test_unknown_message_filter_stops_the_start(self) -> None:
        config = load(self.ini("[policy]\nmessage_filters = no.such.module.Rule\n"))
        with self.assertRaises(ConfigError) as e:
            check_business(config)
        self.assertIn("message filter no.such.module.Rule: cannot import it", str(e.exception))


class PluginTests(SynchronousTestCase):
    def test_found_by_name_in_a_plugin_package(self) -> None:
        rule = find_filter("no-links", dropins)
        batch = [
            Candidate("1", "a", "p", "b", None, "see http://x"),
            Candidate("2", "a", "p", "b", None, "ok"),
        ]
        self.assertEqual(rule.check(batch), [REJECTED, "ok"])
        with self.assertRaises(FilterNotFound):
            find_filter("nope", dropins)

    def test_found_by_dotted_path(self) -> None:
        self.assertEqual(find_filter("tests.policy.dropins.no_links.no_links").name, "no-links")
        # a class is made with no arguments
        self.assertEqual(find_filter("tests.policy.dropins.no_links.NoLinks").name, "no-links")
        with self.assertRaises(FilterNotFound):
            find_filter("tests.policy.dropins.no_links.IMessageFilter")

    def test_a_plugin_runs_in_the_node_pipeline(self) -> None:
        from o2obroker.config import PolicySettings
        from tests.harness import Harness

        h = Harness(
            policies={
                "": PolicySettings(message_filters=["tests.policy.dropins.no_links.no_links"])
            }
        )
        alice = h.login("alice")
        alice.read()
        alice.write({"t": "send", "id": "1", "to": "bob", "body": "http://spam"})
        self.assertEqual(alice.read()[0]["code"], 403)


class HangupTests(SynchronousTestCase):
    def test_sighup_reloads_the_filters_on_the_reactor_thread(self) -> None:
        calls: list[object] = []

        class Reactor:
            def callFromThread(self, f: object, *a: object) -> None:
                calls.append(f)

        words = self.mktemp()
        with open(words, "w") as f:
            f.write("spam\n")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"[policy]\nfilters = f\n[filter:f]\nfiles = {words}\n")
        node = Node(load(path), Clock())
        self.patch(tap, "tune_gc", lambda: None)  # not this test process's collector
        service = NodeService(node, Reactor())
        service.startService()
        self.addCleanup(service.stopService)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(calls, [service.reload])
        with open(words, "w") as f:
            f.write("ham\neggs\n")
        self.assertEqual(
            self.successResultOf(service.reload()), "keyword filter reloaded: 2 keywords"
        )
        service.stopService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), service.hangup)
