"""Built-in multimodal tasks, registered with Gymnasium under the ``smfp/`` namespace.

Pure NumPy, deterministic given the reset seed, each with a fast ``render()`` to an RGB array.

``smfp/MultiGoal-v0`` (Haarnoja et al. 2017, "Reinforcement Learning with Deep Energy-Based Policies")
    2-D point, position observation, action = displacement in ``[-1, 1]^2``,
    ``s' = clip(s + a, -7, 7)``; start ``N(0, 0.1^2 I)``; goals at ``(+-5, 0)`` and ``(0, +-5)``.
    Reward ``-30 ||a||^2 - min_g ||s' - g||^2``, plus 10 and termination on coming within
    distance 1 of a goal. Time limit 50 steps. ``info["goal"]`` is the index of the goal
    reached (-1 while none), ``info["position"]`` the position, ``info["blocked"]`` whether the blocked-goal
    test's obstacle (``blocked_goal``) refused the move.

``smfp/Hallway-v0`` (this project's task)
    A point robot with inertia crosses a corridor ``x in [0, 10]``, ``|y| < 3`` with a round
    obstacle of radius 1 at ``(5, 0)``: two equally good routes, above and below it (gaps of 2).
    Observation ``(x, y, vx, vy)``; action = commanded velocity in ``[-1, 1]^2`` (times 0.5);
    velocity follows the command with a lag, ``v' = 0.3 v + 0.7 * 0.5 a``, ``p' = p + v'``.
    Start ``(1, 0) + N(0, 0.05^2)``, at rest. Reward ``(x' - x) - 0.1 ||a||^2`` (progress),
    +10 and termination when ``x' >= 9.5`` (success), -5 and termination when the step's
    segment touches the obstacle or leaves the corridor (collision). Time limit 60 steps.
    ``info`` reports ``route`` ("up"/"down" by the sign of y when the robot first passes
    ``x = 5``, "none" before), ``collision`` and ``success``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOALS = np.array([(5.0, 0.0), (-5.0, 0.0), (0.0, 5.0), (0.0, -5.0)])
GOAL_NAMES = ("right", "left", "up", "down")
ROUTES = ("up", "down")

_BG = np.array([245, 245, 240], dtype=np.uint8)
_GOAL_RGB = np.array([(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14)], dtype=np.uint8)


def _disc_mask(h: int, w: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2


class _Canvas:
    """World-to-pixel mapping with y pointing up; background drawn once and cached."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float], px_per_unit: float):
        self.x0, self.y1 = xlim[0], ylim[1]
        self.scale = px_per_unit
        self.w = int(round((xlim[1] - xlim[0]) * px_per_unit))
        self.h = int(round((ylim[1] - ylim[0]) * px_per_unit))

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.x0) * self.scale, (self.y1 - y) * self.scale

    def disc(self, img: np.ndarray, x: float, y: float, radius: float, rgb) -> None:
        cx, cy = self.px(x, y)
        r = radius * self.scale
        x_lo, x_hi = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, self.w)
        y_lo, y_hi = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, self.h)
        if x_lo >= x_hi or y_lo >= y_hi:
            return
        mask = _disc_mask(y_hi - y_lo, x_hi - x_lo, cx - x_lo, cy - y_lo, r)
        img[y_lo:y_hi, x_lo:x_hi][mask] = rgb


class MultiGoalEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, action_cost: float = 30.0, distance_cost: float = 1.0,
                 goal_reward: float = 10.0, goal_radius: float = 1.0, init_std: float = 0.1,
                 reward_scale: float = 1.0, explore_starts: float = 0.0, explore_std: float = 2.0,
                 blocked_goal: int | None = None, block_radius: float = 2.0):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use 'rgb_array'")
        if not 0.0 <= explore_starts <= 1.0:
            raise ValueError(f"explore_starts is a probability, got {explore_starts}")
        if blocked_goal is not None and blocked_goal not in range(len(GOALS)):
            raise ValueError(f"blocked_goal is a goal index 0-{len(GOALS) - 1} ({', '.join(GOAL_NAMES)}), got {blocked_goal}")
        # The blocked-goal test: an obstacle (a disc of block_radius around that goal) that no move may enter.
        self.blocked_goal, self.block_radius = blocked_goal, block_radius
        self.render_mode = render_mode
        self.explore_starts, self.explore_std = explore_starts, explore_std
        self.action_cost, self.distance_cost = action_cost, distance_cost
        self.goal_reward, self.goal_radius, self.init_std = goal_reward, goal_radius, init_std
        self.reward_scale = reward_scale
        self.bound = 7.0
        self.observation_space = spaces.Box(-self.bound, self.bound, (2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.pos = np.zeros(2)
        self.trail: list[np.ndarray] = []
        self._canvas = _Canvas((-self.bound, self.bound), (-self.bound, self.bound), 16.0)
        self._background = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        std = self.init_std
        if self.explore_starts > 0 and self.np_random.random() < self.explore_starts:
            std = self.explore_std
        self.pos = np.clip(self.np_random.normal(0.0, std, 2), -self.bound, self.bound)
        dists = np.linalg.norm(GOALS - self.pos, axis=1)
        if dists.min() < self.goal_radius + 0.5:  # never start on (or next to) a goal
            self.pos = self.pos * 0.5
        self.trail = [self.pos.copy()]
        return self.pos.astype(np.float32), {"goal": -1, "position": self.pos.copy()}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        new = np.clip(self.pos + a, -self.bound, self.bound)
        refused = self.blocked_goal is not None and np.linalg.norm(new - GOALS[self.blocked_goal]) < self.block_radius
        if not refused:
            self.pos = new  # otherwise the obstacle stops the move: the agent stays where it was
        self.trail.append(self.pos.copy())
        dists = np.linalg.norm(GOALS - self.pos, axis=1)
        reward = -self.action_cost * float(a @ a) - self.distance_cost * float(dists.min()) ** 2
        goal = int(dists.argmin()) if dists.min() < self.goal_radius else -1
        terminated = goal >= 0
        if terminated:
            reward += self.goal_reward
        info = {"goal": goal, "position": self.pos.copy(), "blocked": bool(refused)}
        return self.pos.astype(np.float32), self.reward_scale * reward, terminated, False, info

    def render(self):
        if self._background is None:
            c = self._canvas
            img = np.empty((c.h, c.w, 3), dtype=np.uint8)
            img[:] = _BG
            for g, rgb in zip(GOALS, _GOAL_RGB):
                c.disc(img, g[0], g[1], self.goal_radius, rgb // 2 + 127)
            c.disc(img, 0.0, 0.0, 0.15, (120, 120, 120))
            self._background = img
        img = self._background.copy()
        for p in self.trail[:-1]:
            self._canvas.disc(img, p[0], p[1], 0.08, (90, 90, 90))
        self._canvas.disc(img, self.pos[0], self.pos[1], 0.25, (0, 0, 0))
        return img


class HallwayEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None, length: float = 10.0, half_width: float = 3.0,
                 obstacle_radius: float = 1.0, max_speed: float = 0.5, lag: float = 0.3,
                 progress_reward: float = 1.0, action_cost: float = 0.1, success_reward: float = 10.0,
                 collision_penalty: float = 5.0, start_x: float = 1.0, init_std: float = 0.05,
                 reward_scale: float = 1.0):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use 'rgb_array'")
        self.render_mode = render_mode
        self.length, self.half_width = length, half_width
        self.center = np.array([length / 2.0, 0.0])
        self.obstacle_radius, self.max_speed, self.lag = obstacle_radius, max_speed, lag
        self.progress_reward, self.action_cost = progress_reward, action_cost
        self.success_reward, self.collision_penalty = success_reward, collision_penalty
        self.start_x, self.init_std, self.reward_scale = start_x, init_std, reward_scale
        self.goal_x = length - 0.5
        high = np.array([length, half_width, max_speed, max_speed], dtype=np.float32)
        low = np.array([0.0, -half_width, -max_speed, -max_speed], dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.pos, self.vel = np.zeros(2), np.zeros(2)
        self.route, self.collision, self.success = "none", False, False
        self.trail: list[np.ndarray] = []
        self._canvas = _Canvas((0.0, length), (-half_width, half_width), 24.0)
        self._background = None

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.vel]).astype(np.float32)

    def _info(self) -> dict:
        return {"route": self.route, "collision": self.collision, "success": self.success,
                "position": self.pos.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = np.array([self.start_x, 0.0]) + self.np_random.normal(0.0, self.init_std, 2)
        self.vel = np.zeros(2)
        self.route, self.collision, self.success = "none", False, False
        self.trail = [self.pos.copy()]
        return self._obs(), self._info()

    def segment_distance(self, p0: np.ndarray, p1: np.ndarray) -> float:
        """Distance from the obstacle's centre to the segment p0 -> p1 (no tunnelling through it)."""
        d = p1 - p0
        denom = float(d @ d)
        s = 0.0 if denom == 0.0 else float(np.clip((self.center - p0) @ d / denom, 0.0, 1.0))
        return float(np.linalg.norm(p0 + s * d - self.center))

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.vel = self.lag * self.vel + (1.0 - self.lag) * self.max_speed * a
        old = self.pos
        new = old + self.vel
        if self.route == "none" and old[0] < self.center[0] <= new[0]:
            d = new - old
            y_cross = old[1] + d[1] * (self.center[0] - old[0]) / d[0]
            self.route = "up" if y_cross > 0 else "down"
        self.pos = new
        self.trail.append(new.copy())
        reward = self.progress_reward * float(new[0] - old[0]) - self.action_cost * float(a @ a)
        hit_obstacle = self.segment_distance(old, new) <= self.obstacle_radius
        left_corridor = abs(new[1]) >= self.half_width or new[0] < 0.0
        terminated = False
        if hit_obstacle or left_corridor:
            self.collision, terminated = True, True
            reward -= self.collision_penalty
        elif new[0] >= self.goal_x:
            self.success, terminated = True, True
            reward += self.success_reward
        # Report the state inside the observation box even after a collision.
        self.pos = np.clip(self.pos, [0.0, -self.half_width], [self.length, self.half_width])
        return self._obs(), self.reward_scale * reward, terminated, False, self._info()

    def render(self):
        c = self._canvas
        if self._background is None:
            img = np.empty((c.h, c.w, 3), dtype=np.uint8)
            img[:] = _BG
            img[:3], img[-3:] = 60, 60  # walls
            gx = int(self.goal_x * c.scale)
            img[:, gx:] = (200, 235, 200)
            c.disc(img, self.center[0], self.center[1], self.obstacle_radius, (110, 110, 110))
            self._background = img
        img = self._background.copy()
        for p in self.trail[:-1]:
            c.disc(img, p[0], p[1], 0.06, (90, 90, 90))
        rgb = (214, 39, 40) if self.collision else (0, 0, 0)
        c.disc(img, self.pos[0], self.pos[1], 0.18, rgb)
        return img


# The training variant the demo uses for MultiGoal (docs/demo.md): the same task with rewards x 0.1
# and half of the episodes started from N(0, 2^2 I) ("exploring starts"); evaluation is always on
# smfp/MultiGoal-v0 from its own start state.
MULTIGOAL_EXPLORE_KWARGS = {"reward_scale": 0.1, "explore_starts": 0.5, "explore_std": 2.0}


def _register() -> None:
    specs = {"smfp/MultiGoal-v0": ("smfp.envs.multimodal:MultiGoalEnv", 50, {}),
             "smfp/MultiGoalExplore-v0": ("smfp.envs.multimodal:MultiGoalEnv", 50, MULTIGOAL_EXPLORE_KWARGS),
             "smfp/Hallway-v0": ("smfp.envs.multimodal:HallwayEnv", 60, {})}
    for env_id, (entry_point, horizon, kwargs) in specs.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=horizon, kwargs=dict(kwargs))


_register()
