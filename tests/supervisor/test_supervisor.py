"""The supervisor's logic on a task.Clock: thresholds, hysteresis, cooldown, advice, drain."""

from __future__ import annotations

import itertools
import os

from twisted.internet.defer import CancelledError
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from o2obroker.actors.supervisor import (
    ALERTING,
    BETWEEN,
    COOLDOWN,
    NORMAL,
    OVER,
    TRANSITIONS,
    UNDER,
    ISampler,
    PsutilSampler,
    SupervisorSettings,
    occupancy,
    sampling,
)
from o2obroker.config import Config
from tests.supervisor.helpers import Rig


class OccupancyTests(unittest.TestCase):
    def test_formula(self) -> None:
        self.assertEqual(occupancy(0, 0), 0.0)
        self.assertEqual(occupancy(10, 0), 100.0)
        self.assertEqual(occupancy(0, 10), -100.0)
        self.assertEqual(occupancy(75, 25), 50.0)

    def test_sample_counts_duplex_and_async(self) -> None:
        rig = Rig()
        rig.set_connections(tcp=30, ws=45, lp=25)
        rig.sample()
        last = rig.supervisor.last
        self.assertEqual((last.duplex, last.async_, last.total), (75, 25, 100))
        self.assertEqual(last.occupancy, 50.0)
        self.assertEqual(last.as_dict()["async"], 25)


class TransitionTableTests(unittest.TestCase):
    def test_every_state_input_pair_is_declared(self) -> None:
        states, levels = (NORMAL, ALERTING, COOLDOWN), (OVER, BETWEEN, UNDER)
        for key in itertools.product(states, levels, (True, False)):
            self.assertIn(key, TRANSITIONS)
            self.assertIn(TRANSITIONS[key][0], states)
        self.assertEqual(len(TRANSITIONS), 18)


class ThresholdTests(unittest.TestCase):
    def test_connections_threshold_fires_scale_out_with_metrics(self) -> None:
        rig = Rig(alert_connections=100, alert_cooldown=60)
        rig.set_connections(tcp=99)
        rig.sample()
        self.assertEqual(rig.supervisor.state, NORMAL)
        self.assertEqual(rig.scale_out.payloads, [])
        rig.set_connections(tcp=100)  # reaching the threshold is enough
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.state, ALERTING)
        [payload] = rig.scale_out.payloads
        self.assertEqual(payload["event"], "scale_out")
        self.assertEqual(payload["node"], "n1")
        self.assertEqual(payload["reasons"], {"connections": [100, 100]})
        self.assertEqual(payload["metrics"]["connections"], {"tcp": 100, "ws": 0, "lp": 0})
        [alert] = rig.supervisor.alerts()
        self.assertEqual(alert["event"], "alert")
        self.assertEqual(alert["hook"], "fired")
        self.assertEqual(rig.supervisor.counts["alerts"], 1)
        self.assertEqual(rig.supervisor.counts["scale_out_runs"], 1)

    def test_cpu_and_memory_thresholds(self) -> None:
        rig = Rig(alert_cpu=80, alert_memory=90)
        rig.sample(cpu=79.9, memory=89.9)
        self.assertEqual(rig.scale_out.payloads, [])
        rig.sample(cpu=85, memory=95, advance=5)
        [payload] = rig.scale_out.payloads
        self.assertEqual(payload["reasons"], {"cpu": [85, 80], "memory": [95, 90]})

    def test_threshold_zero_is_off(self) -> None:
        rig = Rig(alert_connections=0, alert_cpu=0, alert_memory=0)
        rig.set_connections(tcp=10**6)
        rig.sample(cpu=400, memory=100)
        self.assertEqual(rig.supervisor.state, NORMAL)
        self.assertEqual(rig.scale_out.payloads, [])

    def test_hovering_at_the_threshold_fires_once(self) -> None:
        rig = Rig(alert_connections=100, alert_clear=0.8, alert_cooldown=0)
        for n in [100, 99, 101, 95, 100, 81, 120, 80, 100] * 5:
            rig.set_connections(tcp=n)
            rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 1)
        self.assertEqual(rig.supervisor.state, ALERTING)
        self.assertEqual(len(rig.supervisor.alerts()), 1)

    def test_recovery_needs_the_clear_mark(self) -> None:
        rig = Rig(alert_connections=100, alert_clear=0.8, alert_cooldown=0)
        rig.set_connections(tcp=100)
        rig.sample()
        rig.set_connections(tcp=80)  # not under 80: still alerting
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.state, ALERTING)
        rig.set_connections(tcp=79)
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.state, NORMAL)
        self.assertEqual([a["event"] for a in rig.supervisor.alerts()], ["alert", "recovered"])
        rig.set_connections(tcp=100)  # a new episode fires again (cooldown 0)
        rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 2)

    def test_recent_alerts_are_bounded(self) -> None:
        rig = Rig(alert_connections=10, alert_cooldown=0, recent_alerts=5)
        for _ in range(10):
            rig.set_connections(tcp=10)
            rig.sample(advance=5)
            rig.set_connections(tcp=0)
            rig.sample(advance=5)
        self.assertEqual(len(rig.supervisor.alerts()), 5)
        self.assertEqual(rig.supervisor.counts["alerts"], 10)


class CooldownTests(unittest.TestCase):
    def test_new_alert_within_cooldown_is_held_then_released(self) -> None:
        rig = Rig(alert_connections=100, alert_cooldown=60)
        rig.set_connections(tcp=100)
        rig.sample()  # t=0: fires
        rig.set_connections(tcp=0)
        rig.sample(advance=5)  # recovered, within cooldown
        self.assertEqual(rig.supervisor.state, COOLDOWN)
        rig.set_connections(tcp=150)
        rig.sample(advance=5)  # t=10: alert, hook held
        self.assertEqual(rig.supervisor.state, ALERTING)
        self.assertEqual(len(rig.scale_out.payloads), 1)
        self.assertEqual(rig.supervisor.alerts()[-1]["hook"], "held (cooldown)")
        for _ in range(9):  # t=55: still cooling down
            rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 1)
        rig.sample(advance=5)  # t=60: cooldown over, still over: the held hook fires
        self.assertEqual(len(rig.scale_out.payloads), 2)
        for _ in range(30):  # and stays quiet while the load stays up
            rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 2)

    def test_held_alert_that_recovers_never_fires(self) -> None:
        rig = Rig(alert_connections=100, alert_cooldown=60)
        rig.set_connections(tcp=100)
        rig.sample()
        rig.set_connections(tcp=0)
        rig.sample(advance=5)
        rig.set_connections(tcp=100)
        rig.sample(advance=5)
        rig.set_connections(tcp=0)
        rig.sample(advance=5)
        rig.sample(advance=100)
        self.assertEqual(rig.supervisor.state, NORMAL)
        self.assertEqual(len(rig.scale_out.payloads), 1)

    def test_cooldown_ends_in_normal(self) -> None:
        rig = Rig(alert_connections=100, alert_cooldown=60)
        rig.set_connections(tcp=100)
        rig.sample()
        rig.set_connections(tcp=0)
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.state, COOLDOWN)
        rig.sample(advance=55)
        self.assertEqual(rig.supervisor.state, NORMAL)
        rig.set_connections(tcp=100)
        rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 2)

    def test_a_running_hook_is_not_started_twice(self) -> None:
        rig = Rig(alert_connections=10, alert_cooldown=0)
        rig.scale_out.wait = True
        for _ in range(3):
            rig.set_connections(tcp=10)
            rig.sample(advance=5)
            rig.set_connections(tcp=0)
            rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 1)
        rig.scale_out.running[0].callback(None)
        rig.set_connections(tcp=10)
        rig.sample(advance=5)
        self.assertEqual(len(rig.scale_out.payloads), 2)

    def test_failed_hook_is_recorded_and_counted(self) -> None:
        rig = Rig(alert_connections=10)
        rig.scale_out.wait = True
        rig.set_connections(tcp=10)
        rig.sample()
        rig.scale_out.running[0].errback(RuntimeError("exit status 3"))
        self.assertEqual(rig.supervisor.counts["scale_out_failures"], 1)
        failure = rig.supervisor.alerts()[-1]
        self.assertEqual(failure["event"], "hook_failed")
        self.assertIn("exit status 3", failure["error"])


class ScaleInTests(unittest.TestCase):
    def test_quiet_for_long_enough_fires_once(self) -> None:
        rig = Rig(scale_in_connections=10, scale_in_cpu=20, scale_in_after=60)
        rig.set_connections(tcp=5)
        for _ in range(12):  # 0..55 s quiet
            rig.sample(cpu=5, advance=5)
        self.assertEqual(rig.scale_in.payloads, [])
        rig.sample(cpu=5, advance=5)  # 60 s quiet
        self.assertEqual(len(rig.scale_in.payloads), 1)
        for _ in range(50):
            rig.sample(cpu=5, advance=5)
        self.assertEqual(len(rig.scale_in.payloads), 1)
        self.assertEqual(rig.scale_in.payloads[0]["event"], "scale_in")

    def test_a_busy_sample_restarts_the_quiet_time(self) -> None:
        rig = Rig(scale_in_connections=10, scale_in_after=60)
        rig.set_connections(tcp=5)
        for i in range(30):
            rig.sample(cpu=50 if i % 10 == 9 else 5, advance=5)
        self.assertEqual(rig.scale_in.payloads, [])


class AdviceTests(unittest.TestCase):
    def test_small_node_always_advises_websocket(self) -> None:
        rig = Rig(advice_min_connections=1000)
        rig.set_connections(ws=999)
        rig.sample()
        self.assertEqual(rig.supervisor.advice()["transport"], "ws")

    def test_p_thresholds_with_hysteresis(self) -> None:
        rig = Rig(advice_min_connections=100, advice_async_above=80, advice_duplex_below=50)
        rig.set_connections(tcp=500, ws=400, lp=100)  # P = 80
        rig.sample()
        advice = rig.supervisor.advice()
        self.assertEqual(advice["transport"], "lp")
        self.assertEqual((advice["occupancy"], advice["duplex"], advice["async"]), (80, 900, 100))
        rig.set_connections(ws=780, lp=220)  # P = 56: between the marks, keep long-poll
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.advice()["transport"], "lp")
        rig.set_connections(ws=750, lp=250)  # P = 50: back to WebSocket
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.advice()["transport"], "ws")
        rig.set_connections(ws=850, lp=150)  # P = 70: between, keep WebSocket
        rig.sample(advance=5)
        self.assertEqual(rig.supervisor.advice()["transport"], "ws")
        self.assertEqual(rig.supervisor.gauges()["advice_longpoll"], 0)


class RefusalTests(unittest.TestCase):
    def test_hard_connection_limit(self) -> None:
        rig = Rig(hard_connections=100)
        rig.set_connections(tcp=100)  # the hello's own connection is counted
        self.assertIsNone(rig.gate.admission())
        rig.set_connections(tcp=101)
        error = rig.gate.admission()
        self.assertEqual(error.code, 503)
        self.assertTrue(error.fatal)
        self.assertEqual(error.frame(), {"t": "error", "code": 503, "reason": "node overloaded"})

    def test_redirect_names_the_least_loaded_other_node(self) -> None:
        rig = Rig(hard_connections=10)
        rig.peers = [
            {"node": "n1", "ws": "ws://n1/ws", "load": 0},  # ourselves
            {"node": "n2", "ws": "ws://n2/ws", "tcp": "n2:9100", "lp": "http://n2/lp", "load": 50},
            {"node": "n3", "ws": "ws://n3/ws", "tcp": "n3:9100", "load": 10},
            {"node": "n4", "ws": "ws://n4/ws", "load": 1, "draining": True},
        ]
        rig.sample()
        rig.set_connections(tcp=11)
        frame = rig.gate.admission().frame()
        self.assertEqual(frame["redirect"], {"ws": "ws://n3/ws", "tcp": "n3:9100"})

    def test_hard_memory_limit(self) -> None:
        rig = Rig(hard_memory=95)
        rig.sample(memory=94)
        self.assertIsNone(rig.gate.admission())
        rig.sample(memory=95, advance=5)
        self.assertEqual(rig.gate.admission().code, 503)
        rig.sample(memory=60, advance=5)
        self.assertIsNone(rig.gate.admission())

    def test_gateway_not_accepting_is_refused(self) -> None:
        rig = Rig()
        rig.gate.accepting = False
        self.assertEqual(rig.gate.refusal().reason, "node is draining")


class SamplingTests(unittest.TestCase):
    def test_psutil_sampler_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISampler, PsutilSampler()))

    def test_timer_uses_the_injected_clock(self) -> None:
        rig = Rig(interval=5)
        rig.supervisor.start()
        rig.clock.advance(4.9)
        self.assertEqual(rig.sampler.calls, 0)
        rig.clock.advance(0.1)
        self.assertEqual(rig.sampler.calls, 1)
        rig.clock.pump([5] * 10)
        self.assertEqual(rig.sampler.calls, 11)
        rig.supervisor.stop()
        rig.clock.pump([5] * 10)
        self.assertEqual(rig.sampler.calls, 11)

    def test_a_slow_sample_is_not_overlapped(self) -> None:
        rig = Rig(interval=5)
        rig.sampler.hold = True
        rig.supervisor.start()
        rig.clock.advance(30)
        self.assertEqual(rig.sampler.calls, 1)
        rig.sampler.pending.callback(rig.sampler.resources)
        rig.clock.advance(0)
        self.assertIsNotNone(rig.supervisor.last)
        rig.clock.advance(5)
        self.assertEqual(rig.sampler.calls, 2)

    def test_a_failed_sample_is_logged_and_sampling_goes_on(self) -> None:
        rig = Rig(interval=5)
        rig.sampler.hold = True
        rig.supervisor.start()
        rig.clock.advance(5)
        rig.sampler.pending.errback(OSError("no /proc"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        rig.clock.advance(5)
        self.assertEqual(rig.sampler.calls, 2)

    def test_a_sampler_that_raises_does_not_stop_sampling(self) -> None:
        rig = Rig(interval=5)

        def raising() -> None:
            rig.sampler.calls += 1
            raise OSError("no /proc")

        rig.sampler.sample = raising
        rig.supervisor.start()
        rig.clock.advance(5)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        rig.clock.advance(5)
        self.assertEqual(rig.sampler.calls, 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        rig.supervisor.stop()

    def test_a_sampler_made_before_a_fork_measures_the_process_it_runs_in(self) -> None:
        # twistd makes the node, then daemonizes: the pid the sampler was made
        # with is the parent's (alive here, gone from a daemon by the first sample)
        patch = self.patch(sampling.os, "getpid", os.getppid)
        sampler = PsutilSampler()
        patch.restore()
        resources = self.successResultOf(sampler.sample())
        self.assertGreater(resources.rss, 0)
        self.assertEqual(sampler._process.pid, os.getpid())


class DrainTests(unittest.TestCase):
    def test_drain_is_bounded_in_rate_and_fires_when_empty(self) -> None:
        rig = Rig(drain_rate=200)  # 20 per 0.1 s tick
        rig.peers = [{"node": "n2", "ws": "ws://n2/ws", "tcp": "n2:9100", "load": 1}]
        rig.sample()
        sessions = rig.open("tcp", 700) + rig.open("lp", 300)
        done = []
        d = rig.supervisor.drain()
        d.addCallback(done.append)
        self.assertTrue(rig.supervisor.draining)
        self.assertFalse(rig.gate.accepting)
        self.assertEqual(sum(s.closed for s in sessions), 20)  # the first tick, at once
        refusal = rig.gate.refusal()
        self.assertEqual((refusal.code, refusal.reason), (503, "node is draining"))
        self.assertEqual(refusal.frame()["redirect"], {"ws": "ws://n2/ws", "tcp": "n2:9100"})
        for tick in range(1, 49):
            rig.clock.advance(0.1)
            self.assertEqual(sum(s.closed for s in sessions), 20 * (tick + 1))
        self.assertEqual(done, [])
        rig.clock.advance(0.1)  # the 50th tick closes the last 20
        self.assertEqual(done, [None])
        self.assertEqual(sum(rig.gate.connections.values()), 0)
        frame = sessions[0].frames[0]
        self.assertEqual(frame["code"], 503)
        self.assertEqual(frame["redirect"], {"ws": "ws://n2/ws", "tcp": "n2:9100"})
        self.assertEqual(rig.gate.drainer.sent, 1000)
        self.assertEqual(rig.clock.getDelayedCalls(), [])  # the drain timer stopped

    def test_sessions_leaving_or_arriving_during_a_drain(self) -> None:
        rig = Rig(drain_rate=100)  # 10 per slice
        sessions = rig.open("tcp", 100)
        done = []
        rig.supervisor.drain().addCallback(done.append)
        gone = [s for s in sessions if not s.closed][:30]
        for s in gone:  # these hang up on their own
            s.fail(type("Bye", (), {"fatal": True, "frame": lambda self: {"t": "bye"}})())
        late = rig.open("tcp", 5)  # connected before their hello was refused
        for _ in range(20):
            rig.clock.advance(0.1)
        self.assertEqual(done, [None])
        self.assertTrue(all(s.closed for s in sessions + late))
        self.assertEqual(rig.gate.drainer.sent, 100 - 30 + 5)
        for s in gone:
            self.assertEqual(s.frames, [{"t": "bye"}])

    def test_drain_of_an_empty_node_fires_at_once_and_again_later(self) -> None:
        rig = Rig()
        done = []
        rig.supervisor.drain().addCallback(done.append)
        self.assertEqual(done, [None])
        rig.supervisor.drain().addCallback(done.append)
        self.assertEqual(done, [None, None])

    def test_two_drains_wait_for_the_same_end(self) -> None:
        rig = Rig(drain_rate=10)
        rig.open("ws", 3)
        done = []
        rig.supervisor.drain().addCallback(lambda _: done.append(1))
        rig.supervisor.drain().addCallback(lambda _: done.append(2))
        rig.clock.advance(0.1)
        self.assertEqual(done, [])
        rig.clock.advance(0.1)
        self.assertEqual(done, [1, 2])

    def test_resume_takes_clients_again(self) -> None:
        rig = Rig(drain_rate=10)
        sessions = rig.open("tcp", 50)
        failures = []
        rig.supervisor.drain().addErrback(failures.append)
        rig.supervisor.resume()
        self.assertFalse(rig.supervisor.draining)
        self.assertTrue(rig.gate.accepting)
        self.assertIsNone(rig.gate.refusal())
        failures[0].trap(CancelledError)
        rig.clock.advance(10)
        self.assertEqual(sum(s.closed for s in sessions), 1)  # only the first tick's one


class SettingsTests(unittest.TestCase):
    def test_from_config(self) -> None:
        config = Config(sample_interval=2.0, alert_connections=500, drain_rate=50)
        settings = SupervisorSettings.from_config(config)
        self.assertEqual(settings.interval, 2.0)
        self.assertEqual(settings.alert_connections, 500)
        self.assertEqual(settings.drain_rate, 50)
        self.assertEqual(settings.alert_cooldown, Config().alert_cooldown)

    def test_defaults_agree_with_config(self) -> None:
        """The thresholds' defaults are written in two places; they must not drift."""
        config, settings = Config(), SupervisorSettings()
        for name in SupervisorSettings.__dataclass_fields__:
            key = "sample_interval" if name == "interval" else name
            if hasattr(config, key):
                self.assertEqual(getattr(settings, name), getattr(config, key), name)
