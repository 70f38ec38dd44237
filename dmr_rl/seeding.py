"""Reproducible randomness for rollouts: one generator per episode, keyed by what the episode is.

Every stochastic choice in a rollout (random routing, a sampled router's decision, a sampled
action) draws from the generator of the episode it belongs to::

    episode_rng(run_seed, method, point, seed, task, draw) -> numpy.random.Generator

``draw`` counts how many times the same task already occurred earlier in the same task list (0
for the first occurrence), so a list that repeats a task K times (a GRPO group) gets K different
draws. The key says nothing about batching, worker count, worker index or resumes, so an episode
replayed under any of them makes the same choices. The key is hashed with SHA-256 (stable across
processes and Python versions, unlike ``hash()``) into a :class:`numpy.random.SeedSequence`.

:class:`RowRngs` hands a batch of per-episode generators to code written for one generator
(``router.route(contexts, rng, ...)`` draws ``rng.random(len(contexts))``: row k's value comes from
row k's generator).
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

import numpy as np

RngKey = tuple  # (run_seed, method, point)


def key_words(*parts) -> list:
    """A stable list of 8 uint32 words for any JSON-representable key (ints, strings)."""
    text = json.dumps([p if isinstance(p, (int, float)) and not isinstance(p, bool) else str(p) for p in parts])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]


def episode_rng(run_seed: int, method: str, point, seed: int, task: int, draw: int) -> np.random.Generator:
    """The generator of one episode: (run seed, method, point, evaluation seed, task index, draw)."""
    return np.random.default_rng(np.random.SeedSequence(
        key_words(int(run_seed), str(method), str(point), int(seed), int(task), int(draw))))


def occurrence_draws(task_indices: Sequence[int]) -> list:
    """Per entry: how many times its task occurred earlier in the list. [3, 1, 3, 3] -> [0, 0, 1, 2]."""
    seen: dict = {}
    out = []
    for t in task_indices:
        t = int(t)
        out.append(seen.get(t, 0))
        seen[t] = out[-1] + 1
    return out


def check_rng_key(rng_key, method: str) -> tuple:
    """``(run_seed, method, point)``; None gives ``(0, method, "default")``."""
    if rng_key is None:
        return (0, str(method), "default")
    if len(tuple(rng_key)) != 3:
        raise ValueError(f"rng_key must be (run_seed, method, point), got {rng_key!r}")
    run_seed, m, point = rng_key
    return (int(run_seed), str(m), str(point))


class RowRngs:
    """One generator per row of a batch, usable where one generator is expected.

    ``random(n)`` with n = number of rows gives row k's next float from row k's generator;
    ``row(k)`` is row k's generator itself. Anything that would mix rows raises.
    """

    def __init__(self, generators: Sequence[np.random.Generator]):
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def row(self, k: int) -> np.random.Generator:
        return self.generators[k]

    def subset(self, rows: Sequence[int]) -> "RowRngs":
        return RowRngs([self.generators[k] for k in rows])

    def random(self, size: Optional[int] = None):
        n = len(self.generators)
        if size is None and n == 1:
            return self.generators[0].random()
        if size != n and tuple(np.atleast_1d(size)) != (n,):
            raise ValueError(f"RowRngs.random: {size} draws asked of {n} per-episode generators; "
                             "draw one value per row")
        return np.array([g.random() for g in self.generators])
