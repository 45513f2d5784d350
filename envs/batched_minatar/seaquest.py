"""Seaquest, batched: every env of a vector in tensor operations.

The rules (MinAtar's Seaquest): the player's submarine (a front and a back cell; rows 0-8) shoots
fish and enemy submarines, collects divers and must surface (row 0) before its oxygen runs out.
Per step, in this order:

1. Spawns. Enemy spawn timer 0: ``lr = rand() < 1/2`` (enter at column 0 moving right, else at
   column 9 moving left), ``sub = rand() < 1/3``, row ``randint(1, 9)``; nothing spawns if an
   enemy in that row moves the other way; the timer restarts at the spawn speed. Diver spawn
   timer 0: ``lr = rand() < 1/2``, row ``randint(1, 9)``; the timer restarts at 30. (Enemies get
   the move speed as move timer, submarines 10 as shot timer; divers 5.)
2. The player: fire (5, shot timer 0) adds a bullet in its cell facing its way and restarts the
   shot timer at 5; else left (1) / right (3) move it and turn it that way; up (2) / down (4)
   move it (rows 0-8).
3. Friendly bullets, newest first: move one cell; leaving the grid removes one; else it kills
   the first fish (oldest) in its cell, else the first enemy submarine (+1 each, both removed).
4. Divers, newest first: on the player's cell with fewer than 6 on board, collected (+1 on
   board); else, at move timer 0 (then 5 again) one moves (removed when leaving the grid, then
   collected as before), else its timer counts down.
5. Enemy submarines, newest first: on the player's cell ends the episode; at move timer 0 (then
   the move speed again) one moves: leaving the grid removes it, reaching the player ends the
   episode, else it is killed by the first (oldest) remaining friendly bullet in its cell (+1);
   else its timer counts down. Then, even if removed, at shot timer 0 (then 10) it fires a bullet
   in its cell, its way; else the shot timer counts down.
6. Enemy bullets: on the player's cell ends the episode; each moves one cell, is removed when it
   leaves the grid, and ends the episode when it reaches the player.
7. Fish, newest first: as the submarines in 5, without shooting.
8. The spawn and shot timers count down to 0. Oxygen at or below 0 ends the episode. Below the
   surface oxygen drops by 1; arriving at the surface (row 0, after being below) with no divers
   ends the episode, else surfaces: with 6 divers on board +``oxygen * 10 // 200`` and the count
   goes to 0; oxygen back to 200; the count drops by 1 (so a full load leaves -1, as in the
   package); with difficulty ramping, while the enemy spawn speed is above 1 or the move speed
   above 2, the move speed drops by 1 at odd ramp indices (while above 2), the spawn speed by 1
   (while above 1), and the ramp index grows.

A reset: oxygen 200, no divers on board, the player at (row 0, column 5) facing left, on the
surface, no entities, enemy spawn speed and timer 20, diver spawn timer 30, move speed 5, shot
timer 0, ramp index 0. Channels: sub front, sub back, friendly bullet, trail (the cell behind
each enemy and diver, inside the grid), enemy bullet, fish, enemy sub, oxygen gauge (row 9,
``max(0, oxygen) * 10 // 200`` cells from the left), diver gauge (row 9, the count's cells
ending at column 8), diver. Minimal actions: all six.

Note [Entity order]
    Steps 3-7 depend on the order of entities in a few places: which of two bullets in one cell
    kills the fish there, which of two enemies in one cell a bullet kills, which diver is
    collected when the sixth seat fills. Every kind of entity is kept in slots in order of
    creation (the package's list order), with an ``alive`` flag; removed entities leave holes
    until the end of the step, when the slots are compacted (stably) and trimmed. Bullets and
    divers (at most two or three of each alive at once) are processed slot by slot, newest first;
    enemies all at once, and their kills are matched to bullets afterwards: in a cell, the
    k-th enemy in processing order (newest first) takes the k-th remaining bullet in list order
    (oldest first), which is what processing them one by one, each taking the first bullet in
    its cell, gives. The package removes list elements by value (``list.remove``: the first
    equal one), which here is always the element in hand: an element removed is either outside
    the grid or sharing its cell with a bullet or a submarine it hits, and an earlier, equal
    element (same cell, direction and timers) would have been hit or removed before. Tests
    compare with the package over long scripted and random runs, and from states at top
    difficulty (dozens of enemies); no difference has been found.
"""

from __future__ import annotations

import torch
from plasticrl.envs.batched_minatar.common import GRID, BatchedGame, RandomSource

__all__ = ["Seaquest"]

RAMP_INTERVAL = 100  # unused by Seaquest's rules (the package defines it too)
MAX_OXYGEN = 200
INIT_SPAWN_SPEED = 20
DIVER_SPAWN_SPEED = 30
INIT_MOVE_INTERVAL = 5
SHOT_COOL_DOWN = 5
ENEMY_SHOT_INTERVAL = 10
DIVER_MOVE_INTERVAL = 5
MAX_DIVERS = 6


class _Slots:
    """Entities of one kind: ``(N, K)`` fields in creation order, ``alive`` flags, ``used`` slots per env."""

    def __init__(self, num_envs: int, device: torch.device, fields: tuple[str, ...]) -> None:
        self.num_envs, self.device, self.names = num_envs, device, fields
        self.f: dict[str, torch.Tensor] = {
            n: torch.zeros((num_envs, 0), dtype=torch.int64, device=device) for n in fields
        }
        self.alive = torch.zeros((num_envs, 0), dtype=torch.bool, device=device)
        self.used = torch.zeros(num_envs, dtype=torch.int64, device=device)

    @property
    def capacity(self) -> int:
        return self.alive.shape[1]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.f[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.f[name] = value

    def _grow(self, need: int) -> None:
        extra = need - self.capacity
        if extra <= 0:
            return
        extra = max(extra, 4)
        pad = torch.zeros((self.num_envs, extra), dtype=torch.int64, device=self.device)
        for n in self.names:
            self.f[n] = torch.cat((self.f[n], pad), dim=1)
        self.alive = torch.cat((self.alive, pad.bool()), dim=1)

    def append(self, mask: torch.Tensor, **values: torch.Tensor) -> None:
        """Append one entity to every masked env (values ``(N,)``)."""
        self.append_many(mask[:, None], **{k: v[:, None] for k, v in values.items()})

    def append_many(self, mask: torch.Tensor, **values: torch.Tensor) -> None:
        """Append, per env, the entities where ``mask`` (``(N, M)``), in column order (values ``(N, M)``)."""
        count = mask.sum(dim=1)
        self._grow(int((self.used + count).max()))
        slot = self.used[:, None] + torch.cumsum(mask, dim=1) - 1
        slot = torch.where(mask, slot, self.capacity)  # a spare column, dropped below
        spare = torch.zeros((self.num_envs, 1), dtype=torch.int64, device=self.device)
        for n in self.names:
            field = torch.cat((self.f[n], spare), dim=1)
            field.scatter_(1, slot, values[n].expand_as(mask).to(torch.int64))
            self.f[n] = field[:, :-1]
        alive = torch.cat((self.alive, spare.bool()), dim=1)
        alive.scatter_(1, slot, mask)
        self.alive = alive[:, :-1] | self.alive
        self.used = self.used + count

    def compact(self) -> None:
        """Move the alive entities to the front (order kept) and trim the slots to the longest list."""
        if self.capacity == 0:
            return
        order = torch.sort((~self.alive).to(torch.int8), dim=1, stable=True).indices
        self.alive = self.alive.gather(1, order)
        for n in self.names:
            self.f[n] = self.f[n].gather(1, order)
        self.used = self.alive.sum(dim=1)
        keep = int(self.used.max())
        if keep < self.capacity:
            self.alive = self.alive[:, :keep]
            for n in self.names:
                self.f[n] = self.f[n][:, :keep]

    def clear(self, mask: torch.Tensor) -> None:
        """Remove every entity of the masked envs (their slots are reused from the first)."""
        self.alive = self.alive & ~mask[:, None]
        self.used = torch.where(mask, 0, self.used)


class Seaquest(BatchedGame):
    """Batched MinAtar Seaquest (module docstring: the rules; Note [Entity order])."""

    name = "seaquest"
    num_channels = 10
    minimal_actions = (0, 1, 2, 3, 4, 5)

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", ramping: bool = True) -> None:
        super().__init__(num_envs, device, ramping)
        d = self.device
        self.f_bullets = _Slots(num_envs, d, ("x", "y", "lr"))
        self.e_bullets = _Slots(num_envs, d, ("x", "y", "lr"))
        self.fish = _Slots(num_envs, d, ("x", "y", "lr", "move"))
        self.subs = _Slots(num_envs, d, ("x", "y", "lr", "move", "shot"))
        self.divers = _Slots(num_envs, d, ("x", "y", "lr", "move"))
        self.oxygen = self._full(MAX_OXYGEN)
        self.diver_count = self._full(0)
        self.sub_x = self._full(5)
        self.sub_y = self._full(0)
        self.sub_or = self._full(False, torch.bool)
        self.e_spawn_speed = self._full(INIT_SPAWN_SPEED)
        self.e_spawn_timer = self._full(INIT_SPAWN_SPEED)
        self.d_spawn_timer = self._full(DIVER_SPAWN_SPEED)
        self.move_speed = self._full(INIT_MOVE_INTERVAL)
        self.ramp_index = self._full(0)
        self.shot_timer = self._full(0)
        self.surface = self._full(True, torch.bool)
        self.terminal = self._full(False, torch.bool)

    def reset(self, mask: torch.Tensor, rng: RandomSource) -> None:  # noqa: D102
        m = mask
        for kind in (self.f_bullets, self.e_bullets, self.fish, self.subs, self.divers):
            kind.clear(m)
        self.oxygen = torch.where(m, MAX_OXYGEN, self.oxygen)
        self.diver_count = torch.where(m, 0, self.diver_count)
        self.sub_x = torch.where(m, 5, self.sub_x)
        self.sub_y = torch.where(m, 0, self.sub_y)
        self.sub_or = self.sub_or & ~m
        self.e_spawn_speed = torch.where(m, INIT_SPAWN_SPEED, self.e_spawn_speed)
        self.e_spawn_timer = torch.where(m, INIT_SPAWN_SPEED, self.e_spawn_timer)
        self.d_spawn_timer = torch.where(m, DIVER_SPAWN_SPEED, self.d_spawn_timer)
        self.move_speed = torch.where(m, INIT_MOVE_INTERVAL, self.move_speed)
        self.ramp_index = torch.where(m, 0, self.ramp_index)
        self.shot_timer = torch.where(m, 0, self.shot_timer)
        self.surface = self.surface | m
        self.terminal = self.terminal & ~m

    @staticmethod
    def _step_x(lr: torch.Tensor) -> torch.Tensor:
        return torch.where(lr.bool(), 1, -1)

    def _enemies(
        self, kind: _Slots, live: torch.Tensor, px: torch.Tensor, py: torch.Tensor, terminal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 5/7 for one enemy kind, but the shots: (terminal, reward, where each enemy moved)."""
        on = kind.alive & live[:, None]
        at = (kind["x"] == px[:, None]) & (kind["y"] == py[:, None])
        terminal = terminal | (on & at).any(dim=1)
        moving = on & (kind["move"] == 0)
        kind["move"] = torch.where(
            moving, self.move_speed[:, None], torch.where(on, kind["move"] - 1, kind["move"])
        )
        kind["x"] = torch.where(moving, kind["x"] + self._step_x(kind["lr"]), kind["x"])
        out = moving & ((kind["x"] < 0) | (kind["x"] > GRID - 1))
        at = (kind["x"] == px[:, None]) & (kind["y"] == py[:, None])
        hit_player = moving & ~out & at
        terminal = terminal | hit_player.any(dim=1)
        kind.alive = kind.alive & ~out
        candidate = moving & ~out & ~at
        reward = self._match_bullets(kind, candidate)
        return terminal, reward, moving

    def _match_bullets(self, kind: _Slots, candidate: torch.Tensor) -> torch.Tensor:
        """Kill candidates with the remaining friendly bullets in their cells (Note [Entity order])."""
        reward = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        fb = self.f_bullets
        if kind.capacity == 0:
            return reward
        slots = torch.arange(kind.capacity, device=self.device)
        free = candidate.clone()
        for b in range(fb.capacity):  # oldest bullet first
            bx, by, balive = fb["x"][:, b], fb["y"][:, b], fb.alive[:, b]
            here = free & balive[:, None] & (kind["x"] == bx[:, None]) & (kind["y"] == by[:, None])
            found = here.any(dim=1)
            newest = torch.where(here, slots, -1).max(dim=1).values  # processed first
            taken = here & (slots == newest[:, None])
            free = free & ~taken
            kind.alive = kind.alive & ~taken
            fb.alive[:, b] = balive & ~found
            reward = reward + found.to(torch.int64)
        return reward

    def step(self, action: torch.Tensor, rng: RandomSource) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        live = ~self.terminal
        reward = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        terminal = torch.zeros_like(live)

        # 1. Spawns.
        spawn = live & (self.e_spawn_timer == 0)
        lr = rng.rand(spawn) < 1 / 2
        is_sub = rng.rand(spawn) < 1 / 3
        row = rng.randint(spawn, 1, 9)
        x0 = torch.where(lr, 0, GRID - 1)
        blocked = torch.zeros_like(spawn)
        for kind in (self.subs, self.fish):
            if kind.capacity:
                blocked = blocked | (
                    kind.alive & (kind["y"] == row[:, None]) & (kind["lr"].bool() != lr[:, None])
                ).any(dim=1)
        place = spawn & ~blocked
        ms = self.move_speed
        self.subs.append(
            place & is_sub, x=x0, y=row, lr=lr.long(), move=ms, shot=torch.full_like(ms, ENEMY_SHOT_INTERVAL)
        )
        self.fish.append(place & ~is_sub, x=x0, y=row, lr=lr.long(), move=ms)
        self.e_spawn_timer = torch.where(spawn, self.e_spawn_speed, self.e_spawn_timer)
        dspawn = live & (self.d_spawn_timer == 0)
        dlr = rng.rand(dspawn) < 1 / 2
        drow = rng.randint(dspawn, 1, 9)
        self.divers.append(
            dspawn,
            x=torch.where(dlr, 0, GRID - 1),
            y=drow,
            lr=dlr.long(),
            move=torch.full_like(ms, DIVER_MOVE_INTERVAL),
        )
        self.d_spawn_timer = torch.where(dspawn, DIVER_SPAWN_SPEED, self.d_spawn_timer)

        # 2. Player.
        px, py, orient = self.sub_x, self.sub_y, self.sub_or
        fire = live & (action == 5) & (self.shot_timer == 0)
        self.f_bullets.append(fire, x=px, y=py, lr=orient.long())
        shot_timer = torch.where(fire, SHOT_COOL_DOWN, self.shot_timer)
        left, right = live & (action == 1), live & (action == 3)
        up, down = live & (action == 2), live & (action == 4)
        px = torch.where(left, (px - 1).clamp(min=0), torch.where(right, (px + 1).clamp(max=GRID - 1), px))
        orient = torch.where(left, False, torch.where(right, True, orient))
        py = torch.where(up, (py - 1).clamp(min=0), torch.where(down, (py + 1).clamp(max=8), py))

        # 3. Friendly bullets, newest first.
        fb = self.f_bullets
        for b in range(fb.capacity - 1, -1, -1):
            on = fb.alive[:, b] & live
            bx = torch.where(on, fb["x"][:, b] + self._step_x(fb["lr"][:, b]), fb["x"][:, b])
            fb["x"][:, b] = bx
            by = fb["y"][:, b]
            out = on & ((bx < 0) | (bx > GRID - 1))
            on = on & ~out
            killed = torch.zeros_like(on)
            for kind in (self.fish, self.subs):
                if kind.capacity == 0:
                    continue
                here = (
                    on[:, None]
                    & ~killed[:, None]
                    & kind.alive
                    & (kind["x"] == bx[:, None])
                    & (kind["y"] == by[:, None])
                )
                first = here & (torch.cumsum(here.to(torch.int64), dim=1) == 1)
                kind.alive = kind.alive & ~first
                killed = killed | here.any(dim=1)
            fb.alive[:, b] = fb.alive[:, b] & ~out & ~killed
            reward = reward + killed.to(torch.int64)

        # 4. Divers, newest first.
        dv = self.divers
        count = self.diver_count
        for k in range(dv.capacity - 1, -1, -1):
            on = dv.alive[:, k] & live
            at = (dv["x"][:, k] == px) & (dv["y"][:, k] == py)
            grab = on & at & (count < MAX_DIVERS)
            rest = on & ~grab
            moving = rest & (dv["move"][:, k] == 0)
            dv["move"][:, k] = torch.where(
                moving, DIVER_MOVE_INTERVAL, torch.where(rest, dv["move"][:, k] - 1, dv["move"][:, k])
            )
            x = torch.where(moving, dv["x"][:, k] + self._step_x(dv["lr"][:, k]), dv["x"][:, k])
            dv["x"][:, k] = x
            out = moving & ((x < 0) | (x > GRID - 1))
            grab2 = moving & ~out & (x == px) & (dv["y"][:, k] == py) & (count < MAX_DIVERS)
            count = count + grab.to(torch.int64) + grab2.to(torch.int64)
            dv.alive[:, k] = dv.alive[:, k] & ~grab & ~out & ~grab2

        # 5. Enemy subs (then their shots: every sub in the list when the loop starts shoots,
        # even one the loop removes).
        listed = self.subs.alive & live[:, None]
        terminal, r, _ = self._enemies(self.subs, live, px, py, terminal)
        reward = reward + r
        if self.subs.capacity:
            sb = self.subs
            had = listed
            shoot = had & (sb["shot"] == 0)
            sb["shot"] = torch.where(shoot, ENEMY_SHOT_INTERVAL, torch.where(had, sb["shot"] - 1, sb["shot"]))
            inside = (sb["x"] >= 0) & (sb["x"] <= GRID - 1)  # bullets fired outside vanish at once
            # Newest sub first, as the package appends them (order is irrelevant for enemy bullets).
            self.e_bullets.append_many(shoot & inside, x=sb["x"], y=sb["y"], lr=sb["lr"])

        # 6. Enemy bullets.
        eb = self.e_bullets
        if eb.capacity:
            on = eb.alive & live[:, None]
            at = (eb["x"] == px[:, None]) & (eb["y"] == py[:, None])
            terminal = terminal | (on & at).any(dim=1)
            eb["x"] = torch.where(on, eb["x"] + self._step_x(eb["lr"]), eb["x"])
            out = on & ((eb["x"] < 0) | (eb["x"] > GRID - 1))
            at = (eb["x"] == px[:, None]) & (eb["y"] == py[:, None])
            terminal = terminal | (on & ~out & at).any(dim=1)
            eb.alive = eb.alive & ~out

        # 7. Fish.
        terminal, r, _ = self._enemies(self.fish, live, px, py, terminal)
        reward = reward + r

        # 8. Timers, oxygen, surfacing.
        self.e_spawn_timer = self.e_spawn_timer - (live & (self.e_spawn_timer > 0)).to(torch.int64)
        self.d_spawn_timer = self.d_spawn_timer - (live & (self.d_spawn_timer > 0)).to(torch.int64)
        shot_timer = shot_timer - (shot_timer > 0).to(torch.int64)
        oxygen = self.oxygen
        terminal = terminal | (oxygen <= 0)
        below = py > 0
        oxygen = torch.where(below, oxygen - 1, oxygen)
        arrive = ~below & ~self.surface
        empty = arrive & (count == 0)
        terminal = terminal | empty
        surfaces = arrive & (count != 0)
        full = surfaces & (count == MAX_DIVERS)
        reward = reward + torch.where(full, torch.div(oxygen * 10, MAX_OXYGEN, rounding_mode="floor"), 0)
        count = torch.where(full, 0, count)
        oxygen = torch.where(surfaces, MAX_OXYGEN, oxygen)
        count = torch.where(surfaces, count - 1, count)
        surface = torch.where(below, False, self.surface | surfaces)
        spawn_speed, move_speed, ramp_index = self.e_spawn_speed, self.move_speed, self.ramp_index
        if self.ramping:
            ramp = surfaces & ((spawn_speed > 1) | (move_speed > 2))
            move_speed = torch.where(
                ramp & (move_speed > 2) & (ramp_index % 2 == 1), move_speed - 1, move_speed
            )
            spawn_speed = torch.where(ramp & (spawn_speed > 1), spawn_speed - 1, spawn_speed)
            ramp_index = torch.where(ramp, ramp_index + 1, ramp_index)

        # Commit (terminal envs are never stepped by the vector; keep them frozen anyway).
        self.sub_x = torch.where(live, px, self.sub_x)
        self.sub_y = torch.where(live, py, self.sub_y)
        self.sub_or = torch.where(live, orient, self.sub_or)
        self.shot_timer = torch.where(live, shot_timer, self.shot_timer)
        self.oxygen = torch.where(live, oxygen, self.oxygen)
        self.diver_count = torch.where(live, count, self.diver_count)
        self.surface = torch.where(live, surface, self.surface)
        self.e_spawn_speed = torch.where(live, spawn_speed, self.e_spawn_speed)
        self.move_speed = torch.where(live, move_speed, self.move_speed)
        self.ramp_index = torch.where(live, ramp_index, self.ramp_index)
        for kind in (self.f_bullets, self.e_bullets, self.fish, self.subs, self.divers):
            kind.compact()
        self.terminal = self.terminal | (live & terminal)
        return (reward * live).to(torch.float32), self.terminal.clone()

    def planes(self) -> list[torch.Tensor]:  # noqa: D102
        x, y = self.sub_x, self.sub_y
        entities: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]] = [
            (0, y, x, None),
            (1, y, x - torch.where(self.sub_or, 1, -1), None),
        ]
        for channel, kind in ((2, self.f_bullets), (4, self.e_bullets)):
            if kind.capacity:
                entities.append((channel, kind["y"], kind["x"], kind.alive))
        for channel, kind in ((5, self.fish), (6, self.subs), (9, self.divers)):
            if kind.capacity:
                entities.append((channel, kind["y"], kind["x"], kind.alive))
                back_x = kind["x"] - self._step_x(kind["lr"])
                inside = (back_x >= 0) & (back_x <= GRID - 1)
                entities.append((3, kind["y"], back_x, kind.alive & inside))
        cols = self.cols.expand(self.num_envs, GRID)
        row9 = torch.full_like(cols, GRID - 1)
        oxygen = torch.div(self.oxygen.clamp(min=0) * 10, MAX_OXYGEN, rounding_mode="floor")
        entities.append((7, row9, cols, cols < oxygen[:, None]))
        entities.append((8, row9, cols, (cols >= (9 - self.diver_count)[:, None]) & (cols < 9)))
        return self._planes_of(entities)

    def difficulty_ramp(self) -> torch.Tensor:  # noqa: D102
        return self.ramp_index.clone()
