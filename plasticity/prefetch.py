"""Compute per-tensor values on a background thread, valid while their tensors are unchanged.

Contains:
    TensorPrefetch: submit ``fn(tensor, key)`` for some tensors to one background thread; take the
        results back later, each used only if its tensor and key did not change in between.

Used by :class:`plasticrl.plasticity.adamo.AdamO` to compute the next step's ∇R while the trainer
does other work (Note [Isometry prefetch] there says when that pays).

Note [Prefetch validity]
    A result is used only if, at use, its tensor has the ``_version`` (bumped by every in-place op:
    ``load_state_dict``, ``p.copy_``, ``p[idx] = ...``, an optimizer's own updates) and the
    ``data_ptr`` it had at submission, and the caller asks for it with the same key; anything else
    is computed again on the caller's thread, so the values are always what the synchronous call
    gives. Writes through ``p.data`` bump no ``_version``: code that edits tensors that way must
    call :meth:`TensorPrefetch.discard`. An exception on the worker is not raised there: the
    synchronous recomputation raises it where it belongs. Tensors are detached on the submitting
    thread, so the worker holds the current storage even if ``p.data`` is rebound later and never
    touches autograd metadata.

Note [One worker thread]
    Every prefetch of the process shares one worker thread (one spare core is what it can use),
    created on first use. A forked child has no copy of it and starts its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from torch import Tensor

__all__ = ["TensorPrefetch"]

K = TypeVar("K")


@dataclass
class _Submitted(Generic[K]):
    """A submitted computation and the fingerprints of the tensors it is valid for."""

    future: Future[list[Tensor]]
    tensors: list[Tensor]
    keys: list[K]
    versions: list[int]
    data_ptrs: list[int]


class TensorPrefetch(Generic[K]):
    """At most one pending background computation of ``fn(tensor, key)`` over a list of tensors.

    Not part of any state: holders keep it out of ``state_dict`` and pickles (a copy starts with
    none pending). Validity rules: Note [Prefetch validity].

    Args:
        fn: computes a new tensor from a tensor and a key; must not modify its input.

    Example:
        >>> import torch
        >>> prefetch = TensorPrefetch(lambda t, k: t * k)
        >>> w = torch.ones(2)
        >>> prefetch.submit([w], [3.0])
        >>> compute = prefetch.take()  # waits for the worker
        >>> compute(w, 3.0).tolist(), prefetch.pending
        ([3.0, 3.0], False)
    """

    def __init__(self, fn: Callable[[Tensor, K], Tensor]) -> None:
        self._fn = fn
        self._submitted: _Submitted[K] | None = None

    @property
    def pending(self) -> bool:
        """Whether a computation was submitted and not yet taken or discarded."""
        return self._submitted is not None

    def submit(self, tensors: Sequence[Tensor], keys: Sequence[K]) -> None:
        """Start ``fn(t, k)`` for every pair on the worker thread, replacing any pending one."""
        if not tensors:
            self._submitted = None
            return
        detached = [t.detach() for t in tensors]
        fn = self._fn
        future = _submit(lambda: [fn(t, k) for t, k in zip(detached, keys, strict=True)])
        self._submitted = _Submitted(
            future, list(tensors), list(keys), [t._version for t in tensors], [t.data_ptr() for t in tensors]
        )

    def take(self) -> Callable[[Tensor, K], Tensor]:
        """Wait for the pending computation; return ``fn`` that answers from it where still valid.

        Each valid result is used once; every other call computes ``fn(tensor, key)`` now.
        """
        submitted, self._submitted = self._submitted, None
        ready: dict[Tensor, tuple[K, Tensor]] = {}
        if submitted is not None:
            try:
                results = submitted.future.result()
            except Exception:  # recomputed synchronously below, which raises where it belongs
                results = []
            for t, key, version, ptr, value in zip(
                submitted.tensors,
                submitted.keys,
                submitted.versions,
                submitted.data_ptrs,
                results,
                strict=False,
            ):
                if t._version == version and t.data_ptr() == ptr:
                    ready[t] = (key, value)
        fn = self._fn

        def compute(tensor: Tensor, key: K) -> Tensor:
            hit = ready.pop(tensor, None)
            return hit[1] if hit is not None and hit[0] == key else fn(tensor, key)

        return compute

    def discard(self) -> None:
        """Drop the pending computation, e.g. after editing its tensors through ``.data``."""
        self._submitted = None


_worker: ThreadPoolExecutor | None = None
_worker_lock = threading.Lock()


def _submit(job: Callable[[], list[Tensor]]) -> Future[list[Tensor]]:
    """Run ``job`` on the process-wide worker thread (Note [One worker thread])."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plasticrl-prefetch")
        return _worker.submit(job)


def _forget_worker_after_fork() -> None:
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker_after_fork)
