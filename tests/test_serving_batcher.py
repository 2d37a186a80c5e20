"""serving.batcher: when batches start, how results are routed, queue limits and cancellation.

The model is a fake that records each batch and returns per-window values derived from the window
itself, so a result delivered to the wrong request cannot go unnoticed. Timeouts only guard against
hangs; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np
import pytest

from serving.batcher import Batcher, BatcherClosed, QueueFull

T = TypeVar("T")
WINDOW = 4
HANG_GUARD_S = 10.0
LONG_DELAY_S = 60.0  # "never" within a test: a batch that starts did so for another reason


class FakeModel:
    """Records batch sizes; output row = [sum of the window, first sample]; can be held with a gate."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        self.started.set()
        assert self.gate.wait(HANG_GUARD_S)
        if self.fail:
            raise RuntimeError("boom")
        return np.stack([batch.sum(axis=1), batch[:, 0]], axis=1).astype(np.float32)


def windows(first: float, n: int) -> np.ndarray:
    """``n`` windows whose first samples are first, first + 1, ... (unique per request in a test)."""
    out = np.zeros((n, WINDOW), np.float32)
    out[:, 0] = first + np.arange(n)
    return out


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, HANG_GUARD_S)

    return asyncio.run(guarded())


def make(model: FakeModel, **kwargs: float) -> Batcher:
    options = {"max_batch_size": 4, "max_delay_s": LONG_DELAY_S, "max_queue": 16, **kwargs}
    return Batcher(model, name="fake", **options)  # type: ignore[arg-type]


async def until(condition) -> None:  # noqa: ANN001
    while not condition():
        await asyncio.sleep(0.001)


def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        batcher = make(model)
        results = await asyncio.gather(batcher.submit(windows(0, 2)), batcher.submit(windows(10, 2)))
        await batcher.close()
        return results

    first, second = run(scenario())
    assert model.batches == [4]
    np.testing.assert_array_equal(first[:, 1], [0, 1])
    np.testing.assert_array_equal(second[:, 1], [10, 11])


def test_the_oldest_window_waiting_max_delay_starts_a_partial_batch() -> None:
    model = FakeModel()

    async def scenario() -> np.ndarray:
        batcher = make(model, max_batch_size=8, max_delay_s=0.01)
        result = await batcher.submit(windows(5, 3))
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(scenario())[:, 1], [5, 6, 7])
    assert model.batches == [3]


def test_many_requests_are_split_across_batches_and_each_gets_its_own_rows() -> None:
    model = FakeModel()
    sizes = [3, 1, 7, 2, 5, 4, 6]

    async def scenario() -> list[np.ndarray]:
        batcher = make(model, max_queue=64)
        results = await asyncio.gather(*(batcher.submit(windows(100 * i, n)) for i, n in enumerate(sizes)))
        await batcher.close()
        return results

    results = run(scenario())
    for i, (n, result) in enumerate(zip(sizes, results, strict=True)):
        np.testing.assert_array_equal(result[:, 1], 100 * i + np.arange(n))
    assert sum(model.batches) == sum(sizes)
    assert max(model.batches) == 4 and model.batches.count(4) >= sum(sizes) // 4


def test_a_full_queue_raises_queue_full_or_waits_for_room() -> None:
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> tuple[QueueFull, np.ndarray]:
        batcher = make(model, max_queue=8, max_delay_s=0.01)
        running = asyncio.ensure_future(batcher.submit(windows(0, 4)))  # taken into the held batch
        await until(model.started.is_set)
        queued = asyncio.ensure_future(batcher.submit(windows(10, 8)))  # fills the queue
        await until(lambda: batcher.queued == 8)
        with pytest.raises(QueueFull) as info:
            await batcher.submit(windows(20, 1))
        waiting = asyncio.ensure_future(batcher.submit(windows(30, 1), wait_for_room=True))
        await asyncio.sleep(0)
        assert not waiting.done()
        model.gate.set()
        await asyncio.gather(running, queued)
        result = await waiting
        await batcher.close()
        return info.value, result

    error, result = run(scenario())
    assert error.retry_after_s >= 1 and "8 windows queued (limit 8)" in str(error)
    np.testing.assert_array_equal(result[:, 1], [30])


def test_a_request_larger_than_the_queue_still_runs_alone() -> None:
    model = FakeModel()

    async def scenario() -> np.ndarray:
        batcher = make(model, max_queue=4, max_delay_s=0.01)
        result = await batcher.submit(windows(0, 10))
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(scenario())[:, 1], np.arange(10))
    assert model.batches == [4, 4, 2]


def test_a_cancelled_request_leaves_the_queue() -> None:
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> tuple[int, np.ndarray]:
        batcher = make(model)
        running = asyncio.ensure_future(batcher.submit(windows(0, 4)))
        await until(model.started.is_set)
        doomed = asyncio.ensure_future(batcher.submit(windows(50, 3)))
        await until(lambda: batcher.queued == 3)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        queued_after_cancel = batcher.queued
        model.gate.set()
        result = await running
        await batcher.close()
        return queued_after_cancel, result

    queued, result = run(scenario())
    assert queued == 0
    np.testing.assert_array_equal(result[:, 1], [0, 1, 2, 3])
    assert model.batches == [4]  # the cancelled windows never ran


def test_when_every_registered_producer_is_waiting_the_batch_starts_at_once() -> None:
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        batcher = make(model, max_batch_size=32, max_queue=64)
        with batcher.producer() as first, batcher.producer() as second:
            early = asyncio.ensure_future(first.submit(windows(0, 1)))
            await asyncio.sleep(0.05)
            assert model.batches == []  # the second producer may still add windows: wait for it
            results = await asyncio.gather(early, second.submit(windows(10, 1)))
        await batcher.close()
        return results

    first, second = run(scenario())
    assert model.batches == [2]
    assert (first[0, 1], second[0, 1]) == (0, 10)


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_going() -> None:
    model = FakeModel()

    async def scenario() -> np.ndarray:
        batcher = make(model, max_delay_s=0.0)
        model.fail = True
        with pytest.raises(RuntimeError, match="inference failed: boom"):
            await batcher.submit(windows(0, 2))
        model.fail = False
        result = await batcher.submit(windows(7, 1))
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(scenario())[:, 1], [7])


def test_close_drains_queued_work_then_refuses_new_work() -> None:
    model = FakeModel()

    async def scenario() -> np.ndarray:
        batcher = make(model)
        pending = asyncio.ensure_future(batcher.submit(windows(3, 2)))
        await until(lambda: batcher.queued == 2)
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(windows(0, 1))
        return await pending

    np.testing.assert_array_equal(run(scenario())[:, 1], [3, 4])


def test_invalid_limits_are_rejected() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="max_queue >= max_batch_size"):
            Batcher(FakeModel(), name="x", max_batch_size=8, max_delay_s=0.0, max_queue=4)

    run(scenario())


def test_a_producer_that_gives_up_stops_holding_the_batch() -> None:
    model = FakeModel()

    async def scenario() -> np.ndarray:
        batcher = make(model, max_batch_size=32, max_queue=64)
        with batcher.producer() as decodes_fine, batcher.producer() as corrupt_file:
            pending = asyncio.ensure_future(decodes_fine.submit(windows(0, 1)))
            await asyncio.sleep(0.05)
            assert model.batches == []
            corrupt_file.close()  # e.g. its file failed to decode: nobody else is coming
            result = await pending
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(scenario())[:, 1], [0])
    assert model.batches == [1]


class CountingModel(FakeModel):
    """A slow fake that counts how many calls are inside it at once (held until ``gate`` opens)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return super().__call__(batch)
        finally:
            with self.lock:
                self.active -= 1


def test_three_instances_run_three_batches_at_once_and_no_more() -> None:
    model = CountingModel()
    model.gate.clear()

    async def scenario() -> tuple[int, int, list[np.ndarray]]:
        batcher = make(model, instances=3, max_queue=64)
        pending = [asyncio.ensure_future(batcher.submit(windows(100 * i, 4))) for i in range(5)]
        await until(lambda: len(model.batches) == 3)
        await asyncio.sleep(0.05)  # a 4th batch must not start while 3 instances are busy
        started_while_held, queued_while_held = len(model.batches), batcher.queued
        model.gate.set()
        results = await asyncio.gather(*pending)
        await batcher.close()
        return started_while_held, queued_while_held, results

    started, queued, results = run(scenario())
    assert (started, queued) == (3, 8)
    assert model.max_active == 3  # measured inside the fake: three batches overlapped
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result[:, 1], 100 * i + np.arange(4))


def test_one_callable_per_instance_and_an_instance_never_runs_two_batches_at_once() -> None:
    models = [CountingModel() for _ in range(2)]
    for model in models:
        model.gate.clear()

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(models, name="fake", max_batch_size=2, max_delay_s=0.0, max_queue=64)
        assert batcher.instances == 2
        pending = [asyncio.ensure_future(batcher.submit(windows(10 * i, 3))) for i in range(6)]
        await until(lambda: all(m.batches for m in models))
        for model in models:
            model.gate.set()
        results = await asyncio.gather(*pending)
        await batcher.close()
        return results

    results = run(scenario())
    assert [m.max_active for m in models] == [1, 1]
    assert sum(sum(m.batches) for m in models) == 18
    for i, result in enumerate(results):  # rows routed back across batches that finished in any order
        np.testing.assert_array_equal(result[:, 1], 10 * i + np.arange(3))


def test_batches_are_assembled_in_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real_concatenate = np.concatenate

    def recording_concatenate(pieces, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return real_concatenate(pieces, *args, **kwargs)

    monkeypatch.setattr("serving.batcher.np.concatenate", recording_concatenate)
    model = FakeModel()

    async def scenario() -> list[np.ndarray]:
        batcher = make(model)
        results = await asyncio.gather(batcher.submit(windows(0, 2)), batcher.submit(windows(10, 2)))
        await batcher.close()
        return results

    first, second = run(scenario())
    np.testing.assert_array_equal(second[:, 1], [10, 11])
    assert threads and all(name.startswith("infer-fake") for name in threads)


def test_instances_must_match_the_callables() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="instances >= 1"):
            Batcher(
                [FakeModel(), FakeModel()],
                name="x",
                max_batch_size=1,
                max_delay_s=0.0,
                max_queue=4,
                instances=3,
            )
        with pytest.raises(ValueError, match="instances >= 1"):
            Batcher(FakeModel(), name="x", max_batch_size=1, max_delay_s=0.0, max_queue=4, instances=0)

    run(scenario())
