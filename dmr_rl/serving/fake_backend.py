"""A deterministic, model-free Backend for plumbing tests and smoke runs of the serving layer.

Its outputs are pure functions of (salt, prompt, continuation): the same request gives the same
answer whether it is served alone or inside a batch, on any replica, in any process. Two
instances with the same salt are "the same model" (KL 0); different salts give different
distributions. ``delay_s`` emulates the time of one forward (per call, not per row), so a test
can see what batching saves. It knows nothing about language: use a real backend for quality.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from dmr_rl.models.backends.base import ActionScores, Backend, Generation, TokenDistributions

VOCAB = 16
HIDDEN = 8  # size of prompt_hidden vectors
LAYERS = 4  # decoder layers prompt_hidden(layer=k) can stop after


def _unit(*parts) -> float:
    """A stable pseudo-random number in [0, 1) from its arguments."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, salt: str = "hp", delay_s: float = 0.0, weight_bytes: float = 1e6,
                 sharpness: float = 4.0):
        super().__init__()
        self.salt, self.delay_s, self._weight_bytes, self.sharpness = salt, float(delay_s), float(weight_bytes), sharpness
        self.session_calls = 0  # score_actions rows that carried a session id
        self.ended: list = []  # ids passed to end_sessions, in order

    def end_sessions(self, sessions: list) -> None:
        self.ended.extend(sessions)

    def info(self) -> dict:
        return {**super().info(), "session_calls": self.session_calls, "ended_sessions": len(self.ended),
                "num_layers": LAYERS}

    @property
    def weight_bytes(self) -> float:
        return self._weight_bytes

    def _tokens(self, text: str) -> list:
        return [int(_unit("tok", w) * VOCAB) for w in text.split()] or [0]

    def score_actions(self, prompts: list, candidates: list, sessions=None) -> list:
        """``sessions`` only counts in ``session_calls`` (rows that carried one); results never depend on it."""
        self.session_calls += sum(s is not None for s in (sessions or []))
        with self.timed("score") as t:
            time.sleep(self.delay_s)
            out = []
            for p, cands in zip(prompts, candidates):
                lens = np.array([len(self._tokens(c)) for c in cands], dtype=np.int64)
                lp = np.array([-self.sharpness * _unit(self.salt, p, c) - n for c, n in zip(cands, lens)])
                out.append(ActionScores(sum_logprobs=lp, num_tokens=lens))
                t.record(prompt_tokens=len(self._tokens(p)) + int(lens.sum()), forwards=0)
            t.record(forwards=1)
        return out

    def token_distributions(self, prompts: list, continuations: list, top_k: int = 0) -> list:
        with self.timed("token_distributions") as t:
            time.sleep(self.delay_s)
            out = []
            for p, c in zip(prompts, continuations):
                targets = self._tokens(c)
                logits = np.array([[self.sharpness * _unit(self.salt, p, c, i, v) for v in range(VOCAB)]
                                   for i in range(len(targets))])
                logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
                ids = np.tile(np.arange(VOCAB), (len(targets), 1))
                full = np.concatenate([logp, np.full((len(targets), 1), -np.inf)], axis=1)
                tgt = logp[np.arange(len(targets)), targets]
                out.append(TokenDistributions(token_ids=ids, logprobs=full, target_logprobs=tgt))
                t.record(prompt_tokens=len(self._tokens(p)) + len(targets), forwards=0)
            t.record(forwards=1)
        return out

    def prompt_hidden(self, prompts: list, layer: int = 0) -> list:
        if not 0 <= layer <= LAYERS:
            from dmr_rl.errors import ModelError

            raise ModelError(f"prompt_hidden: layer {layer} is not a decoder layer of this model (it has {LAYERS})")
        with self.timed("hidden") as t:
            time.sleep(self.delay_s)
            out = [np.array([_unit(self.salt, "hid", layer, p, i) for i in range(HIDDEN)], dtype=np.float32)
                   for p in prompts]
            t.record(prompt_tokens=sum(len(self._tokens(p)) for p in prompts), forwards=layer / LAYERS if layer else 1)
        return out

    def generate(self, prompts: list, sampling) -> list:
        with self.timed("generate") as t:
            time.sleep(self.delay_s)
            out = []
            for p in prompts:
                word = f"w{int(_unit(self.salt, 'gen', p) * 5)}"
                ids = self._tokens(word)
                out.append(Generation(text=word, token_ids=ids, logprobs=[-0.1] * len(ids)))
                t.record(prompt_tokens=len(self._tokens(p)), generated_tokens=len(ids), forwards=0)
            t.record(forwards=max(1, sampling.max_new_tokens if sampling else 1))
        return out
