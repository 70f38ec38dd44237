"""The text-environment interface every task family implements, and a batch of them.

A :class:`TextEnv` is a ``gymnasium.Env`` whose observation is text and whose action is a text
command. A task family (ALFWorld, WebShop, your own) is one subclass that implements five
small hooks (``_num_tasks``, ``_task_id``, ``_reset_task``, ``_step_task``, ``expert_action``);
the base class owns the episode cap, step counting, invalid-command handling and the ``info``
contract, so every family reports the same keys:

================== =====================================================================
key                meaning
================== =====================================================================
admissible_commands list[str], the commands the engine accepts now
task_id            str, stable identifier of the task (game path, goal index ...)
task_type          str, the task family's category (``pick_and_place_simple``, a product category ...)
task               str, the goal text the agent must achieve
won                bool, the task was completed successfully
score              float in [0, 1] (1.0 when won; WebShop's reward at Buy Now)
step               int, number of steps taken in this episode so far
invalid            bool, the last command was not admissible (it still counted as a step)
================== =====================================================================
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import gymnasium as gym
import numpy as np

MAX_TEXT = 100_000
INFO_KEYS = ("admissible_commands", "task_id", "task_type", "task", "won", "score", "step", "invalid")


@dataclass
class TaskState:
    """What a subclass returns from ``_reset_task``/``_step_task``.

    ``done`` means the engine ended the episode (won, bought, lost); the cap is handled by the base.
    ``invalid``: the engine's own verdict on the command just applied; None (the default) lets the
    base judge it by membership in the previous state's ``admissible_commands``.
    """

    obs: str
    admissible_commands: list[str]
    task_type: str
    task: str
    won: bool = False
    score: float = 0.0
    done: bool = False
    reward: float = 0.0
    invalid: Optional[bool] = None
    extra: dict[str, Any] = field(default_factory=dict)


class TextEnv(gym.Env, abc.ABC):
    """A text-in, text-out episodic environment over a fixed, ordered list of tasks.

    ``reset(seed=s)`` picks a task with the env's seeded RNG; ``reset(options={"task_index": i})``
    (or ``{"task_id": ...}``) picks one explicitly. Both are deterministic.
    """

    metadata: ClassVar[dict] = {"render_modes": ["ansi"]}
    default_max_steps: ClassVar[int] = 50
    name: ClassVar[str] = "text"
    # the same task and the same commands give the same observations (ALFWorld's PDDL engine, WebShop's
    # state machine): a greedy agent then replays one episode under every seed, and evaluation plays it once
    deterministic: ClassVar[bool] = True

    def __init__(self, max_steps: Optional[int] = None):
        super().__init__()
        self.max_steps = int(max_steps or self.default_max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        self.observation_space = gym.spaces.Text(max_length=MAX_TEXT)
        self.action_space = gym.spaces.Text(max_length=1000)
        self._state: Optional[TaskState] = None
        self._task_index = -1
        self._steps = 0
        self._last_invalid = False

    # ---- hooks a task family implements -------------------------------------------------
    @abc.abstractmethod
    def _num_tasks(self) -> int:
        """Number of tasks in this split."""

    @abc.abstractmethod
    def _task_id(self, index: int) -> str:
        """Stable id of task ``index``."""

    @abc.abstractmethod
    def _reset_task(self, index: int) -> TaskState:
        """Start task ``index`` from its initial state."""

    @abc.abstractmethod
    def _step_task(self, command: str) -> TaskState:
        """Apply one command (admissible or not) and return the new state."""

    @abc.abstractmethod
    def expert_action(self) -> str:
        """The expert's next command in the current state (used by ExpertPolicy and BC data)."""

    # ---- the gymnasium API ---------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self._num_tasks()

    @property
    def task_ids(self) -> list[str]:
        return [self._task_id(i) for i in range(self._num_tasks())]

    @property
    def task_index(self) -> int:
        return self._task_index

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        n = self._num_tasks()
        if n == 0:
            raise RuntimeError(f"{type(self).__name__} has no tasks to reset to")
        options = options or {}
        if "task_index" in options:
            index = int(options["task_index"])
            if not 0 <= index < n:
                raise IndexError(f"task_index {index} out of range: this split has {n} tasks")
        elif "task_id" in options:
            ids = self.task_ids
            if options["task_id"] not in ids:
                raise KeyError(f"unknown task_id {options['task_id']!r}")
            index = ids.index(options["task_id"])
        else:
            index = int(self.np_random.integers(n))
        self._task_index = index
        self._steps = 0
        self._last_invalid = False
        self._state = self._reset_task(index)
        return self._state.obs, self._info()

    def step(self, action: str):
        if self._state is None:
            raise RuntimeError("step() called before reset()")
        if self._state.done or self._steps >= self.max_steps:
            raise RuntimeError("step() called on a finished episode; call reset()")
        command = str(action).strip()
        not_listed = command not in self._state.admissible_commands
        self._steps += 1
        self._state = self._step_task(command)
        self._last_invalid = not_listed if self._state.invalid is None else bool(self._state.invalid)
        terminated = bool(self._state.done)
        truncated = (not terminated) and self._steps >= self.max_steps
        return self._state.obs, float(self._state.reward), terminated, truncated, self._info()

    def render(self):
        return None if self._state is None else self._state.obs

    def _info(self) -> dict:
        s = self._state
        info = {
            "admissible_commands": list(s.admissible_commands),
            "task_id": self._task_id(self._task_index),
            "task_type": s.task_type,
            "task": s.task,
            "won": bool(s.won),
            "score": float(s.score),
            "step": self._steps,
            "invalid": self._last_invalid,
        }
        info.update(s.extra)
        return info


class BatchTextEnv:
    """N environments stepped together in one process (what one rollout worker hosts).

    Unlike gymnasium's vector envs there is no auto-reset: a finished env stays finished
    (``done[i]``) until ``reset`` is called for it, which is what episode-level rollouts want.
    """

    def __init__(self, envs: Sequence[TextEnv]):
        if not envs:
            raise ValueError("BatchTextEnv needs at least one environment")
        self.envs = list(envs)
        self.done = [True] * len(self.envs)
        self.last_obs: list[str] = [""] * len(self.envs)
        self.last_info: list[dict] = [{} for _ in self.envs]

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, task_indices: Sequence[Optional[int]], seeds: Optional[Sequence[Optional[int]]] = None):
        """Reset env i to ``task_indices[i]`` (None: seeded draw). Returns (obs list, info list)."""
        if len(task_indices) != len(self.envs):
            raise ValueError(f"need {len(self.envs)} task indices, got {len(task_indices)}")
        seeds = list(seeds) if seeds is not None else [None] * len(self.envs)
        for i, (env, idx) in enumerate(zip(self.envs, task_indices)):
            options = None if idx is None else {"task_index": int(idx)}
            self.last_obs[i], self.last_info[i] = env.reset(seed=seeds[i], options=options)
            self.done[i] = False
        return list(self.last_obs), [dict(x) for x in self.last_info]

    def active(self) -> list[int]:
        return [i for i, d in enumerate(self.done) if not d]

    def step(self, actions: dict[int, str]):
        """Step the envs named in ``actions`` ({env index: command}).

        Returns {env index: (obs, reward, terminated, truncated, info)}.
        """
        out = {}
        for i, command in actions.items():
            if self.done[i]:
                raise RuntimeError(f"env {i} is finished; reset it first")
            obs, reward, terminated, truncated, info = self.envs[i].step(command)
            self.done[i] = terminated or truncated
            self.last_obs[i], self.last_info[i] = obs, info
            out[i] = (obs, reward, terminated, truncated, info)
        return out


def seeded_rng(seed: Optional[int]) -> np.random.Generator:
    return np.random.default_rng(seed)
