"""What every batched game shares: the random sources and the game base class.

Contains:
    RandomSource: the protocol of a per-env random source (the only randomness the games use).
    TorchSource: draws from one ``torch.Generator`` on the env's device (normal use).
    NumpySource: one ``numpy.random.RandomState`` per env, called exactly as the real package
        calls its own (Note [Exact draws]); for the comparison with the ``minatar`` package.
    BatchedGame: the base class of the five games (state as tensors, one row per env).
    GRID: the side of the MinAtar grid (10).

Note [Exact draws]
    The real package draws every random number of an env from one ``numpy.random.RandomState``
    (``Environment.random``, which the game shares after ``Environment.seed``): one ``rand()`` per
    ``act`` for the sticky action, then the game's own draws (``randint``/``rand`` calls, some of
    them with a size) at fixed points of its order of events. The batched games ask their source
    for the same draws at the same points of the same order of events, each request carrying a
    *mask* of the envs that make this draw now (for instance, in Asterix, the envs whose spawn
    timer is up). A source may draw for every env and let the game ignore the unmasked rows
    (``TorchSource``: the distribution is what matters there), or draw only for the masked envs
    (``NumpySource``: it calls ``RandomState.rand``/``randint`` of env ``i``, with the very
    arguments the package uses, once per masked env, in the order of the requests). So a batched
    env with ``NumpySource(seeds)`` consumes, for each env, the stream of
    ``RandomState(seeds[i])`` value for value as the package's env seeded with ``seeds[i]`` does,
    and every observation, reward and termination equals the package's, step for step (what
    ``tests/envs/test_batched_minatar.py`` checks). Normal use draws from ``TorchSource``, whose
    numbers differ, but whose draws have the same distributions (uniform on [0, 1) and uniform
    integers), so the games are the same games in distribution too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

__all__ = ["GRID", "RandomSource", "TorchSource", "NumpySource", "BatchedGame"]

GRID = 10
"""The side of the MinAtar grid."""


class RandomSource(Protocol):
    """Per-env random draws; row ``i`` of every result belongs to env ``i`` (Note [Exact draws])."""

    def rand(self, mask: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Uniforms on [0, 1): shape ``(N,)``, or ``(N, size)``; only rows where ``mask`` is True are used."""
        ...

    def randint(
        self, mask: torch.Tensor, low: int, high: int | torch.Tensor, size: int | None = None
    ) -> torch.Tensor:
        """Integers uniform on ``[low, high)``: int64, shape ``(N,)`` or ``(N, size)``.

        ``high`` is an int or a per-env ``(N,)`` tensor (> low where ``mask``); only rows where
        ``mask`` is True are used.
        """
        ...

    def seed(self, seed: int | Sequence[int] | None) -> None:
        """Restart the stream(s) from ``seed`` (None: fresh entropy)."""
        ...


class TorchSource:
    """Draws for every env at once from one ``torch.Generator`` on ``device`` (masks are ignored).

    Seeding with ``seed`` fixes every draw of the vector; the numbers are not the package's
    (use :class:`NumpySource` for that), their distributions are.
    """

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.seed(seed)

    def seed(self, seed: int | Sequence[int] | None) -> None:
        """Restart from ``seed`` (a sequence, as gymnasium allows: its first entry; None: fresh entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed if isinstance(seed, (int, np.integer)) else seed[0]))

    def _shape(self, size: int | None) -> tuple[int, ...]:
        return (self.num_envs,) if size is None else (self.num_envs, size)

    def rand(self, mask: torch.Tensor, size: int | None = None) -> torch.Tensor:  # noqa: D102
        return torch.rand(self._shape(size), generator=self.generator, device=self.device)

    def randint(  # noqa: D102
        self, mask: torch.Tensor, low: int, high: int | torch.Tensor, size: int | None = None
    ) -> torch.Tensor:
        shape = self._shape(size)
        if isinstance(high, int):
            return torch.randint(low, high, shape, generator=self.generator, device=self.device)
        # Per-env upper bounds: floor(u * span) is uniform on [0, span) up to float rounding, which
        # the clamp keeps inside the range (spans here are at most 8).
        span = (high - low).clamp(min=1).to(torch.float64)
        if size is not None:
            span = span[:, None]
        u = torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float64)
        return low + torch.minimum((u * span).floor(), span - 1).to(torch.int64)

    def __getstate__(self) -> dict[str, object]:
        return {"num_envs": self.num_envs, "device": str(self.device), "state": self.generator.get_state()}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.num_envs = int(state["num_envs"])  # type: ignore[call-overload]
        self.device = torch.device(str(state["device"]))
        self.generator = torch.Generator(device=self.device)
        self.generator.set_state(state["state"])  # type: ignore[arg-type]


class NumpySource:
    """One ``numpy.random.RandomState`` per env, used exactly as the ``minatar`` package uses its own.

    ``seed(s)`` seeds env ``i`` with ``s + i``, which is what gymnasium's vector envs do to their
    sub-envs (``reset(seed=s)``), and the package turns into ``RandomState(s + i)``. Each request
    loops over the masked envs in Python (slow: for tests and reference runs, not for speed), and
    the results live on ``device``. Uniforms are float64, as numpy's.
    """

    def __init__(
        self, num_envs: int, device: torch.device | str = "cpu", seed: int | Sequence[int] | None = None
    ) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.states: list[np.random.RandomState] = []
        self.seed(seed)

    def seed(self, seed: int | Sequence[int] | None) -> None:
        """Seed env ``i`` with ``seed + i`` (an int), ``seed[i]`` (a sequence), or fresh entropy (None)."""
        if seed is None:
            self.states = [np.random.RandomState() for _ in range(self.num_envs)]
        elif isinstance(seed, (int, np.integer)):
            self.states = [np.random.RandomState(int(seed) + i) for i in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"NumpySource needs {self.num_envs} seeds, got {len(seed)}")
            self.states = [np.random.RandomState(int(s)) for s in seed]

    def _rows(self, mask: torch.Tensor) -> list[int]:
        return torch.nonzero(mask.cpu()).flatten().tolist()

    def rand(self, mask: torch.Tensor, size: int | None = None) -> torch.Tensor:  # noqa: D102
        shape = (self.num_envs,) if size is None else (self.num_envs, size)
        out = np.zeros(shape, np.float64)
        for i in self._rows(mask):
            out[i] = self.states[i].rand() if size is None else self.states[i].rand(size)
        return torch.from_numpy(out).to(self.device)

    def randint(  # noqa: D102
        self, mask: torch.Tensor, low: int, high: int | torch.Tensor, size: int | None = None
    ) -> torch.Tensor:
        shape = (self.num_envs,) if size is None else (self.num_envs, size)
        out = np.full(shape, low, np.int64)
        highs = None if isinstance(high, int) else high.cpu().tolist()
        for i in self._rows(mask):
            h = high if highs is None else int(highs[i])
            # The package's own forms: randint(n), randint(low=1, high=9), randint(1, 6, 8).
            out[i] = self.states[i].randint(low, h) if size is None else self.states[i].randint(low, h, size)
        return torch.from_numpy(out).to(self.device)


class BatchedGame:
    """Base class of the batched games: ``num_envs`` copies, state as tensors with one row per env.

    A game follows its package counterpart's order of events exactly (each module's docstring
    gives the rules); every draw goes through the :class:`RandomSource` it is given.

    Subclasses set ``name``, ``num_channels`` and ``minimal_actions``, and implement
    ``reset(mask, rng)`` (start new episodes in the masked envs), ``step(action, rng)`` (one
    ``act`` of the package in every env: (reward float32, terminal bool), each ``(N,)``) and
    ``planes()`` (the channels of the package's ``state()``, each ``(N, 10, 10)`` bool).
    """

    name: str = ""
    num_channels: int = 0
    minimal_actions: tuple[int, ...] = ()

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.ramping = ramping
        self.rows = torch.arange(num_envs, device=self.device)
        self.cols = torch.arange(GRID, device=self.device)

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        raise NotImplementedError

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        raise NotImplementedError

    def planes(self) -> list[torch.Tensor]:
        """The observation's channels in the package's order, each ``(N, 10, 10)`` bool."""
        raise NotImplementedError

    def observe(self) -> torch.Tensor:
        """``(N, 10, 10, C)`` bool: every env's ``state()`` as the package lays it out."""
        return torch.stack(self.planes(), dim=-1)

    def difficulty_ramp(self) -> torch.Tensor | None:
        """The package's ``difficulty_ramp()`` per env (int64 ``(N,)``), or None for games without one."""
        return None

    # Helpers shared by the games.
    def _full(self, value: int | bool, dtype: torch.dtype = torch.int64, *shape: int) -> torch.Tensor:
        return torch.full((self.num_envs, *shape), value, dtype=dtype, device=self.device)

    def _blank(self) -> torch.Tensor:
        return torch.zeros(
            (self.num_envs, GRID, GRID, self.num_channels), dtype=torch.bool, device=self.device
        )

    def _plane(self, y: torch.Tensor, x: torch.Tensor, on: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 10, 10)`` bool: cell ``(y[i, k], x[i, k])`` set per entity ``k`` of env ``i`` that is on.

        ``y``, ``x`` (and ``on``): ``(N,)`` (one entity per env) or ``(N, K)``; entities that are off
        may hold any coordinates (they are scattered into a spare cell that is dropped). Writing
        the same value twice is well defined, so duplicates need no care.
        """
        if y.dim() == 1:
            y, x = y[:, None], x[:, None]
            on = None if on is None else on[:, None]
        cell = y * GRID + x
        if on is not None:
            cell = torch.where(on, cell, GRID * GRID)
        plane = torch.zeros((self.num_envs, GRID * GRID + 1), dtype=torch.bool, device=self.device)
        plane.scatter_(1, cell, True)
        return plane[:, : GRID * GRID].view(self.num_envs, GRID, GRID)

    def _planes_of(
        self, entities: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]]
    ) -> list[torch.Tensor]:
        """All ``num_channels`` planes in one scatter: ``(channel, y, x, on)`` per group of entities.

        As :meth:`_plane`, for many channels at once (``y``, ``x``, ``on``: ``(N, K)`` or ``(N,)``).
        """
        size = GRID * GRID
        cells = []
        for channel, y, x, on in entities:
            if y.dim() == 1:
                y, x = y[:, None], x[:, None]
                on = None if on is None else on[:, None]
            cell = channel * size + y * GRID + x
            cells.append(cell if on is None else torch.where(on, cell, self.num_channels * size))
        flat = torch.zeros(
            (self.num_envs, self.num_channels * size + 1), dtype=torch.bool, device=self.device
        )
        flat.scatter_(1, torch.cat(cells, dim=1), True)
        return [
            flat[:, c * size : (c + 1) * size].view(self.num_envs, GRID, GRID)
            for c in range(self.num_channels)
        ]
