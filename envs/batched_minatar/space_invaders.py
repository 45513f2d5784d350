"""Space Invaders, batched: every env of a vector in one set of tensor operations.

The rules (MinAtar's Space Invaders): a cannon on the bottom row, a block of aliens (rows 0-3,
columns 2-7 at the start of each wave), bullets one cell per step. Per step, in this order:

1. Fire (action 5) puts a bullet in the cannon's cell if the shot timer is 0 (which restarts it
   at 5); otherwise left (1) / right (3) move the cannon within the grid.
2. Friendly bullets move up one row (those on row 0 vanish); enemy bullets move down one row
   (those on row 9 vanish); an enemy bullet on the cannon's cell ends the episode.
3. An alien on the cannon's cell ends the episode. If the alien move timer is 0 it restarts at
   min(#aliens, move interval) and the aliens move: when one is in the edge column they move
   towards, they reverse direction and shift down one row (ending the episode if one was on the
   bottom row; that row comes back as row 0, as a roll does), otherwise they shift one column;
   an alien then on the cannon's cell ends the episode.
4. If the alien shot timer is 0 it restarts at 10 and the lowest alien of the column nearest
   to the cannon (ties: the left one) fires: an enemy bullet in its cell.
5. An alien on a friendly bullet's cell: +1 each, both removed.
6. The shot timer counts down to 0, the alien timers by 1. No aliens left: a new wave; with
   difficulty ramping the move interval drops by 1 (while above 6) and the ramp index grows.

A reset: cannon at column 5, no bullets, a full wave moving left, move interval 12 (its timer
too), shot timer 10, ramp index 0. No random draws besides sticky actions. Channels: cannon,
alien, alien_left / alien_right (the aliens again, in the channel of their direction), friendly
bullet, enemy bullet. Minimal actions: no-op, left, right, fire.
"""

from __future__ import annotations

import torch
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, RandomSource

__all__ = ["SpaceInvaders"]

SHOT_COOL_DOWN = 5
ENEMY_MOVE_INTERVAL = 12
ENEMY_SHOT_INTERVAL = 10


class SpaceInvaders(BatchedGame):
    """Batched MinAtar Space Invaders (module docstring: the rules)."""

    name = "space_invaders"
    num_channels = 6
    minimal_actions = (0, 1, 3, 5)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        super().__init__(num_envs, device, ramping)
        d = self.device
        self._wave = torch.zeros((GRID, GRID), dtype=torch.bool, device=d)
        self._wave[0:4, 2:8] = True
        # Column search order by distance to each cannon position, ties to the left (a stable sort).
        order = [sorted(range(GRID), key=lambda c: (abs(c - p), c)) for p in range(GRID)]  # noqa: B023
        self._order = torch.tensor(order, dtype=torch.int64, device=d)  # (pos, rank) → column
        self.pos = self._full(5)
        self.f_bullets = self._full(False, torch.bool, GRID, GRID)
        self.e_bullets = self._full(False, torch.bool, GRID, GRID)
        self.aliens = self._wave.expand(num_envs, GRID, GRID).clone()
        self.alien_dir = self._full(-1)
        self.move_interval = self._full(ENEMY_MOVE_INTERVAL)
        self.alien_move_timer = self._full(ENEMY_MOVE_INTERVAL)
        self.alien_shot_timer = self._full(ENEMY_SHOT_INTERVAL)
        self.ramp_index = self._full(0)
        self.shot_timer = self._full(0)
        self.terminal = self._full(False, torch.bool)

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        m, g = mask, mask[:, None, None]
        self.pos = torch.where(m, 5, self.pos)
        self.f_bullets = self.f_bullets & ~g
        self.e_bullets = self.e_bullets & ~g
        self.aliens = torch.where(g, self._wave, self.aliens)
        self.alien_dir = torch.where(m, -1, self.alien_dir)
        self.move_interval = torch.where(m, ENEMY_MOVE_INTERVAL, self.move_interval)
        self.alien_move_timer = torch.where(m, ENEMY_MOVE_INTERVAL, self.alien_move_timer)
        self.alien_shot_timer = torch.where(m, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        self.ramp_index = torch.where(m, 0, self.ramp_index)
        self.shot_timer = torch.where(m, 0, self.shot_timer)
        self.terminal = self.terminal & ~m

    def _at_cannon(self, grid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return grid[self.rows, GRID - 1, pos]

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        live = ~self.terminal
        rows = self.rows
        # 1. Cannon.
        fire = (action == 5) & (self.shot_timer == 0)
        pos = torch.where(~fire & (action == 1), (self.pos - 1).clamp(min=0), self.pos)
        pos = torch.where(~fire & (action == 3), (pos + 1).clamp(max=GRID - 1), pos)
        shot_timer = torch.where(fire, SHOT_COOL_DOWN, self.shot_timer)
        f_bullets = self.f_bullets.clone()
        f_bullets[rows, GRID - 1, pos] |= fire

        # 2. Bullets.
        f_bullets = torch.cat((f_bullets[:, 1:], torch.zeros_like(f_bullets[:, :1])), dim=1)
        e_bullets = torch.cat((torch.zeros_like(self.e_bullets[:, :1]), self.e_bullets[:, :-1]), dim=1)
        terminal = self._at_cannon(e_bullets, pos)

        # 3. Aliens.
        aliens = self.aliens
        terminal = terminal | self._at_cannon(aliens, pos)
        moving = self.alien_move_timer == 0
        count = aliens.flatten(1).sum(dim=1)
        alien_move_timer = torch.where(
            moving, torch.minimum(count, self.move_interval), self.alien_move_timer
        )
        left_edge = aliens[:, :, 0].any(dim=1)
        right_edge = aliens[:, :, GRID - 1].any(dim=1)
        turn = moving & ((left_edge & (self.alien_dir < 0)) | (right_edge & (self.alien_dir > 0)))
        shift = moving & ~turn
        alien_dir = torch.where(turn, -self.alien_dir, self.alien_dir)
        terminal = terminal | (turn & aliens[:, GRID - 1, :].any(dim=1))
        down = torch.roll(aliens, 1, dims=1)
        sideways = torch.where(
            (self.alien_dir > 0)[:, None, None], torch.roll(aliens, 1, dims=2), torch.roll(aliens, -1, dims=2)
        )
        aliens = torch.where(turn[:, None, None], down, torch.where(shift[:, None, None], sideways, aliens))
        terminal = terminal | (moving & self._at_cannon(aliens, pos))

        # 4. Alien shot.
        shoot = self.alien_shot_timer == 0
        alien_shot_timer = torch.where(shoot, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        occupied = aliens.any(dim=1)  # (N, column)
        ranked = occupied.gather(1, self._order[pos])  # by distance rank
        first = torch.argmax(ranked.to(torch.int64), dim=1)  # first rank with an alien
        column = self._order[pos, first]
        col_aliens = aliens[rows, :, column]  # (N, row)
        lowest = GRID - 1 - torch.argmax(col_aliens.flip(1).to(torch.int64), dim=1)
        has = ranked.any(dim=1)
        e_bullets[rows, lowest, column] |= shoot & has

        # 5. Kills.
        kills = aliens & f_bullets
        reward = kills.flatten(1).sum(dim=1)
        aliens = aliens & ~kills
        f_bullets = f_bullets & ~kills

        # 6. Timers and waves.
        shot_timer = shot_timer - (shot_timer > 0).to(torch.int64)
        alien_move_timer = alien_move_timer - 1
        alien_shot_timer = alien_shot_timer - 1
        cleared = ~aliens.flatten(1).any(dim=1)
        move_interval, ramp_index = self.move_interval, self.ramp_index
        if self.ramping:
            harder = cleared & (move_interval > 6)
            move_interval = torch.where(harder, move_interval - 1, move_interval)
            ramp_index = torch.where(harder, ramp_index + 1, ramp_index)
        aliens = torch.where(cleared[:, None, None], aliens | self._wave, aliens)

        g = live[:, None, None]
        self.pos = torch.where(live, pos, self.pos)
        self.shot_timer = torch.where(live, shot_timer, self.shot_timer)
        self.f_bullets = torch.where(g, f_bullets, self.f_bullets)
        self.e_bullets = torch.where(g, e_bullets, self.e_bullets)
        self.aliens = torch.where(g, aliens, self.aliens)
        self.alien_dir = torch.where(live, alien_dir, self.alien_dir)
        self.alien_move_timer = torch.where(live, alien_move_timer, self.alien_move_timer)
        self.alien_shot_timer = torch.where(live, alien_shot_timer, self.alien_shot_timer)
        self.move_interval = torch.where(live, move_interval, self.move_interval)
        self.ramp_index = torch.where(live, ramp_index, self.ramp_index)
        self.terminal = self.terminal | (live & terminal)
        return (reward * live).to(torch.float32), self.terminal.clone()

    def planes(self) -> list[torch.Tensor]:  # noqa: D102
        left = (self.alien_dir < 0)[:, None, None]
        cannon = self._plane(torch.full_like(self.pos, GRID - 1), self.pos)
        return [cannon, self.aliens, self.aliens & left, self.aliens & ~left, self.f_bullets, self.e_bullets]

    def difficulty_ramp(self) -> torch.Tensor:  # noqa: D102
        return self.ramp_index.clone()
