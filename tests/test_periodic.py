"""The one periodic runner (clawd/core/periodic.py) and the one job owner (clawd/core/supervise.py).

Every test is bounded: a runner that fails to stop fails the test within seconds."""

from __future__ import annotations

import asyncio
import time

import pytest

from clawd.core.periodic import Periodic
from clawd.core.supervise import JobSlot

BOUND = 5.0  # seconds any wait in these tests may take before it counts as hung


class Steps:
    """A step that records when it ran; can fail, or ask for its next delay."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ran = asyncio.Event()
        self.fail_with: Exception | None = None
        self.next_delay: float | None = None

    async def __call__(self) -> float | None:
        self.times.append(time.monotonic())
        self.ran.set()
        if self.fail_with is not None:
            raise self.fail_with
        return self.next_delay

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(BOUND):
            while len(self.times) < count:
                self.ran.clear()
                await self.ran.wait()


async def _stop(runner: Periodic, task: asyncio.Task[None]) -> None:
    runner.stop()
    async with asyncio.timeout(BOUND):
        await task


async def test_runs_every_interval_after_the_first_wait() -> None:
    steps = Steps()
    runner = Periodic(steps, 0.05)
    ready = asyncio.Event()
    began = time.monotonic()
    task = asyncio.create_task(runner.run(ready))
    await asyncio.sleep(0)
    assert ready.is_set() and steps.times == []
    await steps.wait(3)
    await _stop(runner, task)
    assert steps.times[0] - began >= 0.05
    gaps = [b - a for a, b in zip(steps.times, steps.times[1:], strict=False)]
    assert all(gap >= 0.05 for gap in gaps), gaps


async def test_first_delay_replaces_the_first_interval() -> None:
    steps = Steps()
    runner = Periodic(steps, 60.0, first_delay=0.0)
    task = asyncio.create_task(runner.run())
    await steps.wait(1)
    await asyncio.sleep(0.1)
    assert len(steps.times) == 1  # then the (long) interval
    await _stop(runner, task)


async def test_interval_is_read_again_before_every_wait() -> None:
    steps = Steps()
    interval = [60.0]
    runner = Periodic(steps, lambda: interval[0], first_delay=0.0)
    task = asyncio.create_task(runner.run())
    await steps.wait(1)
    interval[0] = 0.02
    runner.wake()  # the live change applies to the wait under way only when woken
    await steps.wait(4)
    await _stop(runner, task)


async def test_step_may_ask_for_its_next_delay() -> None:
    steps = Steps()
    steps.next_delay = 0.0
    runner = Periodic(steps, 60.0, first_delay=0.0)
    task = asyncio.create_task(runner.run())
    await steps.wait(3)
    await _stop(runner, task)


async def test_wake_ends_the_wait_at_once() -> None:
    steps = Steps()
    runner = Periodic(steps, 60.0)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.05)
    assert steps.times == []
    runner.wake()
    await steps.wait(1)
    await _stop(runner, task)


async def test_wake_during_a_step_runs_it_once_more() -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    count = 0

    async def step() -> None:
        nonlocal count
        count += 1
        entered.set()
        await release.wait()

    runner = Periodic(step, 60.0, first_delay=0.0)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(BOUND):
        await entered.wait()
    runner.wake()
    runner.wake()  # several wakes during one step: one more run, not two
    entered.clear()
    release.set()
    async with asyncio.timeout(BOUND):
        await entered.wait()
    await asyncio.sleep(0.05)
    assert count == 2
    await _stop(runner, task)


async def test_stop_ends_a_long_wait_promptly_and_is_idempotent() -> None:
    steps = Steps()
    runner = Periodic(steps, 3600.0)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.05)
    began = time.monotonic()
    runner.stop()
    runner.stop()
    async with asyncio.timeout(BOUND):
        await task
    assert time.monotonic() - began < 1.0
    assert steps.times == [] and runner.stopping
    runner.stop()


async def test_stop_before_run_runs_no_step_but_sets_ready() -> None:
    steps = Steps()
    runner = Periodic(steps, 0.0, first_delay=0.0)
    runner.stop()
    ready = asyncio.Event()
    async with asyncio.timeout(BOUND):
        await runner.run(ready)
    assert ready.is_set() and steps.times == []


async def test_stop_during_a_step_lets_it_finish_then_returns() -> None:
    finished = False
    entered, release = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        nonlocal finished
        entered.set()
        await release.wait()
        finished = True

    runner = Periodic(step, 0.0, first_delay=0.0)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(BOUND):
        await entered.wait()
    runner.stop()
    assert runner.stopping  # a long step can look at this and end early
    release.set()
    async with asyncio.timeout(BOUND):
        await task
    assert finished


async def test_caught_errors_go_to_the_handler_and_the_loop_goes_on() -> None:
    steps = Steps()
    steps.fail_with = ValueError("bad run")
    seen: list[Exception] = []
    runner = Periodic(steps, 0.01, first_delay=0.0, catch=(ValueError,), on_error=seen.append)
    task = asyncio.create_task(runner.run())
    await steps.wait(3)
    await _stop(runner, task)
    assert len(seen) >= 3 and all(str(e) == "bad run" for e in seen)


async def test_after_a_caught_error_the_wait_is_the_interval() -> None:
    steps = Steps()
    steps.fail_with = ValueError("bad run")
    steps.next_delay = 0.0  # never reached: the step raised
    runner = Periodic(steps, 60.0, first_delay=0.0, catch=(ValueError,), on_error=lambda _: None)
    task = asyncio.create_task(runner.run())
    await steps.wait(1)
    await asyncio.sleep(0.1)
    assert len(steps.times) == 1
    await _stop(runner, task)


async def test_other_errors_end_run() -> None:
    steps = Steps()
    steps.fail_with = RuntimeError("a bug")
    runner = Periodic(steps, 0.0, first_delay=0.0, catch=(ValueError,), on_error=lambda _: None)
    with pytest.raises(RuntimeError, match="a bug"):
        async with asyncio.timeout(BOUND):
            await runner.run()


async def test_by_default_nothing_is_caught() -> None:
    steps = Steps()
    steps.fail_with = ValueError("bad run")
    runner = Periodic(steps, 0.0, first_delay=0.0)
    with pytest.raises(ValueError, match="bad run"):
        async with asyncio.timeout(BOUND):
            await runner.run()


def test_catching_needs_a_handler() -> None:
    with pytest.raises(ValueError, match="on_error"):
        Periodic(Steps(), 1.0, catch=(Exception,))


# --------------------------------------------------------------------------- JobSlot


async def test_job_slot_returns_the_result() -> None:
    async def job() -> int:
        return 7

    assert await JobSlot("t").run(job()) == 7


async def test_job_slot_raises_the_jobs_error() -> None:
    async def job() -> int:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        await JobSlot("t").run(job())


async def test_job_slot_cancel_ends_the_job_and_run_returns_none() -> None:
    slot = JobSlot("clawd-test-job")
    started = asyncio.Event()
    names: list[str] = []

    async def job() -> int:
        task = asyncio.current_task()
        assert task is not None
        names.append(task.get_name())
        started.set()
        await asyncio.sleep(3600)
        return 1

    waiting = asyncio.create_task(slot.run(job()))
    async with asyncio.timeout(BOUND):
        await started.wait()
    slot.cancel()
    async with asyncio.timeout(BOUND):
        assert await waiting is None
    assert names == ["clawd-test-job"]
    slot.cancel()  # nothing running: a no-op


async def test_job_slot_job_never_outlives_a_cancelled_owner() -> None:
    slot = JobSlot("t")
    started = asyncio.Event()
    cleaned = False

    async def job() -> None:
        nonlocal cleaned
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned = True

    owner = asyncio.create_task(slot.run(job()))
    async with asyncio.timeout(BOUND):
        await started.wait()
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(BOUND):
            await owner
    assert cleaned
