"""The backend interface: one precision tier of one LLM (model + tokenizer + precision spec).

Every backend (transformers fp32/bf16, a decompressed llm-compressor AWQ checkpoint, quanto,
AutoAWQ on GPU, vLLM) implements these three batched calls and keeps a :class:`CostMeter`.
The agent, the KL labeller and the model-server actor only ever talk to this interface.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

#: Compute dtypes a tier may ask for; ``auto`` is resolved by :func:`resolve_dtype` at load.
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: CPU flags (Linux /proc/cpuinfo names) whose presence makes bf16 matmuls fast (oneDNN uses them).
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file is absent or unreadable)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(dtype: str, device: str = "cpu", flags: Optional[frozenset] = None) -> str:
    """The concrete compute dtype for ``dtype`` on ``device``.

    ``auto``: ``bfloat16`` on CUDA, and on a CPU with AMX-BF16 or AVX-512-BF16 (``flags``, default
    :func:`cpu_flags`), where bf16 linears run ~5x faster than fp32; ``float32`` on other CPUs
    (bf16 there is emulated and slower than fp32). Any other known dtype is returned unchanged."""
    from dmr_rl.errors import ModelError

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if str(device).startswith("cuda"):
        return "bfloat16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in FAST_BF16_FLAGS) else "float32"


@dataclass
class SamplingParams:
    max_new_tokens: int = 24
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple = ("\n",)
    seed: Optional[int] = None


@dataclass
class Generation:
    text: str
    token_ids: list
    logprobs: list  # per generated token, log-prob under the sampling distribution's model


@dataclass
class ActionScores:
    """Log-likelihood of each candidate continuation given one prompt.

    ``sum_logprobs[j]`` = sum over candidate j's tokens of log p(token | prompt, previous tokens);
    ``num_tokens[j]`` its token count. The action distribution is softmax(sum_logprobs).
    """

    sum_logprobs: np.ndarray  # [num_candidates] float
    num_tokens: np.ndarray  # [num_candidates] int


@dataclass
class TokenDistributions:
    """Teacher-forced next-token distributions over one continuation's tokens.

    ``logprobs`` is [T, K+1]: log-probs of the top-K token ids in ``token_ids`` ([T, K]) and a last
    column with log of the remaining (tail) mass; with K = vocab size the tail is -inf.
    ``target_logprobs`` [T] is log p of the continuation's actual tokens.
    """

    token_ids: np.ndarray
    logprobs: np.ndarray
    target_logprobs: np.ndarray


def split_scores(candidates: list, sums, num_tokens) -> list:
    """Per-prompt :class:`ActionScores` from flat per-candidate arrays: ``sums`` [sum_i C_i] float
    summed log-probs and ``num_tokens`` [sum_i C_i] token counts, laid out prompt by prompt in
    ``candidates`` order (prompt i has C_i = len(candidates[i]) candidates)."""
    sums = np.asarray(sums, dtype=np.float64)
    num_tokens = np.asarray(num_tokens, dtype=np.int64)
    total = sum(len(c) for c in candidates)
    if len(sums) != total or len(num_tokens) != total:
        raise ValueError(f"split_scores: {total} candidates but {len(sums)} sums and {len(num_tokens)} token counts")
    out, k = [], 0
    for cands in candidates:
        n = len(cands)
        out.append(ActionScores(sum_logprobs=sums[k:k + n].copy(), num_tokens=num_tokens[k:k + n].copy()))
        k += n
    return out


@dataclass
class CostMeter:
    """Accumulated cost of a backend's calls."""

    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    weight_bytes_read: float = 0.0  # modelled: weight bytes x forward passes
    wall_time_s: float = 0.0
    by_call: dict = field(default_factory=dict)

    def add(self, kind: str, prompt_tokens: int, generated_tokens: int, forwards: int,
            weight_bytes: float, seconds: float) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.weight_bytes_read += forwards * weight_bytes
        self.wall_time_s += seconds
        self.by_call[kind] = self.by_call.get(kind, 0) + 1

    def snapshot(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens, "weight_bytes_read": self.weight_bytes_read,
                "wall_time_s": self.wall_time_s, "by_call": dict(self.by_call)}


class Backend(abc.ABC):
    """One precision tier. Subclasses register in ``dmr_rl.models.BACKENDS``."""

    name: str = "base"

    def __init__(self) -> None:
        self.cost = CostMeter()

    @property
    @abc.abstractmethod
    def weight_bytes(self) -> float:
        """Bytes of weights one forward pass reads (packed size for quantized tiers)."""

    @abc.abstractmethod
    def generate(self, prompts: list, sampling: SamplingParams) -> list:
        """Batched generation: one :class:`Generation` per prompt."""

    @abc.abstractmethod
    def score_actions(self, prompts: list, candidates: list, sessions: Optional[list] = None) -> list:
        """Batched action scoring: ``candidates[i]`` is a list of strings continuing ``prompts[i]``;
        returns one :class:`ActionScores` per prompt.

        ``sessions`` (optional, one hashable id or None per prompt, e.g. the episode's id): a
        backend may keep per-session state across calls (the transformers backend keeps the
        prompt's KV cache and reuses its longest common token prefix with the session's next
        prompt). Results never depend on it, only speed; a backend without such state ignores it.
        Call :meth:`end_sessions` when an episode ends."""

    def end_sessions(self, sessions: list) -> None:
        """Forget the per-session state of ``sessions`` (episodes that ended); unknown ids are ignored."""

    def info(self) -> dict:
        """What this tier runs as, for logs and reports: at least ``backend``, ``label``, ``dtype``
        (the resolved compute dtype) and ``device``."""
        return {"backend": self.name, "label": getattr(self, "label", self.name),
                "dtype": getattr(self, "dtype", ""), "device": getattr(self, "device", "")}

    @abc.abstractmethod
    def token_distributions(self, prompts: list, continuations: list, top_k: int = 0) -> list:
        """Batched teacher-forced distributions over each continuation's tokens (top_k=0: full vocab);
        one :class:`TokenDistributions` per (prompt, continuation)."""

    def prompt_hidden(self, prompts: list, layer: int = 0) -> list:
        """Batched: the model's hidden state at each prompt's last token, one float32 [H] vector per
        prompt (what an ``lp_hidden`` router reads): after the last layer and final norm (``layer``
        0), or the output of decoder layer ``layer`` (the pass stops there, and the cost meter
        counts ``layer / num_layers`` of a forward). Backends without access to hidden states keep
        this default."""
        from dmr_rl.errors import ModelError

        raise ModelError(f"the {self.name} backend does not expose hidden states "
                         "(router.features=lp_hidden needs a transformers-based LP tier)")

    def timed(self, kind: str):
        """Context manager helper: ``with self.timed('score') as t: ...; t.record(...)``."""
        return _Timer(self, kind)


class _Timer:
    def __init__(self, backend: Backend, kind: str):
        self.backend, self.kind = backend, kind
        self.prompt_tokens = self.generated_tokens = self.forwards = 0

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def record(self, prompt_tokens: int = 0, generated_tokens: int = 0, forwards: int = 1) -> None:
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.forwards += forwards

    def __exit__(self, *exc):
        self.backend.cost.add(self.kind, self.prompt_tokens, self.generated_tokens, self.forwards,
                              self.backend.weight_bytes, time.perf_counter() - self.t0)
        return False
