"""The adaptive concurrency limits of `sentiguard/gateway/limiter.py`, on a fake clock."""

from __future__ import annotations

import pytest

from sentiguard.gateway.limiter import (
    WINDOW_S,
    AimdLimiter,
    FixedLimiter,
    GradientLimiter,
    Limiter,
    make_limiter,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(limiter: Limiter, clock: Clock, latency_s: float, n: int, busy: bool = True) -> None:
    """`n` answers of `latency_s`, each sent with the limit in use (`busy`) or one request."""
    for _ in range(n):
        clock.now += latency_s
        limiter.sample(latency_s, limiter.limit if busy else 1)


def limiters(clock: Clock, ceiling: int = 16, initial: int = 1) -> list[Limiter]:
    return [
        AimdLimiter(ceiling, target_s=0.5, initial=initial, clock=clock),
        GradientLimiter(ceiling, initial=initial, clock=clock),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["aimd", "gradient"])
def test_limit_grows_while_latency_stays_low_up_to_the_ceiling_only(index: int) -> None:
    clock = Clock()
    limiter = limiters(clock)[index]
    assert limiter.limit == 1
    seen = []
    for _ in range(40):
        serve(limiter, clock, 0.02, 5)
        seen.append(limiter.limit)
    assert seen[0] > 1, "grows from the first answers"
    assert seen == sorted(seen), "never shrinks while latency stays low"
    assert max(seen) == 16 == limiter.ceiling, "reaches the ceiling and stays there"


@pytest.mark.parametrize("index", [0, 1], ids=["aimd", "gradient"])
def test_limit_shrinks_when_latency_climbs_but_never_below_one(index: int) -> None:
    clock = Clock()
    limiter = limiters(clock, initial=16)[index]
    serve(limiter, clock, 0.02, 50)
    assert limiter.limit == 16
    serve(limiter, clock, 0.9, 10)  # 45x the usual latency, above the aimd target
    shrunk = limiter.limit
    assert shrunk < 16
    latency = 0.9
    for _ in range(200):  # latency that keeps climbing drives it to 1, not below
        latency *= 1.05
        serve(limiter, clock, latency, 1)
    assert limiter.limit == 1
    for _ in range(30):
        limiter.sample(9.0, 1, dropped=True)
        clock.now += 10.0
    assert limiter.limit == 1


@pytest.mark.parametrize("index", [0, 1], ids=["aimd", "gradient"])
def test_a_drop_lowers_the_limit_and_an_idle_worker_does_not_grow_it(index: int) -> None:
    clock = Clock()
    limiter = limiters(clock, initial=8)[index]
    clock.now += 1.0
    limiter.sample(1.2, 8, dropped=True)  # a timeout on the gateway's own deadline
    assert limiter.limit < 8
    before = limiter.limit
    serve(limiter, clock, 0.02, 100, busy=False)  # one request at a time: app-limited
    assert limiter.limit == before, "a limit not in use is not evidence it could be higher"


def test_aimd_backs_off_once_for_one_slow_spell() -> None:
    clock = Clock()
    limiter = AimdLimiter(10, target_s=0.5, clock=clock)
    for _ in range(6):  # one batch's answers, all slow, arriving together
        limiter.sample(0.8, 10)
    assert limiter.limit == 9, "x0.9 once, not 0.9 ** 6"
    clock.now += 0.6
    limiter.sample(0.8, 10)
    assert limiter.limit == 8


def test_gradient_holds_while_latency_is_within_its_tolerance() -> None:
    clock = Clock()
    limiter = GradientLimiter(16, initial=8, clock=clock)
    serve(limiter, clock, 0.10, 50)
    at = limiter.limit
    serve(limiter, clock, 0.14, 20)  # 1.4x the long-run latency: within 1.5x
    assert limiter.limit >= at


def test_fixed_is_the_ceiling_whatever_happens() -> None:
    clock = Clock()
    limiter = FixedLimiter(6, clock=clock)
    serve(limiter, clock, 5.0, 20)
    limiter.sample(9.0, 6, dropped=True)
    assert limiter.limit == 6


def test_expected_latency_is_a_low_percentile_of_recent_answers_only() -> None:
    clock = Clock()
    limiter = AimdLimiter(8, target_s=0.5, clock=clock)
    assert limiter.expected_latency_s() is None, "unknown before any answer"
    for latency in [0.05] * 4 + [0.2] * 46:
        limiter.sample(latency, 1)
    assert limiter.expected_latency_s() == 0.2, "the 10th percentile, not the fastest"
    limiter.sample(3.0, 1, dropped=True)
    assert limiter.expected_latency_s() == 0.2, "a timeout is no latency sample"
    clock.now += WINDOW_S + 0.1
    assert limiter.expected_latency_s() is None, "old answers expire"


def test_a_lower_ceiling_caps_the_limit_and_reset_forgets() -> None:
    clock = Clock()
    limiter = make_limiter("aimd", 8, deadline_s=1.5, clock=clock)
    assert limiter.limit == 8
    limiter.ceiling = 3  # this process's share, once it knows its siblings
    assert limiter.limit == 3
    serve(limiter, clock, 0.02, 20)
    assert limiter.limit == 3
    clock.now += 1.0
    limiter.sample(2.0, 3, dropped=True)
    assert limiter.limit == 2
    limiter.reset()
    assert (limiter.limit, limiter.expected_latency_s()) == (3, None)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="aimd, gradient, fixed"):
        make_limiter("vegas", 8, deadline_s=1.5)
