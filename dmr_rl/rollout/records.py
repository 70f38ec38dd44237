"""What a rollout records, and the durable store it goes to.

One :class:`StepRecord` is what happened at a decision step (its context is a
:class:`dmr_rl.step.StepContext`); one :class:`EpisodeRecord` is a whole trajectory.
Finished episodes are appended, one JSON line each, to a per-worker shard and flushed to disk
at once (``fsync``), so a worker that dies loses no finished trajectory. :func:`summarise_episodes`
gives the mergeable sums (and rates) a rollout call returns about its episodes.
"""
from __future__ import annotations

import json
import os
import re
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

    Each writer (rollout worker) uses its own shard name; readers merge all shards. Only a torn
    *last* line (a writer killed mid-write: no newline after it) is skipped, with a warning, and a
    writer reopening the shard cuts it off before appending. Any other unreadable line is a
    DataError naming the shard and line, or, with ``skip_corrupt``, skipped and described in the
    ``skipped`` list passed in (``{"path", "line", "reason", "task_index"}``, the task index read
    from the broken text where it survives, else None).
    """

    def __init__(self, directory, shard: str = "main"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{shard}.jsonl"
        self._tail_checked = False

    def append(self, episodes) -> None:
        if isinstance(episodes, EpisodeRecord):
            episodes = [episodes]
        try:
            if not self._tail_checked:
                cut_torn_tail(self.path)
                self._tail_checked = True
            with open(self.path, "a", encoding="utf-8") as f:
                for ep in episodes:
                    f.write(ep.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk says nothing about the file: name it
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None

    @staticmethod
    def read(directory, skip_corrupt: bool = False, skipped: Optional[list] = None) -> list[EpisodeRecord]:
        return list(TrajectoryStore.iter(directory, skip_corrupt, skipped))

    @staticmethod
    def iter(directory, skip_corrupt: bool = False, skipped: Optional[list] = None) -> Iterator[EpisodeRecord]:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no trajectory directory at {directory}")
        for shard in sorted(directory.glob("*.jsonl")):
            yield from TrajectoryStore.read_file(shard, skip_corrupt, skipped)

    @staticmethod
    def read_file(shard, skip_corrupt: bool = False, skipped: Optional[list] = None) -> Iterator[EpisodeRecord]:
        shard = Path(shard)
        data = shard.read_bytes().decode("utf-8", errors="replace")
        lines = data.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise TypeError(f"a JSON {type(obj).__name__}, not an episode record")
                ep = EpisodeRecord.from_dict(obj)
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
                if i == len(lines) - 1:  # no newline after it: a writer killed mid-write
                    warnings.warn(f"{shard}: skipped a torn record on line {i + 1} (the last line)", stacklevel=2)
                    continue
                reason = f"{type(e).__name__}: {e}" if not isinstance(e, json.JSONDecodeError) else "not valid JSON"
                if skip_corrupt:
                    m = _TASK_INDEX.search(line)
                    if skipped is not None:
                        skipped.append({"path": str(shard), "line": i + 1, "reason": reason,
                                        "task_index": int(m.group(1)) if m else None})
                    continue
                raise DataError(f"corrupt episode record on line {i + 1} ({reason}); "
                                "`dmr report --skip-corrupt` skips such lines and says so", path=str(shard)) from None
            yield ep


_TASK_INDEX = re.compile(r'"task_index":\s*(-?\d+)')


def cut_torn_tail(path: Path) -> None:
    """Cut a torn last line (bytes after the last newline) off a shard before appending to it."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)


def summarise_episodes(episodes: list, seconds: float = 0.0) -> dict:
    """Sums over episodes (mergeable) plus the rates they give."""
    steps = sum(e.length for e in episodes)
    s = {"episodes": len(episodes), "won": sum(e.won for e in episodes),
         "score_sum": float(sum(e.score for e in episodes)), "steps": steps,
         "hp_steps": sum(st.tier == HP for e in episodes for st in e.steps),
         "weight_bytes": float(sum(st.weight_bytes for e in episodes for st in e.steps)),
         "prompt_tokens": int(sum(st.prompt_tokens for e in episodes for st in e.steps)),
         "seconds": float(seconds)}
    return with_rates(s)


def with_rates(s: dict) -> dict:
    n, steps = max(1, s["episodes"]), max(1, s["steps"])
    s.update(success_rate=s["won"] / n, mean_score=s["score_sum"] / n, hp_ratio=s["hp_steps"] / steps,
             mean_steps=s["steps"] / n, seconds_per_step=s["seconds"] / steps)
    return s
