"""Draining is the gateway's: it refuses hellos and sends sessions away at a bounded rate."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from o2obroker.actors.supervisor import IGate, Unavailable
from o2obroker.session.drain import IDLE, RESTING, SENDING, TRANSITIONS
from tests.supervisor.helpers import Rig, make_gate, open_sessions


class DrainMachineTests(unittest.TestCase):
    def test_every_input_is_declared_in_every_state_it_can_reach(self) -> None:
        states = {IDLE, SENDING, RESTING}
        expected = {(state, i) for state in states for i in ("start", "stop", "halt")}
        expected.add((SENDING, "empty"))  # only a running slice finds the node empty
        self.assertEqual(set(TRANSITIONS), expected)
        self.assertTrue(all(after in states for after, _ in TRANSITIONS.values()))

    def test_states_through_a_drain(self) -> None:
        gate = make_gate(Clock())
        drainer = gate.drainer
        open_sessions(gate, "tcp", 30)
        self.assertEqual(drainer.state, IDLE)
        gate.drain(rate=100)
        self.assertEqual(drainer.state, SENDING)
        gate.clock.advance(0.1)
        gate.clock.advance(0.1)
        self.assertEqual(drainer.state, RESTING)
        self.assertIsNotNone(gate.refusal())  # resting is still draining
        gate.resume()
        self.assertEqual((drainer.state, drainer.error), (IDLE, None))


class GatewayDrainTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.gate = make_gate(self.clock)

    def test_the_gateway_is_what_the_supervisor_needs(self) -> None:
        self.assertTrue(verifyObject(IGate, self.gate))

    def test_drain_without_a_supervisor(self) -> None:
        sessions = open_sessions(self.gate, "ws", 25)
        done: list[object] = []
        self.gate.drain(rate=100).addCallback(done.append)  # 10 per 0.1 s slice
        self.assertFalse(self.gate.accepting)
        refusal = self.gate.refusal()
        self.assertEqual(
            (refusal.code, refusal.reason, refusal.fatal), (503, "node is draining", True)
        )
        self.assertEqual(sum(s.closed for s in sessions), 10)
        self.clock.advance(0.1)
        self.assertEqual(sum(s.closed for s in sessions), 20)
        self.assertEqual(done, [])
        self.clock.advance(0.1)
        self.assertEqual(done, [None])
        self.assertEqual(self.gate.drainer.sent, 25)
        self.assertEqual(
            sessions[0].frames, [{"t": "error", "code": 503, "reason": "node is draining"}]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_error_asked_for_is_what_hellos_and_sessions_get(self) -> None:
        sessions = open_sessions(self.gate, "tcp", 2)
        error = Unavailable("node is draining", {"ws": "ws://n2/ws"})
        self.gate.drain(error, rate=10)
        self.assertIs(self.gate.refusal(), error)
        self.clock.advance(0.1)
        self.assertEqual([s.frames[0]["redirect"] for s in sessions], [{"ws": "ws://n2/ws"}] * 2)

    def test_draining_overrides_the_admission_rule(self) -> None:
        self.gate.admission = lambda: None  # the supervisor would let this hello in
        self.gate.drain()
        self.assertEqual(self.gate.refusal().reason, "node is draining")

    def test_asked_again_after_it_ended_it_sends_away_who_came_since(self) -> None:
        done: list[int] = []
        self.gate.drain(rate=10).addCallback(lambda _: done.append(1))
        self.assertEqual(done, [1])  # empty: at once
        late = open_sessions(self.gate, "tcp", 3)  # connected before their hello was refused
        self.gate.drain(rate=10).addCallback(lambda _: done.append(2))
        self.assertEqual(done, [1])
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.assertEqual(done, [1, 2])
        self.assertTrue(all(s.closed for s in late))

    def test_resume_cancels_waiters_and_keeps_sessions(self) -> None:
        sessions = open_sessions(self.gate, "lp", 20)
        failures: list[object] = []
        self.gate.drain(rate=10).addErrback(failures.append)
        self.gate.resume()
        self.assertTrue(self.gate.accepting)
        self.assertIsNone(self.gate.refusal())
        failures[0].trap(CancelledError)
        self.clock.advance(5)
        self.assertEqual(sum(s.closed for s in sessions), 1)  # the first slice only

    def test_stopping_the_gateway_stops_the_slices(self) -> None:
        open_sessions(self.gate, "tcp", 20)
        self.gate.drain(rate=10)
        self.gate.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SupervisorAsksTests(unittest.TestCase):
    def test_supervisor_asks_with_its_rate_and_redirect(self) -> None:
        rig = Rig(drain_rate=50)  # 5 per slice
        rig.peers = [{"node": "n2", "tcp": "n2:9100", "load": 1}]
        sessions = rig.open("tcp", 12)
        failures: list[object] = []
        rig.supervisor.drain().addErrback(failures.append)
        self.assertEqual(sum(s.closed for s in sessions), 5)
        self.assertEqual(sessions[0].frames[0]["redirect"], {"tcp": "n2:9100"})
        self.assertTrue(rig.supervisor.draining)
        self.assertEqual(rig.supervisor.gauges()["draining"], 1)
        self.assertEqual([a["event"] for a in rig.supervisor.alerts()], ["drain"])
        rig.supervisor.resume()
        self.assertFalse(rig.supervisor.draining)
        failures[0].trap(CancelledError)
