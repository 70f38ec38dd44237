"""The decision context of one agent step: the one data type the models, the router and the rollout
layers all read. It lives below all of them (nothing here imports from the project)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepContext:
    """The decision context at one step: the goal, what the agent has seen and done, what it may do."""

    task: str
    obs: str
    history: list = field(default_factory=list)  # [(action, observation)], oldest first
    admissible: list = field(default_factory=list)
    step: int = 0
    task_type: str = ""
