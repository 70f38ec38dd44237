"""What a rollout records, and the durable store it goes to.

One :class:`StepRecord` is what happened at a decision step (its context is a
:class:`dmr_rl.step.StepContext`); one :class:`EpisodeRecord` is a whole trajectory.
Finished episodes are appended, one JSON line each, to a per-worker shard and flushed to disk
at once (``fsync``), so a worker that dies loses no finished trajectory.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from environments.errors import DataError

HP, LP = 1, 0
TIER_NAMES = {HP: "hp", LP: "lp"}


@dataclass
class StepRecord:
    step: int
    obs: str
    action: str
    tier: int  # HP=1, LP=0
    admissible: list = field(default_factory=list)
    prompt: str = ""
    router_prob: float = float("nan")  # P(HP) the router gave
    router_logprob: float = float("nan")  # log-prob of the chosen tier under the router
    reward: float = 0.0
    prompt_tokens: int = 0
    gen_tokens: int = 0
    weight_bytes: float = 0.0  # modelled weight bytes read for this step's forward(s)
    latency_s: float = 0.0
    kl: Optional[float] = None  # KL(P_HP || P_LP) at this step, when computed
    extra: dict = field(default_factory=dict)


@dataclass
class EpisodeRecord:
    episode_id: str
    task_index: int
    task_id: str
    task_type: str
    task: str
    method: str = ""
    seed: int = 0
    won: bool = False
    score: float = 0.0
    steps: list = field(default_factory=list)  # list[StepRecord]
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.steps)

    @property
    def hp_ratio(self) -> float:
        return sum(s.tier == HP for s in self.steps) / max(1, len(self.steps))

    def to_json(self) -> str:
        d = asdict(self)
        d["hp_ratio"] = self.hp_ratio
        d["length"] = self.length
        return json.dumps(d)

    @classmethod
    def from_dict(cls, d: dict) -> "EpisodeRecord":
        d = dict(d)
        d.pop("hp_ratio", None)
        d.pop("length", None)
        d["steps"] = [StepRecord(**s) for s in d.get("steps", [])]
        return cls(**d)


class TrajectoryStore:
    """Append-only JSONL shards under one directory: ``<dir>/<shard>.jsonl``.

    Each writer (rollout worker) uses its own shard name; readers merge all shards. A torn line
    (a worker killed mid-write) is skipped with a warning; a well-formed line that is not an
    episode record raises DataError naming the shard and line.
    """

    def __init__(self, directory, shard: str = "main"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{shard}.jsonl"

    def append(self, episodes) -> None:
        if isinstance(episodes, EpisodeRecord):
            episodes = [episodes]
        with open(self.path, "a", encoding="utf-8") as f:
            for ep in episodes:
                f.write(ep.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def read(directory) -> list[EpisodeRecord]:
        return list(TrajectoryStore.iter(directory))

    @staticmethod
    def iter(directory) -> Iterator[EpisodeRecord]:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no trajectory directory at {directory}")
        for shard in sorted(directory.glob("*.jsonl")):
            with open(shard, encoding="utf-8") as f:
                lines = f.read().split("\n")
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a writer killed mid-write: unrecoverable
                    warnings.warn(f"{shard}: skipped a torn record on line {i + 1}", stacklevel=2)
                    continue
                try:
                    yield EpisodeRecord.from_dict(obj)
                except (TypeError, KeyError) as e:
                    raise DataError(f"malformed episode record on line {i + 1}: {e}", path=str(shard)) from None
