"""The transformers backend: any local causal-LM checkpoint in fp32, bf16 or fp16, on CPU or GPU.

It is also the engine of the quantized CPU tiers (``compressed``, ``quanto``): they load or
transform a model differently and inherit the three batched calls from here.

Tokenisation contract (the agent relies on it): a candidate/continuation is tokenised on its own
(``add_special_tokens=False``) and appended to the prompt's ids, so put the separating space or
newline where it belongs (in the prompt's tail or the candidate's head) and keep it consistent.

``score_actions`` is the hot path of every rollout step. Two engines compute the same numbers:

* ``packed`` (the default on CPU): one forward per prompt over the prompt's uncached tail and
  the candidates' shared-prefix token tree, with a tree-shaped 4D attention mask
  (:mod:`.packing`); with a session id per prompt the prompt's KV cache is kept across calls
  (bounded LRU, ``max_sessions``) and the next prompt of that session recomputes only the tokens
  after their longest common token prefix. A step costs (new prompt tokens + distinct
  candidate-prefix tokens) positions and no cache copies.
* ``batched`` (the default elsewhere, e.g. CUDA): two batched forwards, all prompts once
  (left-padded, KV cache kept), then every candidate of every prompt as one batch of
  right-padded rows that reuse their prompt's cache (``batch_select_indices``): a prompt of L
  tokens with C candidates costs L + C*len(candidate) positions plus C copies of its cache.

``dtype="auto"`` resolves to bf16 on CUDA and on CPUs with AMX/AVX-512-BF16, else fp32
(:func:`~dmr_rl.models.backends.base.resolve_dtype`); :meth:`TransformersBackend.info` reports it.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np

from dmr_rl.models.backends.base import (ActionScores, Backend, Generation, SamplingParams,
                                         TokenDistributions, resolve_dtype, split_scores)
from dmr_rl.models.backends.packing import (SessionCache, candidate_sums, candidate_tree, common_prefix,
                                            packed_inputs)

#: Largest number of logit elements (rows x tokens x vocab) materialised at once while scoring.
MAX_LOGIT_ELEMENTS = 16_000_000
ENGINES = ("auto", "packed", "batched")


class TransformersBackend(Backend):
    """A causal LM + tokenizer already in memory, or loaded with :meth:`from_dir`."""

    name = "transformers"

    def __init__(self, model, tokenizer, device: str = "cpu", weight_bytes: Optional[float] = None,
                 label: str = "", engine: str = "auto", max_sessions: int = 64) -> None:
        super().__init__()
        from dmr_rl.errors import ModelError
        from dmr_rl.models.checkpoints import param_bytes

        if engine not in ENGINES:
            raise ModelError(f"unknown scoring engine {engine!r}; known: {', '.join(ENGINES)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = device
        self.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        self._weight_bytes = float(weight_bytes if weight_bytes is not None else param_bytes(model))
        self.label = label or self.name
        self.engine = engine if engine != "auto" else ("packed" if str(device) == "cpu" else "batched")
        self.sessions = SessionCache(max_sessions)

    @classmethod
    def from_dir(cls, model_path: str, dtype: str = "auto", device: str = "cpu", engine: str = "auto",
                 max_sessions: int = 64, **_):
        from dmr_rl.models.checkpoints import load_causal_lm, load_tokenizer

        dtype = resolve_dtype(dtype, device)
        tok = load_tokenizer(model_path)
        model = load_causal_lm(model_path, dtype, device)
        return cls(model, tok, device=device, label=f"{cls.name}:{dtype}", engine=engine, max_sessions=max_sessions)

    def info(self) -> dict:
        import torch

        return {**super().info(), "engine": self.engine, "torch_threads": torch.get_num_threads(),
                "session_cache": self.sessions.stats(), "num_layers": self.num_layers}

    def end_sessions(self, sessions: list) -> None:
        self.sessions.end(list(sessions))

    @property
    def weight_bytes(self) -> float:
        return self._weight_bytes

    def _no_grad(self):
        import torch

        return torch.inference_mode()

    # ------------------------------------------------------------------------------------------
    # tokenisation helpers
    # ------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompts: list) -> list:
        ids = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for i, row in enumerate(ids):
            if not row:  # an empty prompt still needs one position to predict from
                ids[i] = [self.tokenizer.eos_token_id]
        return ids

    def _cont_ids(self, text: str) -> list:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # ------------------------------------------------------------------------------------------
    # the shared scoring engine
    # ------------------------------------------------------------------------------------------
    def _left_padded(self, prompt_ids: list) -> tuple:
        """(ids, attention mask, position ids), each [P, longest] int64 on the CPU; left padding,
        so every prompt ends at the last column."""
        import torch

        P, width = len(prompt_ids), max(len(r) for r in prompt_ids)
        ids = torch.full((P, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((P, width), dtype=torch.long)
        for i, r in enumerate(prompt_ids):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _suffix_logprobs(self, prompt_ids: list, suffixes: list, consume: Callable) -> int:
        """Teacher-force every suffix after its prompt and hand its next-token log-probs on.

        prompt_ids: P lists of ids; suffixes: list of (prompt_index, ids). For each suffix j,
        ``consume(j, logprobs)`` gets a float32 tensor [len(ids_j), V]: row t is log p(. | prompt,
        ids_j[:t]). Returns the number of forward passes run.
        """
        import torch

        pad = self.tokenizer.pad_token_id
        dev = self.device
        p_ids, p_mask, p_pos = self._left_padded(prompt_ids)
        p_len = p_mask.sum(-1)
        forwards = 1
        with self._no_grad():
            out = self.model(input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev),
                             position_ids=p_pos.to(dev), use_cache=True, logits_to_keep=1)
            last = out.logits[:, -1, :].float()  # [P, V]
            cache = out.past_key_values
            V = last.shape[-1]
            order = [j for j in range(len(suffixes)) if len(suffixes[j][1]) > 0]
            for j in range(len(suffixes)):
                if not suffixes[j][1]:
                    consume(j, last.new_zeros((0, V)))
            order.sort(key=lambda j: len(suffixes[j][1]))  # similar lengths share a chunk
            k = 0
            while k < len(order):
                lc = len(suffixes[order[k]][1])
                n = 1
                while k + n < len(order):  # grow the chunk while its logits fit the budget
                    lc_next = len(suffixes[order[k + n]][1])
                    if (n + 1) * lc_next * V > MAX_LOGIT_ELEMENTS:
                        break
                    n += 1
                    lc = lc_next
                chunk = order[k:k + n]
                k += n
                idx = torch.tensor([suffixes[j][0] for j in chunk], dtype=torch.long)
                s_ids = torch.full((len(chunk), lc), pad, dtype=torch.long)
                s_mask = torch.zeros((len(chunk), lc), dtype=torch.long)
                for r, j in enumerate(chunk):  # right padding: pads only follow real tokens
                    ids = suffixes[j][1]
                    s_ids[r, :len(ids)] = torch.tensor(ids)
                    s_mask[r, :len(ids)] = 1
                if lc > 1:
                    c = copy.deepcopy(cache)
                    c.batch_select_indices(idx.to(dev))
                    mask = torch.cat([p_mask[idx], s_mask[:, :-1]], dim=1)
                    pos = p_len[idx, None] + torch.arange(lc - 1)[None, :]
                    o = self.model(input_ids=s_ids[:, :-1].to(dev), attention_mask=mask.to(dev),
                                   position_ids=pos.to(dev), past_key_values=c, use_cache=True)
                    forwards += 1
                    logits = torch.cat([last[idx.to(dev)][:, None, :], o.logits.float()], dim=1)
                    del c, o
                else:
                    logits = last[idx.to(dev)][:, None, :]
                logp = torch.log_softmax(logits, dim=-1)
                for r, j in enumerate(chunk):
                    consume(j, logp[r, :len(suffixes[j][1])])
        return forwards

    # ------------------------------------------------------------------------------------------
    # the Backend interface
    # ------------------------------------------------------------------------------------------
    def score_actions(self, prompts: list, candidates: list, sessions: Optional[list] = None) -> list:
        if len(prompts) != len(candidates):
            raise ValueError(f"score_actions: {len(prompts)} prompts but {len(candidates)} candidate lists")
        if sessions is not None and len(sessions) != len(prompts):
            raise ValueError(f"score_actions: {len(prompts)} prompts but {len(sessions)} session ids")
        if not prompts:
            return []
        if self.engine == "packed":
            return self._score_packed(prompts, candidates, sessions or [None] * len(prompts))
        return self._score_batched(prompts, candidates)

    def _score_packed(self, prompts: list, candidates: list, sessions: list) -> list:
        """The packed engine: one forward per prompt over its uncached tail and its candidate tree."""
        import torch
        from transformers import DynamicCache

        out = []
        with self.timed("score") as t:
            p_all = self._prompt_ids(prompts)
            for p_ids, cands, sid in zip(p_all, candidates, sessions):
                c_ids = [self._cont_ids(c) for c in cands]
                tree = candidate_tree(c_ids)
                entry = self.sessions.take(sid) if sid is not None else None
                keep, cache = 0, None
                if entry is not None:
                    keep = min(common_prefix(entry[0], p_ids), len(p_ids) - 1)
                    if keep > 0:
                        cache = entry[1]
                        _crop(cache, keep)
                        self.sessions.reused_tokens += keep
                    else:
                        keep = 0
                if cache is None:
                    cache = DynamicCache(config=self.model.config)
                x = packed_inputs(len(p_ids), keep, p_ids[keep:], tree)
                dev = self.device
                with self._no_grad():
                    o = self.model(input_ids=x["ids"].to(dev), position_ids=x["pos"].to(dev),
                                   attention_mask=x["mask"].to(dev), past_key_values=cache, use_cache=True,
                                   logits_to_keep=x["pred"].to(dev))
                    logp = torch.log_softmax(o.logits[0].float(), dim=-1)  # [R, V]
                    tok = torch.as_tensor(tree.token, device=logp.device)
                    rows = torch.as_tensor(x["node_row"], device=logp.device)
                    node_lp = logp[rows, tok].double().cpu().numpy() if len(tree.token) else np.zeros(0)
                del o, logp
                if sid is not None:
                    _crop(cache, len(p_ids))
                    self.sessions.put(sid, p_ids, cache)
                out.append(ActionScores(sum_logprobs=candidate_sums(tree, node_lp),
                                        num_tokens=np.array([len(c) for c in c_ids], dtype=np.int64)))
                t.record(prompt_tokens=len(p_ids) - keep + len(tree.token))  # positions scored, reuse counted once
        return out

    def _score_batched(self, prompts: list, candidates: list) -> list:
        """The batched engine: all prompts in one forward, all candidate rows in another."""
        import torch

        with self.timed("score") as t:
            p_ids = self._prompt_ids(prompts)
            suffixes = [(i, self._cont_ids(c)) for i, cands in enumerate(candidates) for c in cands]
            sums = np.zeros(len(suffixes), dtype=np.float64)

            def consume(j, logp):
                ids = torch.tensor(suffixes[j][1], dtype=torch.long, device=logp.device)
                if len(ids):
                    sums[j] = float(logp.gather(-1, ids[:, None]).sum())

            fw = self._suffix_logprobs(p_ids, suffixes, consume)
            t.record(prompt_tokens=sum(map(len, p_ids)) + sum(len(s) for _, s in suffixes), forwards=fw)
        return split_scores(candidates, sums, [len(ids) for _, ids in suffixes])

    @property
    def num_layers(self) -> int:
        """Decoder layers of the model (0 when it exposes none as ``model.model.layers``)."""
        return len(self._decoder_layers())

    def _decoder_layers(self) -> list:
        layers = getattr(getattr(self.model, "model", None), "layers", None)
        return list(layers) if layers is not None else []

    def prompt_hidden(self, prompts: list, layer: int = 0) -> list:
        if not prompts:
            return []
        layers = self._decoder_layers() if layer else []
        if layer and not 0 < layer <= len(layers):
            from dmr_rl.errors import ModelError

            raise ModelError(f"prompt_hidden: layer {layer} is not a decoder layer of this model "
                             f"(it has {len(layers)}; 0 reads the last, after the final norm)")
        with self.timed("hidden") as t:
            ids = self._prompt_ids(prompts)
            x, mask, pos = self._left_padded(ids)
            kw = dict(input_ids=x.to(self.device), attention_mask=mask.to(self.device), position_ids=pos.to(self.device))
            with self._no_grad():
                if layer:  # stop the pass after decoder layer `layer`: the layers above it are never run
                    last = _run_until(self.model, layers[layer - 1], kw)[:, -1, :].float().cpu().numpy()
                else:
                    out = self.model(**kw, output_hidden_states=True, logits_to_keep=1)
                    last = out.hidden_states[-1][:, -1, :].float().cpu().numpy()
            t.record(prompt_tokens=sum(map(len, ids)), forwards=layer / len(layers) if layer else 1)
        return [row.copy() for row in last]

    def token_distributions(self, prompts: list, continuations: list, top_k: int = 0) -> list:
        import torch

        if len(prompts) != len(continuations):
            raise ValueError(f"token_distributions: {len(prompts)} prompts but {len(continuations)} continuations")
        if not prompts:
            return []
        with self.timed("distributions") as t:
            p_ids = self._prompt_ids(prompts)
            suffixes = [(i, self._cont_ids(c)) for i, c in enumerate(continuations)]
            results: list = [None] * len(suffixes)

            def consume(j, logp):
                ids = torch.tensor(suffixes[j][1], dtype=torch.long, device=logp.device)
                V = logp.shape[-1]
                k = V if top_k <= 0 or top_k >= V else top_k
                target = logp.gather(-1, ids[:, None])[:, 0] if len(ids) else logp.new_zeros(0)
                if k == V:
                    tok = torch.arange(V, device=logp.device).expand(logp.shape[0], V)
                    top = logp
                    tail = torch.full((logp.shape[0], 1), float("-inf"), device=logp.device)
                else:
                    top, tok = logp.topk(k, dim=-1)
                    rest = logp.scatter(-1, tok, float("-inf"))
                    tail = torch.logsumexp(rest, dim=-1, keepdim=True)
                results[j] = TokenDistributions(token_ids=tok.cpu().numpy().astype(np.int64),
                                                logprobs=torch.cat([top, tail], -1).cpu().numpy(),
                                                target_logprobs=target.cpu().numpy())

            fw = self._suffix_logprobs(p_ids, suffixes, consume)
            t.record(prompt_tokens=sum(map(len, p_ids)) + sum(len(s) for _, s in suffixes), forwards=fw)
        return results

    def generate(self, prompts: list, sampling: SamplingParams) -> list:
        """Greedy (temperature 0) or sampled decoding, cut at the first stop string or eos.

        ``Generation.logprobs`` are the model's own log-probs (temperature 1, before top-p) of the
        kept tokens; ``token_ids`` end with the token that completed the stop string.
        """
        import torch
        from transformers import StoppingCriteriaList

        if not prompts:
            return []
        tok = self.tokenizer
        with self.timed("generate") as t:
            p_ids = self._prompt_ids(prompts)
            L = max(map(len, p_ids))
            ids = torch.full((len(p_ids), L), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(p_ids):
                ids[i, L - len(r):] = torch.tensor(r)
                mask[i, L - len(r):] = 1
            greedy = sampling.temperature <= 0
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=sampling.temperature,
                                                             top_p=sampling.top_p, top_k=0)
            stop = _stop_on_strings(tok, list(sampling.stop), L) if any(sampling.stop) else None
            with self._no_grad():
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, return_dict_in_generate=True, output_logits=True,
                    stopping_criteria=StoppingCriteriaList([stop]) if stop else None, **kw)
            new = out.sequences[:, L:].cpu()
            logps = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu() if out.logits else None
            gens = []
            n_gen = 0
            for i in range(len(p_ids)):
                row = new[i].tolist()
                text, keep = _cut(tok, row, list(sampling.stop), tok.eos_token_id, tok.pad_token_id)
                row = row[:keep]
                lp = [float(logps[i, s, tid]) for s, tid in enumerate(row)] if logps is not None else []
                n_gen += len(row)
                gens.append(Generation(text=text, token_ids=row, logprobs=lp))
            t.record(prompt_tokens=sum(map(len, p_ids)), generated_tokens=n_gen, forwards=new.shape[1])
        return gens


def _crop(cache, length: int) -> None:
    """Cut a DynamicCache back to its first ``length`` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _cut(tok, row: list, stops: list, eos: int, pad: int):
    """Text up to the first stop string / eos and the number of tokens that produced it."""
    keep = len(row)
    for s, tid in enumerate(row):
        if tid == eos:
            keep = s
            break
    row = row[:keep]
    text = tok.decode(row, skip_special_tokens=True)
    cut_at = min([text.find(s) for s in stops if s and s in text], default=-1)
    if cut_at < 0:
        return text, keep
    text = text[:cut_at]
    for n in range(1, len(row) + 1):  # the shortest prefix whose text reaches the stop string
        if any(s in tok.decode(row[:n], skip_special_tokens=True) for s in stops if s):
            return text, n
    return text, keep


def _stop_on_strings(tok, stops: list, prompt_len: int):
    """Per-row stopping criterion: a row is done once its new text contains a stop string."""
    import torch
    from transformers import StoppingCriteria

    stops = [s for s in stops if s]

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tok.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return StopOnStrings()


class _Stop(Exception):
    """Raised by a forward hook to end a model's pass early, carrying the layer's output."""

    def __init__(self, hidden):
        super().__init__("stop")
        self.hidden = hidden


def _run_until(model, module, kwargs: dict):
    """The output hidden states [B, T, H] of ``module`` (a decoder layer) in ``model(**kwargs)``;
    the pass stops there (a forward hook raises), so the modules after it do not run."""
    def hook(_mod, _inp, out):
        raise _Stop(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        model(**kwargs)
    except _Stop as stop:
        return stop.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"{type(module).__name__} did not run in the model's forward pass")
