"""Run a policy over episodes of a TextEnv and summarise: the engine behind ``dmr env eval``."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Optional

from environments.base import TextEnv
from environments.policies import Policy


@dataclass
class EpisodeResult:
    task_index: int
    task_id: str
    task_type: str
    won: bool
    score: float
    steps: int
    seconds: float
    actions: list[str] = field(default_factory=list)


def run_episode(env: TextEnv, policy: Policy, task_index: int, record_actions: bool = False) -> EpisodeResult:
    """Play one episode of task ``task_index`` to its end or to the env's step cap."""
    t0 = time.perf_counter()
    obs, info = env.reset(options={"task_index": task_index})
    policy.reset(env)
    actions = []
    done = False
    while not done:
        action = policy.act(obs, info)
        if record_actions:
            actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return EpisodeResult(task_index, info["task_id"], info["task_type"], bool(info["won"]),
                         float(info["score"]), int(info["step"]), time.perf_counter() - t0, actions)


def spread_tasks(num_tasks: int, episodes: int) -> list[int]:
    """``episodes`` task indices spread evenly over ``0..num_tasks-1`` (every task once per pass,
    wrapping when ``episodes`` exceeds the split). Tasks are stored sorted by id, and ids group
    games by task type, so the first k tasks would all be of one type; evenly spaced ones are not."""
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    if num_tasks <= 0:
        raise ValueError("the split has no tasks")
    passes, rest = divmod(episodes, num_tasks)
    return list(range(num_tasks)) * passes + [k * num_tasks // rest for k in range(rest)]


def evaluate_policy(env: TextEnv, policy: Policy, episodes: int) -> dict:
    """Play ``episodes`` episodes over tasks spread evenly over the split (:func:`spread_tasks`)
    and summarise them."""
    results = [run_episode(env, policy, i) for i in spread_tasks(env.num_tasks, episodes)]
    return summarise(results)


def summarise(results: list[EpisodeResult]) -> dict:
    by_type: dict[str, list[EpisodeResult]] = defaultdict(list)
    for r in results:
        by_type[r.task_type].append(r)
    n = len(results)
    return {
        "episodes": n,
        "success_rate": sum(r.won for r in results) / n,
        "mean_score": sum(r.score for r in results) / n,
        "mean_steps": sum(r.steps for r in results) / n,
        "seconds_per_step": sum(r.seconds for r in results) / max(1, sum(r.steps for r in results)),
        "success_by_task_type": {t: sum(r.won for r in rs) / len(rs) for t, rs in sorted(by_type.items())},
        "episodes_detail": [asdict(r) for r in results],
    }
