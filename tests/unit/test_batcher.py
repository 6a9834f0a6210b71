"""daemon.batcher with a fake model, a fake clock and a hand-released pool.

The batcher's seams are its constructor arguments: ``run`` (a plain function
standing in for ONNX Runtime), ``clock`` and ``timer`` (a fake time whose
callbacks fire only when the test advances it) and ``executor`` (a pool whose
jobs run only when the test releases them). Nothing inside the module is
patched. Also here: the ``[batching]`` config section and :func:`batch_policy`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.batcher import (
    Answer,
    Batcher,
    BatchError,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
)
from daemon.batchpolicy import BatchPolicy, batch_policy
from daemon.repository import BatchingConfig, ModelConfig, RepositoryError, parse_config
from wire import messages

INF = float("inf")


class FakeTime:
    """A clock and a ``call_later`` whose callbacks fire in :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in [t for t in self.timers if t.when <= self.now and not t.cancelled]:
            self.timers.remove(timer)
            timer.callback()


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class HeldPool(concurrent.futures.Executor):
    """An executor that runs a job only when the test calls :meth:`release`."""

    def __init__(self) -> None:
        self.jobs: list[tuple[concurrent.futures.Future, Callable[..., Any], tuple]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.append((fut, fn, args))
        return fut

    def release(self, n: int | None = None) -> int:
        jobs, self.jobs = self.jobs[:n], self.jobs[len(self.jobs[:n]):]
        for fut, fn, args in jobs:
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
        return len(jobs)


class FakeModel:
    """``y = 2 * x`` ([N, 3] -> [N, 3]) and ``s = x.sum(1)`` ([N]); records each run's rows.
    ``poison``: a row whose first value is negative makes the whole run raise."""

    def __init__(self, fail: bool = False) -> None:
        self.runs: list[tuple[int, list[str]]] = []
        self.fail = fail

    def __call__(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        x = feeds["x"]
        self.runs.append((len(x), list(outputs)))
        if self.fail or (x[:, 0] < 0).any():
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad row")
        values = {"y": x * 2, "s": x.sum(axis=1)}
        return [values[name] for name in outputs]

    @property
    def rows(self) -> list[int]:
        return [rows for rows, _ in self.runs]


class Harness:
    def __init__(self, policy: BatchPolicy, model: Callable[..., list[np.ndarray]] | None = None
                 ) -> None:
        self.time = FakeTime()
        self.pool = HeldPool()
        self.model = model or FakeModel()
        self.batcher = Batcher(self.model, policy, executor=self.pool, clock=self.time.clock,
                               timer=self.time.call_later, name="fake/1")

    def send(self, x: np.ndarray, outputs: tuple[str, ...] = ("y", "s"), budget: float = 10.0
             ) -> asyncio.Task[Answer]:
        feeds = {"x": x}
        return asyncio.create_task(self.batcher.infer(feeds, list(outputs),
                                                      self.time.now + budget))

    async def release(self, n: int | None = None) -> int:
        released = self.pool.release(n)
        await settle()
        return released


def policy(rows: int = 4, delay: float = 0.001, queue: int = 1000, running: int = 1,
           enabled: bool = True, inline: float = 0.0, exact: bool = True) -> BatchPolicy:
    return BatchPolicy(enabled=enabled, max_batch_rows=rows, max_queue_delay_s=delay,
                       max_queue_rows=queue, max_running=running, inline_below_s=inline,
                       exact=exact)


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + start)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


def check(answer: Answer, x: np.ndarray, outputs: tuple[str, ...] = ("y", "s")) -> None:
    expected = {"y": x * 2, "s": x.sum(axis=1)}
    assert len(answer.outputs) == len(outputs)
    for name, got in zip(outputs, answer.outputs, strict=True):
        np.testing.assert_array_equal(got, expected[name])


# ------------------------------------------------------------------ coalescing


def test_a_full_batch_runs_at_once_and_each_request_gets_its_own_rows():
    async def go() -> None:
        h = Harness(policy(rows=4, delay=INF))
        xs = [rows(1, 10 * i) for i in range(4)]
        tasks = [h.send(x) for x in xs]
        await settle()
        assert len(h.pool.jobs) == 1  # full at 4 rows: no waiting for the delay
        await h.release()
        assert h.model.rows == [4]
        for task, x in zip(tasks, xs, strict=True):
            answer = task.result()
            check(answer, x)
            assert answer.batch_rows == 4
    run(go)


def test_a_partial_batch_runs_when_the_delay_since_its_first_request_has_passed():
    async def go() -> None:
        h = Harness(policy(rows=100, delay=0.002))
        first = h.send(rows(2))
        await settle()
        h.time.advance(0.001)
        second = h.send(rows(3, 50))
        await settle()
        h.time.advance(0.0009)
        await settle()
        assert h.pool.jobs == []  # 1.9 ms after the first request: still waiting
        h.time.advance(0.0001)
        await settle()
        assert len(h.pool.jobs) == 1
        await h.release()
        assert h.model.rows == [5]
        check(first.result(), rows(2))
        check(second.result(), rows(3, 50))
        assert first.result().queue_s == pytest.approx(0.002)
        assert second.result().queue_s == pytest.approx(0.001)
    run(go)


def test_a_request_that_would_overflow_the_batch_goes_to_the_next_one():
    async def go() -> None:
        h = Harness(policy(rows=4, delay=INF))
        a, b, c = h.send(rows(3)), h.send(rows(2, 100)), h.send(rows(2, 200))
        await settle()  # 3 + 2 > 4: [a] is due and runs; [b, c] fill the next batch
        assert len(h.pool.jobs) == 1
        await h.release()
        await h.release()
        assert h.model.rows == [3, 4]
        check(a.result(), rows(3))
        check(b.result(), rows(2, 100))
        check(c.result(), rows(2, 200))
        assert [t.result().batch_rows for t in (a, b, c)] == [3, 4, 4]
    run(go)


def test_a_request_larger_than_the_batch_runs_alone():
    async def go() -> None:
        h = Harness(policy(rows=4, delay=INF))
        big, small = h.send(rows(6)), h.send(rows(1, 7))
        await settle()
        await h.release()
        h.time.advance(1)
        await h.release()
        assert h.model.rows == [6]  # the small one waits for company (infinite delay)
        assert not small.done()
        check(big.result(), rows(6))
        small.cancel()
    run(go)


def test_requests_queue_while_every_run_slot_is_busy_and_then_run_together():
    async def go() -> None:
        h = Harness(policy(rows=64, delay=0.0, running=1))
        first = h.send(rows(1))
        await settle()
        assert len(h.pool.jobs) == 1  # no delay: runs at once
        later = [h.send(rows(1, i)) for i in range(5)]
        await settle()
        assert len(h.pool.jobs) == 1  # the slot is busy: the others wait and coalesce
        await h.release()
        await h.release()
        assert h.model.rows == [2, 5]  # a lone row runs as two copies of itself
        check(first.result(), rows(1))
        for i, task in enumerate(later):
            check(task.result(), rows(1, i))
    run(go)


def test_different_output_sets_and_trailing_shapes_are_never_mixed():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.001))
        ys = [h.send(rows(1, i), outputs=("y",)) for i in range(2)]
        both = [h.send(rows(1, i)) for i in range(2)]
        wide = h.send(np.ones((2, 5), np.float32), outputs=("s",))
        await settle()
        h.time.advance(0.001)
        await settle()
        while await h.release():
            pass
        assert sorted(h.model.runs) == [(2, ["s"]), (2, ["y"]), (2, ["y", "s"])]
        for i, task in enumerate(ys):
            check(task.result(), rows(1, i), ("y",))
        for i, task in enumerate(both):
            check(task.result(), rows(1, i))
        np.testing.assert_array_equal(wide.result().outputs[0], [5, 5])
    run(go)


def test_disabled_batching_runs_every_request_alone():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.001, running=2, enabled=False))
        tasks = [h.send(rows(2, i)) for i in range(3)]
        await settle()
        assert len(h.pool.jobs) == 2  # no waiting, one request per run, two slots
        await h.release()
        await h.release()
        assert h.model.rows == [2, 2, 2]
        for i, task in enumerate(tasks):
            check(task.result(), rows(2, i))
            assert task.result().batch_rows == 2
    run(go)


def test_a_lone_row_gets_the_bits_it_gets_in_any_batch():
    """ONNX Runtime's MatMul rounds a single row (a GEMV without prepacked
    weights) differently from two or more (a GEMM); this fake does the same."""
    def gemv_differs(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        x = feeds["x"]
        return [x * 2 + (np.float32(0.5) if len(x) == 1 else np.float32(0))]

    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.0, running=1), gemv_differs)
        row = rows(1, 5)
        alone = h.send(row, ("y",))  # runs at once, alone
        await settle()
        together = [h.send(row, ("y",)), h.send(rows(1, 9), ("y",))]  # wait for the slot
        await settle()
        await h.release()
        await h.release()
        assert alone.result().batch_rows == 1 and together[0].result().batch_rows == 2
        np.testing.assert_array_equal(alone.result().outputs[0], row * 2)
        np.testing.assert_array_equal(together[0].result().outputs[0], row * 2)
        assert alone.result().outputs[0].shape == (1, 3)
    run(go)


def test_a_model_that_takes_one_row_only_is_served_alone_and_unbatched(caplog):
    """A dynamic first dimension that only works with 1 row (a Reshape to [1, -1]):
    the padded run fails, the row runs alone and answers, batching goes off."""
    runs: list[int] = []

    def one_row_only(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        x = feeds["x"]
        runs.append(len(x))
        if len(x) != 1:
            raise RuntimeError(f"cannot reshape {{{len(x)},3}} to {{1,3}}")
        return [x * 2]

    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.0), one_row_only)
        for i in range(3):  # each answered alone; the third failure turns batching off
            assert h.batcher.batching is True
            task = h.send(rows(1, i), ("y",))
            await settle()
            await h.release()
            np.testing.assert_array_equal(task.result().outputs[0], rows(1, i) * 2)
        assert runs == [2, 1] * 3 and h.batcher.batching is False
        assert h.batcher.to_wire()["enabled"] is False
        later = [h.send(rows(1, i), ("y",)) for i in range(3)]
        await settle()
        while await h.release():
            pass
        assert runs[6:] == [1, 1, 1]  # alone and unpadded from then on
        for i, task in enumerate(later):
            np.testing.assert_array_equal(task.result().outputs[0], rows(1, i) * 2)
    run(go)
    assert "batching is off" in caplog.text


def test_a_bad_lone_row_fails_with_its_own_error():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.0))
        bad = h.send(rows(1, -9))  # FakeModel raises for a negative first value
        await settle()
        await h.release()
        with pytest.raises(InferenceFailed, match="bad row"):
            bad.result()
        assert h.model.rows == [2, 1]  # padded, then alone: the error is the row's own
        assert h.batcher.batching is True  # the row is bad, not the model
    run(go)


@pytest.mark.parametrize("pol", [policy(enabled=False), policy(exact=False, delay=0.0),
                                 policy(rows=1, delay=0.0)],
                         ids=["unbatched", "exact-off", "batches-of-one-row"])
def test_without_exact_batching_a_lone_row_runs_as_it_is(pol: BatchPolicy):
    async def go() -> None:
        h = Harness(pol)
        task = h.send(rows(1))
        await settle()
        await h.release()
        assert h.model.rows == [1]  # no second copy
        check(task.result(), rows(1))
    run(go)


# ------------------------------------------------------------ deadlines, bounds


def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_without_computing():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.001))
        late = h.send(rows(1, -50), budget=0.0005)  # would poison the run if computed
        ok = h.send(rows(2), budget=10)
        await settle()
        h.time.advance(0.001)
        await settle()
        await h.release()
        assert h.model.rows == [2]
        with pytest.raises(DeadlineExceeded) as err:
            late.result()
        assert err.value.type == messages.DEADLINE_EXCEEDED
        check(ok.result(), rows(2))
    run(go)


def test_a_deadline_that_passes_while_the_batch_waits_for_a_thread_is_checked_again():
    async def go() -> None:
        h = Harness(policy(rows=2, delay=INF))
        late = h.send(rows(1, -50), budget=0.010)
        ok = h.send(rows(1), budget=10)
        await settle()
        assert len(h.pool.jobs) == 1  # formed while both were alive
        h.time.advance(0.020)
        await h.release()
        assert h.model.rows == [2]  # padded
        with pytest.raises(DeadlineExceeded):
            late.result()
        check(ok.result(), rows(1))
        assert ok.result().batch_rows == 1
    run(go)


def test_a_full_queue_refuses_at_once_with_a_retryable_error():
    async def go() -> None:
        h = Harness(policy(rows=4, delay=1.0, queue=6))
        running = h.send(rows(4))           # occupies the only run slot
        await settle()
        queued = [h.send(rows(3)), h.send(rows(3))]  # 6 rows queued: the bound
        await settle()
        refused = h.send(rows(1))
        await settle()
        with pytest.raises(QueueFull) as err:
            refused.result()
        assert err.value.type == messages.OVERLOADED
        assert messages.error(err.value.type, str(err.value))["retryable"] is True
        assert h.batcher.queued_rows == 6
        while await h.release():
            pass
        h.time.advance(1.0)  # the last 3 rows wait for their delay
        await settle()
        while await h.release():
            pass
        check(running.result(), rows(4))
        for task in queued:
            check(task.result(), rows(3))
        assert h.batcher.queued_rows == 0
        big = h.send(rows(9))  # an empty queue takes any request
        await settle()
        await h.release()
        check(big.result(), rows(9))
    run(go)


def test_a_cancelled_caller_leaves_the_batch():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.001))
        gone, kept = h.send(rows(3)), h.send(rows(1))
        await settle()
        gone.cancel()
        await settle()
        h.time.advance(0.001)
        await settle()
        await h.release()
        assert h.model.rows == [2]  # padded
        check(kept.result(), rows(1))
    run(go)


# ---------------------------------------------------------------------- errors


def test_an_error_in_the_run_answers_every_request_of_the_batch_inference_failed():
    async def go() -> None:
        h = Harness(policy(rows=3, delay=INF), FakeModel(fail=True))
        tasks = [h.send(rows(1, i)) for i in range(3)]
        await settle()
        await h.release()
        for task in tasks:
            with pytest.raises(InferenceFailed, match="RUNTIME_EXCEPTION") as err:
                task.result()
            assert err.value.type == messages.INFERENCE_FAILED
    run(go)


def test_a_request_that_breaks_the_run_fails_alone_and_the_others_are_answered():
    async def go() -> None:
        h = Harness(policy(rows=3, delay=INF))
        good1, bad, good2 = h.send(rows(1)), h.send(rows(1, -9)), h.send(rows(1, 5))
        await settle()
        await h.release()
        assert h.model.rows == [3, 2, 2, 1, 2]  # the batch failed, then one by one (padded;
        # the bad row's padded run fails too, and alone it gives its own error)
        with pytest.raises(InferenceFailed):
            bad.result()
        check(good1.result(), rows(1))
        check(good2.result(), rows(1, 5))
    run(go)


def test_outputs_that_are_not_batch_major_turn_batching_off():
    def pooled(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return [feeds["x"].sum(axis=0, keepdims=True)]  # [1, 3] whatever the rows

    async def go() -> None:
        h = Harness(policy(rows=2, delay=INF), pooled)
        a, b = h.send(rows(1), ("p",)), h.send(rows(1, 3), ("p",))
        await settle()
        await h.release()
        for task, x in ((a, rows(1)), (b, rows(1, 3))):  # answered as if alone
            np.testing.assert_array_equal(task.result().outputs[0], x.sum(axis=0, keepdims=True))
        assert h.batcher.batching is False
        c, d = h.send(rows(1), ("p",)), h.send(rows(1), ("p",))
        await settle()
        assert len(h.pool.jobs) == 1  # alone from now on
        while await h.release():
            pass
        assert c.result().batch_rows == d.result().batch_rows == 1
    run(go)


def test_requests_whose_inputs_disagree_on_rows_run_alone():
    seen: list[dict[str, tuple[int, ...]]] = []

    def two_inputs(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        seen.append({k: v.shape for k, v in feeds.items()})
        if len(feeds["a"]) != len(feeds["b"]):
            raise RuntimeError("dimension mismatch")
        return [feeds["a"] + feeds["b"]]

    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.001), two_inputs)
        ragged = asyncio.create_task(h.batcher.infer(
            {"a": np.ones((2, 1)), "b": np.ones((3, 1))}, ["c"], h.time.now + 1))
        fine = asyncio.create_task(h.batcher.infer(
            {"a": np.ones((3, 1)), "b": np.ones((2, 1))}, ["c"], h.time.now + 1))
        await settle()
        while await h.release():
            pass
        for task in (ragged, fine):  # never concatenated into a 5 x 5 batch that "works"
            with pytest.raises(InferenceFailed):
                task.result()
        assert all(len(shapes) == 2 and shapes["a"] != shapes["b"] for shapes in seen)
    run(go)


def test_a_stopped_pool_answers_draining():
    async def go() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pool.shutdown()
        batcher = Batcher(FakeModel(), policy(delay=0.0), executor=pool)
        with pytest.raises(BatchError) as err:
            await batcher.infer({"x": rows(1)}, ["y"], float("inf"))
        assert err.value.type == messages.DRAINING
    run(go)


def test_with_the_real_loop_timer_and_pool():
    async def go() -> None:
        model = FakeModel()
        batcher = Batcher(model, policy(rows=64, delay=0.005), name="real/1")
        loop = asyncio.get_running_loop()
        xs = [rows(1 + i % 3, i) for i in range(10)]
        answers = await asyncio.gather(*(batcher.infer({"x": x}, ["y", "s"], loop.time() + 5)
                                         for x in xs))
        for answer, x in zip(answers, xs, strict=True):
            check(answer, x)
        assert model.rows == [sum(len(x) for x in xs)]
    run(go)


# ------------------------------------------------------------------ runs on the loop


def test_fast_runs_move_onto_the_loop_and_requests_of_one_turn_still_batch():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.0, inline=0.001))
        first = h.send(rows(1))
        await settle()
        assert len(h.pool.jobs) == 1  # its run time is unknown yet: the pool
        await h.release()
        check(first.result(), rows(1))
        xs = [rows(1 + i % 2, 10 * i) for i in range(5)]
        tasks = [h.send(x) for x in xs]
        await settle()
        assert not h.pool.jobs  # fast (the fake clock says 0 s): run on the loop
        assert h.model.rows == [2, 7]  # the five requests of one turn: one run
        for task, x in zip(tasks, xs, strict=True):
            check(task.result(), x)
            assert task.result().batch_rows == 7
    run(go)


def test_slow_runs_stay_in_the_pool():
    async def go() -> None:
        h = Harness(policy(rows=8, delay=0.0, inline=0.001))
        model = h.model

        def slow(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
            h.time.now += 0.002  # each run takes 2 ms on the fake clock
            return model(feeds, outputs)

        h.batcher.run = slow
        for i in range(3):
            task = h.send(rows(1, i))
            await settle()
            assert len(h.pool.jobs) == 1
            await h.release()
            check(task.result(), rows(1, i))
    run(go)


def test_the_policy_runs_fast_models_on_the_loop_only_when_batching():
    assert batch_policy(ModelConfig(), DYNAMIC_IN, DYNAMIC_OUT).inline_below_s > 0
    assert batch_policy(ModelConfig(), [Spec("x", (1, 3))], DYNAMIC_OUT).inline_below_s == 0


# ------------------------------------------------------------- config, policy


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...]


DYNAMIC_IN, DYNAMIC_OUT = [Spec("x", (-1, 3))], [Spec("y", (-1, 3)), Spec("s", (-1,))]


def test_policy_defaults_follow_the_model():
    p = batch_policy(ModelConfig(max_request_rows=32), DYNAMIC_IN, DYNAMIC_OUT)
    assert (p.enabled, p.max_batch_rows, p.max_queue_rows, p.max_running) == (True, 32, 256, 1)
    assert p.max_queue_delay_s == BatchingConfig().max_queue_delay_us / 1e6
    assert p.to_wire()["max_queue_delay_us"] == BatchingConfig().max_queue_delay_us


@pytest.mark.parametrize("inputs, outputs, culprit", [
    ([Spec("x", (1, 3))], DYNAMIC_OUT, "input 'x'"),
    ([Spec("x", ())], DYNAMIC_OUT, "input 'x'"),
    (DYNAMIC_IN, [Spec("y", (-1, 3)), Spec("pooled", (1, 3))], "output 'pooled'"),
    (DYNAMIC_IN, [Spec("total", ())], "output 'total'"),
])
def test_a_model_without_a_batch_dimension_is_not_batched(inputs, outputs, culprit, caplog):
    p = batch_policy(ModelConfig(), inputs, outputs)
    assert not p.enabled and culprit in p.reason
    assert p.max_running > 1000  # unbatched: every request straight to the pool
    forced = ModelConfig(batching=BatchingConfig(enabled=True))
    p = batch_policy(forced, inputs, outputs, model="m/1")
    assert not p.enabled and culprit in p.reason
    assert "enabled = true ignored" in caplog.text


def test_policy_from_a_config_file(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text("max_request_rows = 64\n[batching]\nenabled = true\nmax_run_rows = 16\n"
                    "max_queue_delay_us = 2000\nmax_queue_rows = 40\nmax_concurrent_batches = 3\n"
                    "exact = false\n")
    cfg = parse_config(path)
    assert cfg.batching == BatchingConfig(True, 16, 2000, 40, 3, False)
    assert "batching" not in cfg.extra
    p = batch_policy(cfg, DYNAMIC_IN, DYNAMIC_OUT)
    assert (p.enabled, p.max_batch_rows, p.max_queue_delay_s, p.max_queue_rows, p.max_running,
            p.exact) == (True, 16, 0.002, 40, 3, False)
    assert p.to_wire()["exact"] is False
    assert batch_policy(ModelConfig(), DYNAMIC_IN, DYNAMIC_OUT).exact is True
    path.write_text("[batching]\nenabled = false\n")
    p = batch_policy(parse_config(path), DYNAMIC_IN, DYNAMIC_OUT)
    assert not p.enabled and "disabled" in p.reason


@pytest.mark.parametrize("section, message", [
    ("max_delay_us = 5", "unknown key 'batching.max_delay_us'"),
    ("enabled = 1", "batching.enabled must be bool"),
    ("max_run_rows = true", "batching.max_run_rows must be int"),
    ("max_run_rows = 0", "batching.max_run_rows must be between 1"),
    ("max_queue_delay_us = -1", "batching.max_queue_delay_us must be between 0"),
    ("max_queue_delay_us = 2.5", "batching.max_queue_delay_us must be int"),
    ("max_queue_rows = 0", "batching.max_queue_rows must be between 1"),
    ("max_concurrent_batches = 0", "batching.max_concurrent_batches must be between 1"),
    ("exact = \"yes\"", "batching.exact must be bool"),
])
def test_a_bad_batching_section_names_the_file_and_key(tmp_path: Path, section, message):
    path = tmp_path / "config.toml"
    path.write_text(f"[batching]\n{section}\n")
    with pytest.raises(RepositoryError) as err:
        parse_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_batching_must_be_a_table(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text("batching = true\n")
    with pytest.raises(RepositoryError, match="batching must be a table"):
        parse_config(path)


def test_a_run_traces_each_sampled_requests_queue_wait_and_one_batch_span_linking_all():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from telemetry import Tracing
    from telemetry.w3c import TraceParent

    async def go() -> None:
        exporter = InMemorySpanExporter()
        tracing = Tracing(exporter=exporter, sample_ratio=0.0)
        tracing.start()
        h = Harness(policy(rows=3, delay=INF))
        h.batcher.tracing = tracing
        parents = [TraceParent(f"{i + 1:032x}", f"{i + 1:016x}", sampled=i != 1)
                   for i in range(3)]  # the second was not sampled by its edge
        tasks = []
        for i, parent in enumerate(parents):
            tasks.append(asyncio.create_task(h.batcher.infer(
                {"x": rows(1, i)}, ["y", "s"], h.time.now + 10, parent)))
            await settle()
            h.time.now += 0.002  # each waits a little less
        await h.release()
        assert [t.result().batch_rows for t in tasks] == [3, 3, 3]
        tracing.flush()
        spans = exporter.get_finished_spans()
        queue = [s for s in spans if s.name == "daemon queue"]
        assert sorted(s.parent.span_id for s in queue) == [1, 3]  # sampled ones only
        (batch,) = [s for s in spans if s.name == "daemon batch"]
        assert batch.parent.span_id == 1 and batch.context.trace_id == 1
        assert [ln.context.span_id for ln in batch.links] == [1, 2, 3]
        assert batch.attributes["falcon.batch.rows"] == 3
        assert batch.attributes["falcon.batch.requests"] == 3
        assert batch.attributes["falcon.model"] == "fake"
        assert all(q.end_time == batch.start_time for q in queue)
        waits_ms = sorted(round((q.end_time - q.start_time) / 1e6, 3) for q in queue)
        assert waits_ms == [2.0, 6.0]  # queued at 0 and 4 ms, the run started at 6 ms
        tracing.shutdown()
    run(go)
