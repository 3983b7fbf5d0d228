"""CircuitBreaker against a plain sequential model, driven by Hypothesis.

The machine drives the breaker's synchronous hooks, as KeyedLanes does: ``_enter()``
lets a call through (or raises :exc:`CircuitOpen`), and ``_exit(ticket, exc)`` ends it
with a success, a failure, an answer that is not a failure, or a cancellation, in any
order. Time is a fake clock that the rules move on by eighths of a second, so that
every instant and every ``retry_after`` is exact in floating point; no event loop runs.

The model is written differently from the breaker: instead of epochs, it keeps the set
of calls whose outcome still counts, and empties it on every change of state.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from anyio_keyq import CircuitBreaker, CircuitOpen, CircuitState


class Cancelled(BaseException):
    """Stands in for the event loop's cancellation exception: not an Exception."""


OUTCOMES = {
    "ok": None,
    "fail": ConnectionError,  # failure_on
    "answer": LookupError,  # an Exception that failure_on does not match
    "cancel": Cancelled,
}


class Model:
    """The breaker as a plain state machine, one step at a time."""

    def __init__(self, threshold: int, recovery: Fraction, success_threshold: int) -> None:
        self.threshold = threshold
        self.recovery = recovery
        self.success_threshold = success_threshold
        self.state = "closed"
        self.in_a_row = 0
        self.opened_at: Fraction | None = None
        self.trial: int | None = None
        self.trial_successes = 0
        self.counting: set[int] = set()  # calls whose outcome still counts
        self.changes: list[tuple[str, str]] = []
        self.in_flight = 0
        self.calls = self.successes = self.failures = 0
        self.rejections = self.trials = self.opened = 0

    def current(self, now: Fraction) -> str:
        if self.state == "open":
            assert self.opened_at is not None
            if now >= self.opened_at + self.recovery:
                return "half-open"
        return self.state

    def move(self, new: str) -> None:
        if new != self.state:
            self.changes.append((self.state, new))
        self.state = new
        self.counting = set()
        self.in_a_row = 0
        self.trial = None
        self.trial_successes = 0

    def open(self, now: Fraction) -> None:
        self.opened_at = now
        self.opened += 1
        self.move("open")

    def enter(self, call: int, now: Fraction) -> Fraction | None:
        """Let *call* through (None), or return the retry_after of its refusal."""
        if self.state == "open":
            assert self.opened_at is not None
            if now < self.opened_at + self.recovery:
                self.rejections += 1
                return self.opened_at + self.recovery - now
            self.move("half-open")
        if self.state == "half-open":
            if self.trial is not None:
                self.rejections += 1
                return self.recovery
            self.trial = call
            self.trials += 1
        self.calls += 1
        self.in_flight += 1
        self.counting.add(call)
        return None

    def exit(self, call: int, outcome: str, now: Fraction) -> None:
        self.in_flight -= 1
        counts = call in self.counting
        self.counting.discard(call)
        if outcome == "cancel":
            if call == self.trial:
                self.trial = None
            return
        failed = outcome == "fail"
        if failed:
            self.failures += 1
        else:
            self.successes += 1
        if not counts:
            return
        if self.state == "closed":
            self.in_a_row = self.in_a_row + 1 if failed else 0
            if self.in_a_row >= self.threshold:
                self.open(now)
            return
        assert self.state == "half-open"
        assert call == self.trial
        self.trial = None
        if failed:
            self.open(now)
        else:
            self.trial_successes += 1
            if self.trial_successes >= self.success_threshold:
                self.move("closed")


class BreakerMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    @initialize(
        threshold=st.integers(1, 3),
        recovery=st.integers(1, 8).map(lambda k: Fraction(k, 8)),
        success_threshold=st.integers(1, 2),
    )
    def setup(self, threshold: int, recovery: Fraction, success_threshold: int) -> None:
        self.now = Fraction(0)
        self.changes: list[tuple[str, str]] = []
        self.model = Model(threshold, recovery, success_threshold)
        self.breaker = CircuitBreaker(
            threshold,
            float(recovery),
            failure_on=ConnectionError,
            success_threshold=success_threshold,
            name="model",
            on_change=lambda breaker, old, new: self.changes.append((old.value, new.value)),
        )
        self.breaker._clock = lambda: float(self.now)
        self.next_call = 0

    @rule(target=calls)
    def enter(self) -> object:
        call = self.next_call
        self.next_call += 1
        expected = self.model.enter(call, self.now)
        if expected is not None:
            with pytest.raises(CircuitOpen) as caught:
                self.breaker._enter()
            assert caught.value.retry_after == float(expected)
            assert caught.value.name == "model"
            return multiple()
        return (call, self.breaker._enter())

    @rule(call=consumes(calls), outcome=st.sampled_from(sorted(OUTCOMES)))
    def exit(self, call: tuple[int, int], outcome: str) -> None:
        name, ticket = call
        self.model.exit(name, outcome, self.now)
        cls = OUTCOMES[outcome]
        self.breaker._exit(ticket, None if cls is None else cls())

    @rule(eighths=st.integers(1, 8))
    def advance(self, eighths: int) -> None:
        self.now += Fraction(eighths, 8)

    @rule()
    def trip(self) -> None:
        self.model.open(self.now)
        self.breaker.trip()

    @rule()
    def reset(self) -> None:
        self.model.move("closed")
        self.breaker.reset()

    @invariant()
    def matches_the_model(self) -> None:
        model = self.model
        state = model.current(self.now)
        snapshot = self.breaker.statistics()
        assert snapshot.state is CircuitState(state)
        assert self.breaker.state is CircuitState(state)
        assert snapshot.consecutive_failures == model.in_a_row
        assert snapshot.trial_in_flight == (model.trial is not None)
        assert snapshot.trial_successes == model.trial_successes
        assert snapshot.in_flight == model.in_flight
        assert (snapshot.calls, snapshot.successes, snapshot.failures) == (
            model.calls,
            model.successes,
            model.failures,
        )
        assert (snapshot.rejections, snapshot.trials, snapshot.opened) == (
            model.rejections,
            model.trials,
            model.opened,
        )
        opened_at = None if model.opened_at is None else float(model.opened_at)
        assert snapshot.opened_at == opened_at
        if state == "open":
            assert model.opened_at is not None
            assert snapshot.next_trial_at == float(model.opened_at + model.recovery)
        else:
            assert snapshot.next_trial_at is None
        assert self.changes == model.changes
        at_rest = model.state == "closed" and model.in_a_row == 0 and model.in_flight == 0
        assert self.breaker._at_rest == at_rest
        assert repr(self.breaker)


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
