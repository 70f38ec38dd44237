"""Scoring every candidate of one step in one forward: a token tree over the cached prompt (pure).

The candidates of a step share many leading tokens ("go to cabinet 1", "go to cabinet 2", ...).
:func:`candidate_tree` merges them into a prefix tree of token nodes; :func:`packed_inputs` lays
the prompt's uncached tail and the tree's *inner* nodes out as one sequence whose 4D attention
mask lets each node see the whole prompt and its own ancestors only, at position
``len(prompt) + depth``. Every node then has exactly the context it has in its own
``prompt + candidate`` sequence, so one causal-LM forward gives each candidate the log-likelihood
it gets alone (up to floating-point summation order). Leaves are never fed in: their log-prob is
read from their parent's logits, as the last token of a sequence is never an input either.

:class:`SessionCache` is the bounded LRU of per-episode KV caches the transformers backend keeps
across steps (a step's prompt reuses the longest common token prefix with the session's previous
prompt).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np


@dataclass
class CandidateTree:
    """Prefix tree of candidate token lists.

    ``token[n]``, ``parent[n]`` (-1: the prompt), ``depth[n]`` (0: first candidate token) per node
    [N]; ``inner[n]``: the node has children; ``paths[j]``: node indices of candidate j's tokens."""

    token: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    inner: np.ndarray
    paths: list


def candidate_tree(cands: list) -> CandidateTree:
    """The prefix tree of ``cands`` (lists of token ids; duplicates and empty lists allowed)."""
    children: dict = {}
    token, parent, depth, paths = [], [], [], []
    for ids in cands:
        node, path = -1, []
        for d, t in enumerate(ids):
            key = (node, int(t))
            if key not in children:
                children[key] = len(token)
                token.append(int(t))
                parent.append(node)
                depth.append(d)
            node = children[key]
            path.append(node)
        paths.append(path)
    parent_a = np.array(parent, dtype=np.int64)
    inner = np.zeros(len(token), dtype=bool)
    inner[parent_a[parent_a >= 0]] = True
    return CandidateTree(token=np.array(token, dtype=np.int64), parent=parent_a,
                         depth=np.array(depth, dtype=np.int64), inner=inner, paths=paths)


def packed_inputs(prompt_len: int, keep: int, tail: list, tree: CandidateTree) -> dict:
    """One forward's inputs for a prompt of ``prompt_len`` tokens whose first ``keep`` are cached.

    tail: the prompt's ids from ``keep`` on (at least one). Returns ``ids`` [1, Q] (tail, then the
    tree's inner nodes), ``pos`` [1, Q], ``mask`` [1, 1, Q, keep + Q] bool (True: may attend),
    ``pred`` [R] sequence indices whose logits are needed (the prompt's last token, then each inner
    node) and ``node_row`` [N]: for each tree node, the row of ``pred`` that predicts it."""
    import torch

    if not 0 <= keep < prompt_len or len(tail) != prompt_len - keep:
        raise ValueError(f"packed_inputs: keep={keep}, tail of {len(tail)} for a prompt of {prompt_len}")
    inner = np.flatnonzero(tree.inner)
    T, M = len(tail), len(inner)
    Q = T + M
    seq_of = np.full(len(tree.token), -1, dtype=np.int64)  # node -> its index in the sequence
    seq_of[inner] = T + np.arange(M)
    ids = torch.tensor(list(tail) + tree.token[inner].tolist(), dtype=torch.long)[None]
    pos = torch.tensor(list(range(keep, prompt_len)) + (prompt_len + tree.depth[inner]).tolist(),
                       dtype=torch.long)[None]
    mask = np.zeros((Q, keep + Q), dtype=bool)
    mask[:, :keep] = True
    mask[:T, keep:keep + T] = np.tril(np.ones((T, T), dtype=bool))
    mask[T:, keep:keep + T] = True  # nodes see the whole prompt
    for r, n in enumerate(inner):  # ... and their ancestors and themselves
        a = n
        while a >= 0:
            mask[T + r, keep + seq_of[a]] = True
            a = tree.parent[a]
    pred = np.concatenate([[T - 1], T + np.arange(M)]).astype(np.int64)
    row_of_inner = np.full(len(tree.token), -1, dtype=np.int64)
    row_of_inner[inner] = 1 + np.arange(M)
    node_row = np.where(tree.parent < 0, 0, row_of_inner[np.maximum(tree.parent, 0)])
    return {"ids": ids, "pos": pos, "mask": torch.from_numpy(mask)[None, None], "pred": torch.from_numpy(pred),
            "node_row": node_row}


def candidate_sums(tree: CandidateTree, node_logprob: np.ndarray) -> np.ndarray:
    """[C] sum of each candidate's node log-probs ([N] float); 0 for an empty candidate."""
    return np.array([float(node_logprob[p].sum()) if p else 0.0 for p in tree.paths], dtype=np.float64)


def common_prefix(a: list, b: list) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if len(diff) else n


class SessionCache:
    """Bounded LRU of per-session (prompt ids, KV cache) pairs.

    ``take(sid)`` removes and returns a session's entry (None when absent), ``put`` stores it as
    the most recent, evicting the least recently used beyond ``max_sessions``; ``end`` drops
    sessions that ended. Counters: hits (an entry was found), reused_tokens, evictions."""

    def __init__(self, max_sessions: int = 64):
        if max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {max_sessions}")
        self.max_sessions = int(max_sessions)
        self._entries: OrderedDict = OrderedDict()
        self.hits = self.misses = self.reused_tokens = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sid: Hashable) -> bool:
        return sid in self._entries

    def take(self, sid: Hashable):
        entry = self._entries.pop(sid, None)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, sid: Hashable, ids: list, cache: Any) -> None:
        if self.max_sessions == 0:
            return
        self._entries.pop(sid, None)
        self._entries[sid] = (list(ids), cache)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)
            self.evictions += 1

    def end(self, sessions: list) -> None:
        for sid in sessions:
            self._entries.pop(sid, None)

    def stats(self) -> dict:
        return {"sessions": len(self._entries), "max_sessions": self.max_sessions, "hits": self.hits,
                "misses": self.misses, "reused_tokens": self.reused_tokens, "evictions": self.evictions}
