"""Turning a model's output into an admissible action: score mode and generate mode (pure, no Ray).

Score mode
    The backend scores every admissible action as a continuation of the prompt
    (:class:`~dmr_rl.models.backends.base.ActionScores`). The per-step action distribution is
    ``softmax(sum_logprobs / T)`` over the admissible actions: the **sum** of token log-probs,
    not length-normalised. That is the model's own probability of each whole action
    (renormalised over the admissible set), the quantity the project's agent is trained on
    (contrastive loss over the admissible actions) and the one ``kl.action_kl`` compares across
    tiers. ``length_normalised=True`` switches to the mean per-token log-prob, a common
    heuristic for models that were not trained on the action set.
    Temperature 0 takes the argmax (ties: the first) and reports the T=1 distribution;
    T > 0 samples from, and reports, the tempered distribution.

Generate mode
    The model writes free text; :func:`match_action` maps it onto the admissible list (exact,
    then normalised, then prefix, then fuzzy). The distribution is one-hot on the match
    (:func:`one_hot`): generation yields one action, not a distribution over the set.
"""
from __future__ import annotations

import difflib
import re
from typing import Optional, Sequence

import numpy as np

_SPACES = re.compile(r"\s+")


def action_logits(scores, length_normalised: bool = False) -> np.ndarray:
    """[C] logits of the action distribution from an ActionScores (sum or mean log-prob)."""
    s = np.asarray(scores.sum_logprobs, dtype=np.float64)
    if length_normalised:
        s = s / np.maximum(np.asarray(scores.num_tokens, dtype=np.float64), 1.0)
    return s


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of [C] logits at ``temperature`` (> 0); -inf entries get 0."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    finite = np.isfinite(z)
    if not finite.any():
        return np.full(z.shape, 1.0 / max(1, z.size))
    z = np.where(finite, z - z[finite].max(), -np.inf)
    e = np.exp(z)
    return e / e.sum()


def choose_action(scores, candidates: Sequence[str], temperature: float = 0.0,
                  rng: Optional[np.random.Generator] = None,
                  length_normalised: bool = False) -> tuple[int, np.ndarray]:
    """Pick one of ``candidates`` from their scores. Returns (index, probs [C]).

    ``temperature`` 0: argmax; > 0: sample from ``softmax(logits / temperature)`` with ``rng``.
    """
    logits = action_logits(scores, length_normalised)
    if len(candidates) == 0:
        raise ValueError("choose_action needs at least one candidate action")
    if logits.shape != (len(candidates),):
        raise ValueError(f"scores cover {logits.shape[0] if logits.ndim else 0} actions "
                         f"but {len(candidates)} candidates were given")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        probs = softmax(logits, 1.0)
        return int(np.argmax(logits)), probs
    probs = softmax(logits, temperature)
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(len(candidates), p=probs)), probs


def normalise_command(text: str) -> str:
    """Lower-case, first line only, no leading prompt marker, single spaces, no end punctuation."""
    text = str(text).strip()
    for line in text.splitlines():
        if line.strip():
            text = line
            break
    text = text.strip().lstrip(">").strip()
    text = re.sub(r"^(action|act|command)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.strip().strip("\"'`").rstrip(".!;,").strip()
    return _SPACES.sub(" ", text).lower()


def match_action(text: str, admissible: Sequence[str]) -> str:
    """Map generated ``text`` to one admissible command: exact, normalised, prefix, then fuzzy.

    Prefix: a command that starts with the text (an unfinished generation), else the longest
    command the text starts with (a generation that ran on). Fuzzy: highest similarity ratio
    (rapidfuzz when installed, difflib otherwise). An empty ``admissible`` list is an error.
    """
    if not admissible:
        raise ValueError("match_action needs a non-empty admissible list")
    admissible = [str(a) for a in admissible]
    if text in admissible:
        return text
    t = normalise_command(text)
    norm = [normalise_command(a) for a in admissible]
    if t in norm:
        return admissible[norm.index(t)]
    if t:
        starts = [i for i, a in enumerate(norm) if a.startswith(t)]
        if starts:
            return admissible[min(starts, key=lambda i: len(norm[i]))]
        within = [i for i, a in enumerate(norm) if a and t.startswith(a + " ")]
        if within:
            return admissible[max(within, key=lambda i: len(norm[i]))]
    return admissible[int(np.argmax(_similarities(t, norm)))]


def _similarities(text: str, options: list[str]) -> np.ndarray:
    try:
        from rapidfuzz import fuzz

        return np.array([fuzz.ratio(text, o) for o in options], dtype=np.float64)
    except ImportError:  # pragma: no cover - rapidfuzz is a dependency; difflib is the fallback
        return np.array([difflib.SequenceMatcher(None, text, o).ratio() for o in options])


def one_hot(index: int, size: int) -> np.ndarray:
    """The generate-mode action distribution: all mass on the matched action."""
    p = np.zeros(size, dtype=np.float64)
    p[index] = 1.0
    return p
