"""TensorPrefetch: background results are used only while their tensors and keys are unchanged."""

from __future__ import annotations

import threading

import pytest
import torch
from plasticrl.plasticity.prefetch import TensorPrefetch
from torch import Tensor


class Recorder:
    """``fn(t, k) = t * k`` that records which thread computed each value."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self, t: Tensor, k: float) -> Tensor:
        self.threads.append(threading.current_thread().name)
        return t * k


def _on_caller(recorder: Recorder) -> int:
    return sum(name == threading.current_thread().name for name in recorder.threads)


def test_valid_results_come_from_the_worker_once() -> None:
    fn = Recorder()
    prefetch = TensorPrefetch(fn)
    a, b = torch.ones(2), torch.full((3,), 2.0)
    prefetch.submit([a, b], [3.0, 0.5])
    assert prefetch.pending
    compute = prefetch.take()
    assert not prefetch.pending
    assert torch.equal(compute(a, 3.0), a * 3.0) and torch.equal(compute(b, 0.5), b * 0.5)
    assert _on_caller(fn) == 0 and len(fn.threads) == 2  # both computed on the worker
    compute(a, 3.0)  # each result is used once: a second call computes now
    assert _on_caller(fn) == 1


@pytest.mark.parametrize("change", ["in_place", "key", "discard", "rebound"])
def test_changes_recompute_on_the_caller(change: str) -> None:
    fn = Recorder()
    prefetch = TensorPrefetch(fn)
    w = torch.ones(2)
    prefetch.submit([w], [2.0])
    key = 2.0
    if change == "in_place":
        w.mul_(3.0)  # bumps w._version
    elif change == "key":
        key = 5.0
    elif change == "discard":
        w.data[0] = 7.0  # invisible to _version, hence the discard
        prefetch.discard()
    else:
        w.data = torch.zeros(2)  # a new storage: another data_ptr
    compute = prefetch.take()
    assert torch.equal(compute(w, key), w * key)
    assert _on_caller(fn) == 1


def test_a_failure_on_the_worker_is_raised_by_the_synchronous_call() -> None:
    def fail(t: Tensor, k: float) -> Tensor:
        raise ArithmeticError("boom")

    prefetch = TensorPrefetch(fail)
    w = torch.ones(1)
    prefetch.submit([w], [1.0])
    compute = prefetch.take()
    with pytest.raises(ArithmeticError, match="boom"):
        compute(w, 1.0)


def test_nothing_to_submit_leaves_nothing_pending() -> None:
    prefetch = TensorPrefetch(Recorder())
    prefetch.submit([], [])
    assert not prefetch.pending
    w = torch.ones(1)
    assert torch.equal(prefetch.take()(w, 4.0), w * 4.0)
