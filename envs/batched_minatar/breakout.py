"""Breakout, batched: every env of a vector in one set of tensor operations.

The rules (MinAtar's Breakout, Young & Tian 2019): a paddle on the bottom row, a ball moving
along diagonals, three rows of bricks (rows 1-3). Per step, in this order:

1. The paddle moves one cell left (action 1) or right (action 3), within the grid.
2. The ball moves one diagonal cell in its direction (0: up-left, 1: up-right, 2: down-right,
   3: down-left). Leaving the grid sideways clamps it to the edge column and mirrors the
   direction horizontally; then, leaving at the top clamps it to row 0 and mirrors vertically;
   otherwise, entering a brick cell (when the previous step did not strike) gives +1, removes the
   brick, keeps the ball on its previous row and mirrors vertically; a brick entered right after
   a strike is passed through; otherwise, reaching the bottom row: when no bricks are left all
   three rows come back; the ball bounces back up (mirrored vertically) if the paddle is under its
   old column, or is reflected diagonally back (directions 0<->2, 1<->3) if the paddle is under its
   new column; else the episode ends.
3. A step that enters no brick clears the strike flag.

Channels: paddle, ball, trail (the ball's previous cell), brick. A reset puts the ball at row 3,
column 0 moving down-right or column 9 moving down-left (one ``randint(2)`` draw), and the paddle
at column 4. No difficulty ramp. Minimal actions: no-op, left, right.
"""

from __future__ import annotations

import torch
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, RandomSource

__all__ = ["Breakout"]

# Direction tables (index: direction).
_DX = (-1, 1, 1, -1)
_DY = (-1, -1, 1, 1)
_MIRROR_X = (1, 0, 3, 2)
_MIRROR_Y = (3, 2, 1, 0)
_REVERSE = (2, 3, 0, 1)


class Breakout(BatchedGame):
    """Batched MinAtar Breakout (module docstring: the rules)."""

    name = "breakout"
    num_channels = 4
    minimal_actions = (0, 1, 3)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        super().__init__(num_envs, device, ramping)
        d = self.device
        self._dx = torch.tensor(_DX, device=d)
        self._dy = torch.tensor(_DY, device=d)
        self._mirror_x = torch.tensor(_MIRROR_X, device=d)
        self._mirror_y = torch.tensor(_MIRROR_Y, device=d)
        self._reverse = torch.tensor(_REVERSE, device=d)
        self._wall = torch.zeros((GRID, GRID), dtype=torch.bool, device=d)
        self._wall[1:4, :] = True
        self.ball_x = self._full(0)
        self.ball_y = self._full(3)
        self.ball_dir = self._full(2)
        self.pos = self._full(4)
        self.last_x = self._full(0)
        self.last_y = self._full(3)
        self.bricks = self._wall.expand(num_envs, GRID, GRID).clone()
        self.strike = self._full(False, torch.bool)
        self.terminal = self._full(False, torch.bool)

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        right = rng.randint(mask, 0, 2) == 1
        w = mask
        self.ball_y = torch.where(w, 3, self.ball_y)
        self.ball_x = torch.where(w, torch.where(right, 9, 0), self.ball_x)
        self.ball_dir = torch.where(w, torch.where(right, 3, 2), self.ball_dir)
        self.pos = torch.where(w, 4, self.pos)
        self.bricks = torch.where(w[:, None, None], self._wall, self.bricks)
        self.strike = self.strike & ~w
        self.last_x = torch.where(w, self.ball_x, self.last_x)
        self.last_y = torch.where(w, self.ball_y, self.last_y)
        self.terminal = self.terminal & ~w

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        live = ~self.terminal
        pos = self.pos
        pos = torch.where(action == 1, (pos - 1).clamp(min=0), pos)
        pos = torch.where(action == 3, (pos + 1).clamp(max=GRID - 1), pos)

        last_x, last_y, d = self.ball_x, self.ball_y, self.ball_dir
        new_x = last_x + self._dx[d]
        new_y = last_y + self._dy[d]
        side = (new_x < 0) | (new_x > GRID - 1)
        new_x = new_x.clamp(0, GRID - 1)
        d = torch.where(side, self._mirror_x[d], d)

        top = new_y < 0
        cell = self.bricks[self.rows, new_y.clamp(0, GRID - 1), new_x]
        brick = ~top & cell
        hit = brick & ~self.strike  # breaks the brick
        bottom = ~top & ~brick & (new_y == GRID - 1)

        reward = hit.to(torch.float32)
        bricks = self.bricks.clone()
        bricks[self.rows, new_y.clamp(0, GRID - 1), new_x] = cell & ~hit
        empty = ~bricks.flatten(1).any(dim=1)
        bricks = torch.where((bottom & empty)[:, None, None], self._wall, bricks)
        under_old = bottom & (last_x == pos)
        under_new = bottom & ~under_old & (new_x == pos)
        miss = bottom & ~under_old & ~under_new

        d = torch.where(top | hit | under_old, self._mirror_y[d], d)
        d = torch.where(under_new, self._reverse[d], d)
        new_y = torch.where(top, 0, new_y)
        new_y = torch.where(hit | under_old | under_new, last_y, new_y)

        # Terminal envs do not move (the package returns at once); the vector never steps them.
        keep = live
        self.pos = torch.where(keep, pos, self.pos)
        self.last_x = torch.where(keep, last_x, self.last_x)
        self.last_y = torch.where(keep, last_y, self.last_y)
        self.ball_x = torch.where(keep, new_x, self.ball_x)
        self.ball_y = torch.where(keep, new_y, self.ball_y)
        self.ball_dir = torch.where(keep, d, self.ball_dir)
        self.bricks = torch.where(keep[:, None, None], bricks, self.bricks)
        self.strike = torch.where(keep, brick, self.strike)
        self.terminal = self.terminal | (keep & miss)
        return reward * keep, self.terminal.clone()

    def planes(self) -> list[torch.Tensor]:  # noqa: D102
        paddle = self._plane(torch.full_like(self.pos, GRID - 1), self.pos)
        ball = self._plane(self.ball_y, self.ball_x)
        trail = self._plane(self.last_y, self.last_x)
        return [paddle, ball, trail, self.bricks]
