"""The batched MinAtar vector env: every sub-env of a game stepped at once, behind gymnasium's API.

Contains:
    GAMES: game name → batched game class.
    BatchedMinAtar: a ``gymnasium.vector.VectorEnv`` of ``num_envs`` copies of one game.
    game_name: ``breakout`` / ``MinAtar/Breakout-v0`` / ... → ``breakout``.

Note [Same as the sync vector env]
    ``BatchedMinAtar`` returns what plasticrl's ``make_vector_env`` returns for a MinAtar id
    (a ``SyncVectorEnv`` of ``MinAtarObservation(TimeLimit(minatar.gym.BaseEnv))``): channel-first
    float32 observations ``(N, C, 10, 10)``, float64 rewards, bool terminations and truncations
    (numpy), the full 6-action set (or the package's minimal set), sticky actions (one uniform per
    env and step, drawn before the game's own draws, as ``minatar.Environment.act`` does; the last
    action survives resets, as there), the time limit as ``TimeLimit`` applies it
    (``truncated = elapsed >= max_episode_steps``, terminated or not) and gymnasium's
    ``AutoresetMode.SAME_STEP``: an env whose episode ends is reset in the same step, its last
    observation is in ``infos["final_obs"]`` (valid where ``infos["_final_obs"]``; a full
    ``(N, C, 10, 10)`` array rather than gymnasium's object array, indexed the same way by
    ``plasticrl.envs.vector.final_observations``), and ``infos["final_info"]`` is empty as the
    package's infos are. ``reset(seed=s)`` seeds the random source with ``s`` (``NumpySource``:
    env ``i`` with ``s + i``, as gymnasium seeds sub-env ``i``).

    With ``source="numpy"`` the draws are the package's own (Note [Exact draws] in
    :mod:`plasticrl.envs.batched_minatar.common`), so a run equals the sync vector env's step for
    step; with ``source="torch"`` (default) they come from a torch generator on ``device``.

    ``tensors=True`` returns torch tensors on ``device`` instead (observations float32, rewards
    float32, flags bool), and records the episode statistics itself (``infos["episode"]`` with
    ``r``, ``l`` tensors and ``_episode``), since gymnasium's numpy wrapper cannot: the path for a
    learner on the same GPU. Off the CPU the ``final_obs`` keys come with every step (checking
    whether an episode ended would wait for the device); only Seaquest still reads a few numbers
    back per step (the lengths of its entity lists, to size them).

Note [Protocol transforms]
    The continual protocol's observation transforms apply as for the sub-env version:
    ``channels=10`` zero-pads the channels (what ``TaskSet`` does for the five games), and
    :meth:`BatchedMinAtar.set_observation_gather` installs a gather with the meaning of
    ``plasticrl.envs.gather`` (``permute_obs`` permutations, padding) on every env at once;
    :meth:`BatchedMinAtar.set_action_table` installs an action table (``permute_actions``: agent
    action ``a`` runs ``table[a]``). The padded space's bounds are [0, 1] in every channel
    (``TaskSet``'s are [0, 0] in channels no task of the set has); the observations are the same.

Note [Observation cost]
    Building an observation is most of a step's cost at 2048 envs: the games' planes are stacked
    as bytes and cast to float32 once. A gather that reorders whole planes and adds zero planes
    (``permute_obs`` in ``channels`` mode, the padding to 10 channels: the protocol's) is done by
    stacking the planes in that order, at no cost beyond the plain observation; any other gather
    (``spatial``, ``all``) is an ``index_select`` on the bytes (about 3.5× faster than advanced
    indexing on the floats, which the plain path cost 37 ms of a 70 ms step at 2048 envs).

Note [Task changes]
    :meth:`BatchedMinAtar.schedule_task` is how the vector-level non-stationarity
    (:class:`plasticrl.envs.batched_minatar.nonstationary.BatchedNonStationary`) changes the task
    of every env at once, as ``NonStationary(on="step")`` does in every sub-env of a sync vector
    env: the next step is truncated wherever it does not terminate, its ``final_obs`` are the old
    task's observations, and the same-step resets start the new game (each game keeps its own
    state object and, as each of a ``TaskSet``'s envs does, its own last actions for sticky
    actions), gather and action table. The games of one vector must fit its channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from plasticrl.envs.batched_minatar.asterix import Asterix
from plasticrl.envs.batched_minatar.breakout import Breakout
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, NumpySource, RandomSource, TorchSource
from plasticrl.envs.batched_minatar.freeway import Freeway
from plasticrl.envs.batched_minatar.seaquest import Seaquest
from plasticrl.envs.batched_minatar.space_invaders import SpaceInvaders

__all__ = ["GAMES", "BatchedMinAtar", "game_name"]

GAMES: dict[str, type[BatchedGame]] = {
    "asterix": Asterix,
    "breakout": Breakout,
    "freeway": Freeway,
    "seaquest": Seaquest,
    "space_invaders": SpaceInvaders,
}
_IDS = {f"MinAtar/{g.title().replace('_', '')}-v{v}": g for g in GAMES for v in (0, 1)}


def game_name(env_id: str) -> str:
    """The game of ``env_id``: a game name, or a ``MinAtar/<Game>-v0``/``-v1`` id."""
    if env_id in GAMES:
        return env_id
    if env_id in _IDS:
        return _IDS[env_id]
    raise ValueError(f"no batched MinAtar game {env_id!r}; choose from {sorted(GAMES)} or their MinAtar ids")


class BatchedMinAtar(gym.vector.VectorEnv):  # type: ignore[type-arg]
    """``num_envs`` copies of one MinAtar game, stepped at once as tensor operations.

    Args:
        game: a game name or MinAtar id (``-v1`` implies the minimal action set).
        num_envs: copies.
        sticky_action_prob: the package's sticky action probability.
        difficulty_ramping: the package's ``difficulty_ramping``.
        max_episode_steps: the time limit (None: none; plasticrl's default is 10 000).
        device: where the state lives and the games run.
        source: ``"torch"`` (a generator on ``device``) or ``"numpy"`` (the package's own draws,
            Note [Exact draws]); or a :class:`RandomSource` object.
        seed: the source's initial seed (``reset(seed=...)`` re-seeds it).
        channels: zero-pad the channels to this many (the protocol: 10); None: the game's.
        use_minimal_action_set: the package's minimal action set instead of the 6 actions.
        tensors: return torch tensors on ``device`` (Note [Same as the sync vector env]).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    _plane_order: tuple[int, ...] | None = None  # (a class default: older pickles lack it)

    def __init__(
        self,
        game: str,
        num_envs: int,
        *,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = 10_000,
        device: torch.device | str = "cpu",
        source: Literal["torch", "numpy"] | RandomSource = "torch",
        seed: int | None = None,
        channels: int | None = None,
        use_minimal_action_set: bool = False,
        tensors: bool = False,
    ) -> None:
        if game.endswith("-v1"):
            use_minimal_action_set = True
        name = game_name(game)
        self.device = torch.device(device)
        self.num_envs = int(num_envs)
        self._ramping = difficulty_ramping
        self.game: BatchedGame = GAMES[name](self.num_envs, self.device, ramping=difficulty_ramping)
        self._games: dict[str, BatchedGame] = {name: self.game}  # every game played so far
        self._last_actions: dict[str, torch.Tensor] = {}  # a game's last actions while it is not played
        self._pending: tuple[str | None, np.ndarray | None, Any] | None = None  # (Note [Task changes])
        if source == "torch":
            self.rng: RandomSource = TorchSource(self.num_envs, self.device, seed)
        elif source == "numpy":
            self.rng = NumpySource(self.num_envs, self.device, seed)
        elif isinstance(source, str):
            raise ValueError(f"source must be 'torch', 'numpy' or a RandomSource, got {source!r}")
        else:
            self.rng = source
        self.sticky_action_prob = float(sticky_action_prob)
        self.max_episode_steps = max_episode_steps
        self.tensors = tensors
        c = self.game.num_channels
        self.channels = c if channels is None else int(channels)
        if self.channels < c:
            raise ValueError(f"channels={channels} is fewer than {name}'s {c}")
        self._plain_space = gym.spaces.Box(0.0, 1.0, (self.channels, GRID, GRID), np.float32)
        self.single_observation_space = self._plain_space
        self._gather: torch.Tensor | None = None
        self._minimal = use_minimal_action_set
        actions = self.game.minimal_actions if use_minimal_action_set else tuple(range(6))
        self._actions = torch.tensor(actions, dtype=torch.int64, device=self.device)
        self._base_actions = self._actions
        self.single_action_space = gym.spaces.Discrete(len(actions))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.last_action = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._all = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._returns = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self.spec = None
        self.render_mode = None
        self.closed = False

    # Protocol transforms (Note [Protocol transforms]).
    def set_observation_gather(self, index: np.ndarray | None) -> None:
        """From the next observation on, return ``gather(plain, index)`` per env (None: the plain one).

        ``plain`` is one env's channel-first (padded) observation; ``index`` has the meaning of
        ``plasticrl.envs.gather.gather`` (``plain.size`` picks a zero cell).
        """
        from plasticrl.envs.gather import check_gather_index, gathered_space

        self._plane_order = None
        if index is None:
            self._gather = None
            self.single_observation_space = self._plain_space
        else:
            index = check_gather_index(index, int(np.prod(self._plain_space.shape)))
            self._gather = torch.as_tensor(index.reshape(-1), dtype=torch.int64, device=self.device)
            self._gather_shape = tuple(index.shape)
            self._plane_order = _plane_order(index, self.channels)
            self.single_observation_space = gathered_space(self._plain_space, index)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def set_action_table(self, table: np.ndarray | list[int] | None) -> None:
        """Agent action ``a`` runs action ``table[a]`` of this env's action set (None: itself)."""
        if table is None:
            self._actions = self._base_actions
            return
        lut = torch.as_tensor(np.asarray(table), dtype=torch.int64, device=self.device)
        if lut.shape != self._base_actions.shape or sorted(lut.tolist()) != list(range(len(lut))):
            raise ValueError(f"an action table must permute {len(self._base_actions)} actions, got {table!r}")
        self._actions = self._base_actions[lut]

    def schedule_task(
        self,
        game: str | None = None,
        gather: np.ndarray | None = None,
        action_table: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """End every episode at the next step and start the next ones under a new task.

        The next :meth:`step` is truncated in every env that it does not terminate (as
        ``NonStationary`` with ``on="step"`` does), its final observations are the old task's, and
        every env is then reset under ``game`` (None: the current one), the observation
        ``gather`` and the ``action_table`` given (None: none), as :meth:`set_observation_gather`
        and :meth:`set_action_table` define them (Note [Task changes]). A :meth:`reset` before
        that step starts the task at once.
        """
        if game is not None:
            game = game_name(game)
            if GAMES[game].num_channels > self.channels:
                raise ValueError(f"{game} has {GAMES[game].num_channels} channels, more than {self.channels}")
            if self._minimal and GAMES[game].minimal_actions != self.game.minimal_actions:
                raise ValueError("games with different minimal action sets cannot share one action space")
        self._pending = (game, gather, None if action_table is None else np.asarray(action_table))

    def _start_pending_task(self) -> None:
        """Install the scheduled task (every env is about to be reset)."""
        assert self._pending is not None
        game, gather, table = self._pending
        self._pending = None
        if game is not None and game != self.game.name:
            self._last_actions[self.game.name] = self.last_action
            if game not in self._games:
                self._games[game] = GAMES[game](self.num_envs, self.device, ramping=self._ramping)
            self.game = self._games[game]
            self.last_action = self._last_actions.pop(game, torch.zeros_like(self.last_action))
        self.set_observation_gather(gather)
        self.set_action_table(table)

    # Observations.
    def raw_observation(self) -> torch.Tensor:
        """Every env's frame as the package's ``state()`` gives it: ``(N, 10, 10, C)`` bool."""
        return self.game.observe()

    def _observation(self) -> torch.Tensor:
        """The observation of every env (Note [Observation cost])."""
        planes = self.game.planes()
        order = self._plane_order
        if order is not None or self.channels > len(planes):
            blank = torch.zeros_like(planes[0])
            planes = planes + [blank] * (self.channels - len(planes))
            if order is not None:  # a permutation of whole planes, with zero planes: no gather
                planes = [blank if c < 0 else planes[c] for c in order]
        # bool -> uint8 (a view) -> float32 casts ~8x faster on CPU than bool -> float32.
        frame = torch.stack(planes, dim=1).view(torch.uint8)
        if self._gather is not None and order is None:  # the generic gather, on bytes
            flat = torch.cat((frame.flatten(1), frame.new_zeros((self.num_envs, 1))), dim=1)
            frame = flat.index_select(1, self._gather).reshape(self.num_envs, *self._gather_shape)
        return frame.to(torch.float32)

    def _out(self, value: torch.Tensor, dtype: Any) -> Any:
        return value if self.tensors else value.cpu().numpy().astype(dtype, copy=False)

    # The vector env API.
    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a new episode in every env (re-seeding the source when ``seed`` is given)."""
        if seed is not None:
            self.rng.seed(seed)  # type: ignore[arg-type]
        if self._pending is not None:  # a scheduled task starts with these episodes
            self._start_pending_task()
        self.game.reset(self._all, self.rng)
        self.elapsed.zero_()
        self._returns.zero_()
        return self._out(self._observation(), np.float32), {}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """One step of every env; same-step autoreset (Note [Same as the sync vector env])."""
        a = torch.as_tensor(np.asarray(actions) if not torch.is_tensor(actions) else actions)
        a = self._actions[a.to(self.device, torch.int64)]
        sticky = self.rng.rand(self._all) < self.sticky_action_prob
        a = torch.where(sticky, self.last_action, a)
        self.last_action = a
        reward, terminated = self.game.step(a, self.rng)
        self.elapsed += 1
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = self.elapsed >= self.max_episode_steps
        if self._pending is not None:  # a task change ends every episode here (Note [Task changes])
            truncated = truncated | ~terminated
        done = terminated | truncated
        lengths = self.elapsed.clone() if self.tensors else None
        obs = self._observation()
        infos: dict[str, Any] = {}
        if self.device.type != "cpu" or bool(done.any()):
            infos["final_obs"] = self._out(obs, np.float32)
            infos["_final_obs"] = self._out(done, np.bool_)
            infos["final_info"] = {}
            infos["_final_info"] = infos["_final_obs"]
            if self._pending is not None:
                self._start_pending_task()
            self.game.reset(done, self.rng)
            self.elapsed = torch.where(done, 0, self.elapsed)
            obs = self._observation()  # envs that did not reset are unchanged by the reset
        if self.tensors:
            self._returns += reward
            infos["episode"] = {"r": self._returns.clone(), "l": lengths}
            infos["_episode"] = done
            self._returns = torch.where(done, 0.0, self._returns)
            return obs, reward, terminated, truncated, infos
        return (
            obs.cpu().numpy(),
            reward.cpu().numpy().astype(np.float64),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            infos,
        )

    def difficulty_ramp(self) -> torch.Tensor | None:
        """Every env's ``difficulty_ramp()`` (None for games that do not ramp)."""
        return self.game.difficulty_ramp()

    def close_extras(self, **kwargs: Any) -> None:  # noqa: D102
        pass


def _plane_order(index: np.ndarray, channels: int) -> tuple[int, ...] | None:
    """The plain channel each output channel of ``index`` copies whole (-1: a zero plane), if so.

    None when ``index`` is not such a reordering of whole ``GRID × GRID`` planes (a spatial or
    full permutation): that takes the generic gather.
    """
    size = channels * GRID * GRID
    if index.ndim != 3 or index.shape[1:] != (GRID, GRID):
        return None
    cells = np.arange(GRID * GRID)
    order = []
    for plane in index.reshape(index.shape[0], -1):
        if (plane == size).all():
            order.append(-1)
        elif plane[0] % (GRID * GRID) == 0 and np.array_equal(plane, plane[0] + cells):
            order.append(int(plane[0]) // (GRID * GRID))
        else:
            return None
    return tuple(order)
