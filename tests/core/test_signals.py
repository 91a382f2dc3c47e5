"""Run signals reach the run they name: in-process, and from another process over a real Redis."""

from __future__ import annotations

import threading

from bot.signals import RunSignals, Signal


def test_a_cancel_sets_the_event_and_other_signals_wait_in_order() -> None:
    signals = RunSignals(None)
    with signals.listen(7) as inbox:
        signals.send(7, Signal.steer("use tabs", "ana"))
        signals.send(8, Signal.steer("not for run 7", "bo"))
        signals.send(7, Signal.approval("per_1", "once", "ana"))
        signals.send(7, Signal.cancel("bo"))
        assert inbox.cancel.is_set()
        assert [(s.kind, s.text or s.reply) for s in inbox.pending()] == [("steer", "use tabs"), ("approval", "once")]
        assert inbox.next(timeout=0.05) is None
    signals.send(7, Signal.steer("after the run", "ana"))  # nobody listens: dropped, no error


def test_signals_cross_processes_over_redis(redis_url: str) -> None:
    receiving, sending = RunSignals(redis_url), RunSignals(redis_url)
    with receiving.listen(3) as inbox:
        got: list[Signal | None] = []
        reader = threading.Thread(target=lambda: got.append(inbox.next(timeout=5)))
        reader.start()
        sending.send(3, Signal.steer("stop after the tests pass", "ana"))
        reader.join(6)
        assert got and got[0] == Signal.steer("stop after the tests pass", "ana")
        sending.send(3, Signal.cancel("ana"))
        assert inbox.cancel.wait(5)


def test_a_malformed_published_signal_is_ignored() -> None:
    assert Signal.decode(b"not json") is None
    assert Signal.decode(b'{"kind": "steer", "surprise": 1}') is None
