"""Asterix, batched: every env of a vector in one set of tensor operations.

The rules (MinAtar's Asterix): the player moves in the four directions (rows 1-8); enemies and
gold enter from the sides, one per row (slot ``k`` is row ``k + 1``). Per step, in this order:

1. If the spawn timer is 0: draw ``lr = rand() < 1/2`` (enter at column 0 moving right, else at
   column 9 moving left) and ``gold = rand() < 1/3``; if some slot is free, take the
   ``randint(#free)``-th free slot (in slot order); the spawn timer restarts at the spawn speed.
2. The player moves: left (1), up (2), right (3), down (4), within columns 0-9 and rows 1-8.
3. An entity on the player's cell: gold is collected (+1, removed), an enemy ends the episode.
4. If the move timer is 0 it restarts at the move speed and every entity moves one column in its
   direction; one that leaves the grid is removed; the player's cell is checked as in 3.
5. Both timers count down by 1.
6. Difficulty ramp (when on, while the spawn or move speed is above 1): the ramp timer counts
   down from 100; when it goes below 0 it restarts at 100, the move speed drops by 1 at odd ramp
   indices (while above 1), the spawn speed drops by 1 (while above 1) and the ramp index grows.

A reset puts the player at (5, 5), clears the slots, spawn speed and timer 10, move speed and
timer 5, ramp timer 100, ramp index 0. Channels: player, enemy, trail (the cell behind an entity,
when inside the grid), gold. Minimal actions: no-op, left, up, right, down.
"""

from __future__ import annotations

import torch
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, RandomSource

__all__ = ["Asterix"]

RAMP_INTERVAL = 100
INIT_SPAWN_SPEED = 10
INIT_MOVE_INTERVAL = 5
SLOTS = 8


class Asterix(BatchedGame):
    """Batched MinAtar Asterix (module docstring: the rules)."""

    name = "asterix"
    num_channels = 4
    minimal_actions = (0, 1, 2, 3, 4)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        super().__init__(num_envs, device, ramping)
        self.ent_y = torch.arange(1, SLOTS + 1, device=self.device).expand(num_envs, SLOTS)
        self.ent_x = self._full(0, torch.int64, SLOTS)
        self.ent_on = self._full(False, torch.bool, SLOTS)
        self.ent_lr = self._full(False, torch.bool, SLOTS)
        self.ent_gold = self._full(False, torch.bool, SLOTS)
        self.player_x = self._full(5)
        self.player_y = self._full(5)
        self.spawn_speed = self._full(INIT_SPAWN_SPEED)
        self.spawn_timer = self._full(INIT_SPAWN_SPEED)
        self.move_speed = self._full(INIT_MOVE_INTERVAL)
        self.move_timer = self._full(INIT_MOVE_INTERVAL)
        self.ramp_timer = self._full(RAMP_INTERVAL)
        self.ramp_index = self._full(0)
        self.terminal = self._full(False, torch.bool)

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        m = mask
        self.player_x = torch.where(m, 5, self.player_x)
        self.player_y = torch.where(m, 5, self.player_y)
        self.ent_on = self.ent_on & ~m[:, None]
        self.spawn_speed = torch.where(m, INIT_SPAWN_SPEED, self.spawn_speed)
        self.spawn_timer = torch.where(m, INIT_SPAWN_SPEED, self.spawn_timer)
        self.move_speed = torch.where(m, INIT_MOVE_INTERVAL, self.move_speed)
        self.move_timer = torch.where(m, INIT_MOVE_INTERVAL, self.move_timer)
        self.ramp_timer = torch.where(m, RAMP_INTERVAL, self.ramp_timer)
        self.ramp_index = torch.where(m, 0, self.ramp_index)
        self.terminal = self.terminal & ~m

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        live = ~self.terminal
        on, x, lr, gold = self.ent_on, self.ent_x, self.ent_lr, self.ent_gold

        # 1. Spawn.
        spawn = live & (self.spawn_timer == 0)
        new_lr = self.rng_lt(rng, spawn, 1 / 2)
        new_gold = self.rng_lt(rng, spawn, 1 / 3)
        free = ~on
        n_free = free.sum(dim=1)
        place = spawn & (n_free > 0)
        k = rng.randint(place, 0, n_free.clamp(min=1))
        slot = place[:, None] & free & (torch.cumsum(free, dim=1) - 1 == k[:, None])
        on = on | slot
        x = torch.where(slot, torch.where(new_lr, 0, GRID - 1)[:, None], x)
        lr = torch.where(slot, new_lr[:, None], lr)
        gold = torch.where(slot, new_gold[:, None], gold)
        spawn_timer = torch.where(spawn, self.spawn_speed, self.spawn_timer)

        # 2. Player.
        px = torch.where(action == 1, (self.player_x - 1).clamp(min=0), self.player_x)
        px = torch.where(action == 3, (px + 1).clamp(max=GRID - 1), px)
        py = torch.where(action == 2, (self.player_y - 1).clamp(min=1), self.player_y)
        py = torch.where(action == 4, (py + 1).clamp(max=8), py)

        # 3. Contact.
        at = on & (x == px[:, None]) & (self.ent_y == py[:, None])
        reward = (at & gold).sum(dim=1)
        terminal = (at & ~gold).any(dim=1)
        on = on & ~(at & gold)

        # 4. Movement.
        moving = self.move_timer == 0
        move_timer = torch.where(moving, self.move_speed, self.move_timer)
        mv = on & moving[:, None]
        x = torch.where(mv, x + torch.where(lr, 1, -1), x)
        out = mv & ((x < 0) | (x > GRID - 1))
        on = on & ~out
        at = mv & ~out & (x == px[:, None]) & (self.ent_y == py[:, None])
        reward = reward + (at & gold).sum(dim=1)
        terminal = terminal | (at & ~gold).any(dim=1)
        on = on & ~(at & gold)

        # 5. Timers.
        spawn_timer = spawn_timer - 1
        move_timer = move_timer - 1

        # 6. Difficulty ramp.
        spawn_speed, move_speed = self.spawn_speed, self.move_speed
        ramp_timer, ramp_index = self.ramp_timer, self.ramp_index
        if self.ramping:
            ramps = (spawn_speed > 1) | (move_speed > 1)
            count = ramps & (ramp_timer >= 0)
            bump = ramps & ~count
            move_speed = torch.where(
                bump & (move_speed > 1) & (ramp_index % 2 == 1), move_speed - 1, move_speed
            )
            spawn_speed = torch.where(bump & (spawn_speed > 1), spawn_speed - 1, spawn_speed)
            ramp_index = torch.where(bump, ramp_index + 1, ramp_index)
            ramp_timer = torch.where(count, ramp_timer - 1, torch.where(bump, RAMP_INTERVAL, ramp_timer))

        m = live[:, None]
        self.ent_on = torch.where(m, on, self.ent_on)
        self.ent_x = torch.where(m, x, self.ent_x)
        self.ent_lr = torch.where(m, lr, self.ent_lr)
        self.ent_gold = torch.where(m, gold, self.ent_gold)
        self.player_x = torch.where(live, px, self.player_x)
        self.player_y = torch.where(live, py, self.player_y)
        self.spawn_timer = torch.where(live, spawn_timer, self.spawn_timer)
        self.move_timer = torch.where(live, move_timer, self.move_timer)
        self.spawn_speed = torch.where(live, spawn_speed, self.spawn_speed)
        self.move_speed = torch.where(live, move_speed, self.move_speed)
        self.ramp_timer = torch.where(live, ramp_timer, self.ramp_timer)
        self.ramp_index = torch.where(live, ramp_index, self.ramp_index)
        self.terminal = self.terminal | (live & terminal)
        return (reward * live).to(torch.float32), self.terminal.clone()

    @staticmethod
    def rng_lt(rng: RandomSource, mask: torch.Tensor, p: float) -> torch.Tensor:
        """``rand() < p`` for the masked envs."""
        return rng.rand(mask) < p

    def planes(self) -> list[torch.Tensor]:  # noqa: D102
        player = self._plane(self.player_y, self.player_x)
        enemy = self._plane(self.ent_y, self.ent_x, self.ent_on & ~self.ent_gold)
        back_x = self.ent_x - torch.where(self.ent_lr, 1, -1)
        inside = (back_x >= 0) & (back_x <= GRID - 1)
        trail = self._plane(self.ent_y, back_x, self.ent_on & inside)
        gold = self._plane(self.ent_y, self.ent_x, self.ent_on & self.ent_gold)
        return [player, enemy, trail, gold]

    def difficulty_ramp(self) -> torch.Tensor:  # noqa: D102
        return self.ramp_index.clone()
