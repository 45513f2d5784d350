"""Freeway, batched: every env of a vector in one set of tensor operations.

The rules (MinAtar's Freeway): a chicken in column 4 crosses eight lanes of cars (car ``k`` in
row ``k + 1``). Per step, in this order:

1. Up (action 2) or down (action 4) moves the chicken one row (within the grid) if its move
   timer is 0, which restarts the timer at 3.
2. Reaching row 0 gives +1, re-draws every car's speed and direction (positions stay) and puts
   the chicken back on row 9.
3. Every car: if it is on the chicken's cell, the chicken goes back to row 9; if its timer is 0
   the timer restarts at |speed| and the car moves one column in its direction (wrapping
   around), after which the same collision check applies; otherwise its timer counts down.
   (A hit chicken is on row 9, where no car drives, so the cars' order does not matter.)
4. The move timer counts down to 0; after 2 500 steps' countdown below zero the episode ends
   (episodes last 2 501 steps).

Car draws (at every reset and every crossing): speeds ``randint(1, 6, 8)``, directions
``sign(rand(8) - 0.5)`` (a uniform of exactly 0.5, probability 2^-53 per car in the package, would
give it speed 0 and make its ``state()`` fail; here it moves right). A reset also puts every car
in column 0 with its timer at |speed|, the chicken on row 9 with its move timer at 3. Channels:
chicken, car, then the trail (the cell behind each car, wrapping) in channel ``1 + |speed|``. No
difficulty ramp. Minimal actions: no-op, up, down.
"""

from __future__ import annotations

import torch
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, RandomSource

__all__ = ["Freeway"]

PLAYER_SPEED = 3
TIME_LIMIT = 2500
NUM_CARS = 8


class Freeway(BatchedGame):
    """Batched MinAtar Freeway (module docstring: the rules)."""

    name = "freeway"
    num_channels = 7
    minimal_actions = (0, 2, 4)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        super().__init__(num_envs, device, ramping)
        self.car_y = torch.arange(1, NUM_CARS + 1, device=self.device).expand(num_envs, NUM_CARS)
        self.car_x = self._full(0, torch.int64, NUM_CARS)
        self.car_timer = self._full(1, torch.int64, NUM_CARS)
        self.car_speed = self._full(1, torch.int64, NUM_CARS)
        self.pos = self._full(9)
        self.move_timer = self._full(PLAYER_SPEED)
        self.terminate_timer = self._full(TIME_LIMIT)
        self.terminal = self._full(False, torch.bool)

    def _draw_cars(self, mask: torch.Tensor, rng: RandomSource) -> torch.Tensor:
        speeds = rng.randint(mask, 1, 6, NUM_CARS)
        # The package's sign(u - 0.5), except at u == 0.5 exactly (speed 0 there, a car the
        # package cannot draw; float32 uniforms hit 0.5 once in 2^24): that car moves right.
        directions = torch.where(rng.rand(mask, NUM_CARS) < 0.5, -1, 1)
        return speeds * directions

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        speed = self._draw_cars(mask, rng)
        m = mask[:, None]
        self.car_speed = torch.where(m, speed, self.car_speed)
        self.car_timer = torch.where(m, speed.abs(), self.car_timer)
        self.car_x = torch.where(m, 0, self.car_x)
        self.pos = torch.where(mask, 9, self.pos)
        self.move_timer = torch.where(mask, PLAYER_SPEED, self.move_timer)
        self.terminate_timer = torch.where(mask, TIME_LIMIT, self.terminate_timer)
        self.terminal = self.terminal & ~mask

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        live = ~self.terminal
        can_move = live & (self.move_timer == 0)
        up = can_move & (action == 2)
        down = can_move & (action == 4)
        pos = torch.where(up, (self.pos - 1).clamp(min=0), self.pos)
        pos = torch.where(down, (pos + 1).clamp(max=GRID - 1), pos)
        move_timer = torch.where(up | down, PLAYER_SPEED, self.move_timer)

        win = live & (pos == 0)
        speed = self._draw_cars(win, rng)
        w = win[:, None]
        car_speed = torch.where(w, speed, self.car_speed)
        car_timer = torch.where(w, speed.abs(), self.car_timer)
        pos = torch.where(win, 9, pos)

        car_x = self.car_x
        hit = ((car_x == 4) & (self.car_y == pos[:, None])).any(dim=1)
        moving = car_timer == 0
        step_x = torch.where(car_speed > 0, 1, -1)
        moved_x = torch.remainder(car_x + step_x, GRID)
        car_x = torch.where(moving, moved_x, car_x)
        hit = hit | ((moving & (car_x == 4) & (self.car_y == pos[:, None])).any(dim=1))
        car_timer = torch.where(moving, car_speed.abs(), car_timer - 1)
        pos = torch.where(hit, 9, pos)

        move_timer = move_timer - (move_timer > 0).to(torch.int64)
        terminate_timer = self.terminate_timer - 1
        m = live[:, None]
        self.pos = torch.where(live, pos, self.pos)
        self.move_timer = torch.where(live, move_timer, self.move_timer)
        self.terminate_timer = torch.where(live, terminate_timer, self.terminate_timer)
        self.car_x = torch.where(m, car_x, self.car_x)
        self.car_timer = torch.where(m, car_timer, self.car_timer)
        self.car_speed = torch.where(m, car_speed, self.car_speed)
        self.terminal = self.terminal | (live & (terminate_timer < 0))
        return win.to(torch.float32), self.terminal.clone()

    def planes(self) -> list[torch.Tensor]:  # noqa: D102
        chicken = self._plane(self.pos, torch.full_like(self.pos, 4))
        cars = self._plane(self.car_y, self.car_x)
        back_x = torch.remainder(self.car_x - torch.where(self.car_speed > 0, 1, -1), GRID)
        level = self.car_speed.abs()
        return [chicken, cars] + [self._plane(self.car_y, back_x, level == s) for s in range(1, 6)]
