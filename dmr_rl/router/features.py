"""Router inputs: a StepContext -> fixed-length arrays the router network reads.

The default extractor (``tokens``) is self-contained: a hashed word-piece tokenizer (lower-cased
words and numbers; words longer than 8 characters are split into 6-character pieces; each piece
hashed with CRC32, which is stable across processes, into ``vocab_size`` buckets) over

    [CLS] task [SEP] observation [SEP] recent actions (newest last)

padded/truncated to ``max_tokens``, with a segment id per token (0 pad, 1 cls, 2 task, 3 obs,
4 actions) and the step index (clipped to ``max_step - 1``). Budgets: the task keeps its first
max_tokens/4 tokens, the actions their LAST max_tokens/4, the observation the rest (its start).

``lp_hidden`` adds a float vector per context supplied by the caller (the LP model's last hidden
state of the prompt), e.g. ``router.route(contexts, rng, lp_hidden=[vec, ...])``.

Batch dict (numpy): ``tokens`` [B, L] int64, ``segments`` [B, L] int64, ``step`` [B] int64, and
for lp_hidden ``hidden`` [B, H] float32. ``L`` is the longest sequence in the batch (<= max_tokens):
padding beyond it is dropped, which makes small batches cheap.
"""
from __future__ import annotations

import re
import zlib
from typing import Optional

import numpy as np

PAD, CLS, SEP = 0, 1, 2
N_SPECIAL = 8
SEG_PAD, SEG_CLS, SEG_TASK, SEG_OBS, SEG_ACT = 0, 1, 2, 3, 4
N_SEGMENTS = 5
_WORD = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def word_pieces(text: str) -> list:
    """Lower-cased words, numbers and punctuation; long words split into 6-character pieces."""
    out = []
    for w in _WORD.findall(text.lower()):
        if len(w) > 8 and w.isalpha():
            out.append(w[:6])
            out += ["##" + w[i:i + 6] for i in range(6, len(w), 6)]
        else:
            out.append(w)
    return out


def hash_piece(piece: str, vocab_size: int) -> int:
    return N_SPECIAL + zlib.crc32(piece.encode("utf-8")) % (vocab_size - N_SPECIAL)


class TokenFeatures:
    """The default extractor: hashed word pieces of task, observation and recent actions."""

    name = "tokens"

    def __init__(self, vocab_size: int = 4096, max_tokens: int = 256, max_step: int = 64,
                 recent_actions: int = 4, **_):
        if vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed {N_SPECIAL}, got {vocab_size}")
        if max_tokens < 8:
            raise ValueError(f"router max_tokens must be at least 8, got {max_tokens}")
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.max_step, self.recent_actions = max_step, recent_actions
        self._cache: dict = {}

    def _ids(self, text: str) -> list:
        ids = self._cache.get(text)
        if ids is None:
            ids = [hash_piece(p, self.vocab_size) for p in word_pieces(text)]
            if len(self._cache) < 50_000:
                self._cache[text] = ids
        return ids

    def encode(self, ctx) -> tuple:
        """One StepContext -> (token ids list, segment ids list, step int)."""
        quarter = max(1, self.max_tokens // 4)
        task = self._ids(ctx.task)[:quarter]
        acts = []
        for item in list(ctx.history)[-self.recent_actions:] if self.recent_actions else []:
            action = item[0] if isinstance(item, (list, tuple)) else str(item)
            acts += self._ids(action) + [SEP]
        acts = acts[-quarter:]
        room = self.max_tokens - 3 - len(task) - len(acts)
        obs = self._ids(ctx.obs)[:max(0, room)]
        ids = [CLS] + task + [SEP] + obs + [SEP] + acts
        segs = ([SEG_CLS] + [SEG_TASK] * (len(task) + 1) + [SEG_OBS] * (len(obs) + 1)
                + [SEG_ACT] * len(acts))
        return ids[:self.max_tokens], segs[:self.max_tokens], min(int(ctx.step), self.max_step - 1)

    def __call__(self, contexts: list, lp_hidden: Optional[list] = None) -> dict:
        if not contexts:
            raise ValueError("feature extraction of an empty batch of contexts")
        enc = [self.encode(c) for c in contexts]
        L = max(len(e[0]) for e in enc)
        tokens = np.zeros((len(enc), L), dtype=np.int64)
        segments = np.zeros((len(enc), L), dtype=np.int64)
        for i, (ids, segs, _) in enumerate(enc):
            tokens[i, :len(ids)] = ids
            segments[i, :len(segs)] = segs
        return {"tokens": tokens, "segments": segments,
                "step": np.array([e[2] for e in enc], dtype=np.int64)}


class LPHiddenFeatures(TokenFeatures):
    """Tokens plus a caller-supplied vector per context (the LP model's last hidden state)."""

    name = "lp_hidden"

    def __init__(self, hidden_dim: int = 0, **kw):
        super().__init__(**kw)
        if hidden_dim <= 0:
            raise ValueError("lp_hidden features need hidden_dim > 0 (the LP model's hidden size)")
        self.hidden_dim = hidden_dim

    def __call__(self, contexts: list, lp_hidden: Optional[list] = None) -> dict:
        out = super().__call__(contexts)
        if lp_hidden is None or len(lp_hidden) != len(contexts):
            raise ValueError(f"lp_hidden features need one hidden vector per context "
                             f"({len(contexts)}), got {None if lp_hidden is None else len(lp_hidden)}")
        if any(v is None for v in lp_hidden):
            raise ValueError("lp_hidden features: a context has no hidden vector (None); the rollout "
                             "must record the LP model's hidden state at every step")
        h = np.asarray(np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in lp_hidden]))
        if h.shape[1] != self.hidden_dim:
            raise ValueError(f"lp_hidden vectors have size {h.shape[1]}, router expects {self.hidden_dim}")
        out["hidden"] = h
        return out


FEATURE_EXTRACTORS = {"tokens": TokenFeatures, "lp_hidden": LPHiddenFeatures}


def make_extractor(name: str, **kw):
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown router feature extractor {name!r}; known: {sorted(FEATURE_EXTRACTORS)}")
    return FEATURE_EXTRACTORS[name](**kw)


def pad_batch(rows: list) -> dict:
    """Concatenate per-context feature dicts (ragged L) into one batch dict padded to max L."""
    L = max(r["tokens"].shape[-1] for r in rows)
    out = {}
    for key in ("tokens", "segments"):
        parts = [np.pad(np.atleast_2d(r[key]), ((0, 0), (0, L - r[key].shape[-1]))) for r in rows]
        out[key] = np.concatenate(parts).astype(np.int64)
    out["step"] = np.concatenate([np.atleast_1d(r["step"]) for r in rows]).astype(np.int64)
    if all("hidden" in r for r in rows):
        out["hidden"] = np.concatenate([np.atleast_2d(r["hidden"]) for r in rows]).astype(np.float32)
    return out


def contexts_from_episode(episode) -> list:
    """The StepContext the router saw at each recorded step of an ``EpisodeRecord``.

    history at step t = [(action_i, obs_{i+1}) for i < t] (each action with the observation it
    led to), as the agent builds it.
    """
    from dmr_rl.step import StepContext

    steps = episode.steps
    out = []
    for t, s in enumerate(steps):
        history = [(steps[i].action, steps[i + 1].obs) for i in range(t)]
        out.append(StepContext(task=episode.task, obs=s.obs, history=history,
                               admissible=list(s.admissible), step=int(s.step),
                               task_type=episode.task_type))
    return out


def features_in_chunks(extractor, contexts: list, lp_hidden: Optional[list] = None,
                       chunk: int = 512) -> dict:
    """Extract features of many contexts (chunked), padded to one common length."""
    rows = []
    for i in range(0, len(contexts), chunk):
        hid = None if lp_hidden is None else lp_hidden[i:i + chunk]
        rows.append(extractor(contexts[i:i + chunk], lp_hidden=hid))
    return pad_batch(rows)
