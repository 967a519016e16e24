"""The presence benchmark still plays against the node as it is now.

``bench/presence_load.py`` drives a real node through fake connections; when
the connection interface moves on, a stale fake fails in the middle of a run
(or, worse, logs actor failures and goes on). A short scenario here keeps
the fake and the node in step and checks the benchmark's own invariants.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from o2obroker.session.gateway import IConnection

BENCH = Path(__file__).resolve().parents[2] / "bench" / "presence_load.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("presence_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class PresenceBenchTests(SynchronousTestCase):
    def test_a_short_scenario_plays_in_both_modes_to_the_same_end(self) -> None:
        bench = _bench()
        churn = dict(bench.CHURN, online_for=300.0, offline_for=120.0, drop_every=60.0)
        events, watch, link = bench.scenario(40, 8, 900, 1, churn)
        kinds = {e.action for e in events}
        self.assertTrue({"connect", "bye", "drop", "report", "message"} <= kinds)
        results = {}
        for naive in (True, False):
            sim = bench.Sim(naive, watch, link)
            sim.run(events, 900)
            bench.check(sim, "naive" if naive else "optimised")  # raises on a wrong view
            for device in sim.devices.values():
                self.assertTrue(verifyObject(IConnection, device))
            results[naive] = sim
        naive, best = results[True], results[False]
        self.assertEqual(naive.records(), best.records())
        self.assertEqual(naive.views(), best.views())
        self.assertGreater(naive.wire.frames["bye"], 0)
        self.assertLess(best.wire.presence()[1], naive.wire.presence()[1])
        # any actor failure logged during the runs fails this test (trial's logged errors)
