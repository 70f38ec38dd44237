"""The score-mode behaviour-cloning objective of ``dmr train agent``: model, packing, loss, loop.

Each step is packed as one sequence ``prompt + a_1 + ... + a_C`` with a tree attention mask
(every candidate sees the prompt and itself, not the other candidates), so one forward scores
all candidates: ``s_j = sum_t log p(a_j,t | prompt, a_j,<t)``. Loss = cross-entropy of
``softmax(s)`` against the teacher's action (exactly how score mode acts; label-smoothed over the
candidates) + ``lm_weight`` x the teacher action's per-token negative log-likelihood.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass


def build_model(cfg, tokenizer):
    """A small ``LlamaForCausalLM`` (tied embeddings) sized by ``cfg`` (a TrainAgentConfig)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    mc = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 3,
                     num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                     num_key_value_heads=cfg.heads, max_position_embeddings=1024,
                     tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=None, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(mc)
    model.config._attn_implementation = "sdpa"
    return model


def load_init_model(init: str, train_layers: int):
    """(model, tokenizer) to fine-tune instead of building one: ``init`` is ``smollm2`` (the
    registry's SmolLM2-135M-Instruct, converted once, see :mod:`dmr_rl.models.smollm2`) or a local
    checkpoint directory. Only the top ``train_layers`` decoder layers and the final norm train
    (0: every parameter); the frozen rest needs no backward pass, which is what makes a 135M model
    trainable on 2 CPU cores."""
    from dmr_rl.errors import ModelError
    from dmr_rl.models.checkpoints import load_causal_lm, load_tokenizer

    if init == "smollm2":
        from dmr_rl.models.smollm2 import fetch_smollm2

        path = str(fetch_smollm2())
    else:
        path = init
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, "float32", "cpu")
    layers = model.model.layers
    if train_layers < 0 or train_layers > len(layers):
        raise ModelError(f"--train-layers {train_layers} is outside 0..{len(layers)} (the layers of {path})")
    if train_layers:
        model.requires_grad_(False)
        for module in list(layers[len(layers) - train_layers:]) + [model.model.norm]:
            module.requires_grad_(True)
    return model, tokenizer


@dataclass
class Encoded:
    prompt: list
    cands: list  # list of id lists
    target: int


def encode(samples: list, tokenizer, max_prompt_tokens: int, cache: dict) -> list:
    out = []
    for s in samples:
        p = tokenizer(s.prompt, add_special_tokens=True)["input_ids"][-max_prompt_tokens:]
        cands = []
        for a in s.admissible:
            if a not in cache:
                cache[a] = tokenizer(a, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            cands.append(cache[a])
        out.append(Encoded(p, cands, s.target))
    return out


def pack_batch(batch: list, max_candidates: int, rng: random.Random):
    """Pack each example as prompt + candidates with a tree mask (see the module docstring).

    Returns tensors: ids [B, L], pos [B, L], mask [B, 1, L, L] bool, and for the loss
    pred_b, pred_pos, tgt, cand_of [N] (one per candidate token), cand_valid [B, C], target [B]."""
    import torch

    rows, segs, poss = [], [], []
    pred_b, pred_pos, tgt, cand_of = [], [], [], []
    targets, n_cands = [], []
    C = 0
    for b, ex in enumerate(batch):
        idx = list(range(len(ex.cands)))
        if len(idx) > max_candidates:
            others = [i for i in idx if i != ex.target]
            idx = [ex.target] + rng.sample(others, max_candidates - 1)
        rng.shuffle(idx)
        targets.append(idx.index(ex.target))
        n_cands.append(len(idx))
        C = max(C, len(idx))
        ids, seg = list(ex.prompt), [0] * len(ex.prompt)
        pos = list(range(len(ex.prompt)))
        P = len(ex.prompt)
        for j, ci in enumerate(idx):
            c = ex.cands[ci]
            start = len(ids)
            for t, tok in enumerate(c):
                pred_b.append(b)
                pred_pos.append(P - 1 if t == 0 else start + t - 1)
                tgt.append(tok)
                cand_of.append(b * 10_000 + j)
            ids += c
            seg += [j + 1] * len(c)
            pos += list(range(P, P + len(c)))
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    L = max(map(len, rows))
    B = len(batch)
    ids_t = torch.zeros((B, L), dtype=torch.long)
    seg_t = torch.full((B, L), -1, dtype=torch.long)
    pos_t = torch.zeros((B, L), dtype=torch.long)
    for b in range(B):
        n = len(rows[b])
        ids_t[b, :n] = torch.tensor(rows[b])
        seg_t[b, :n] = torch.tensor(segs[b])
        pos_t[b, :n] = torch.tensor(poss[b])
    causal = torch.ones((L, L), dtype=torch.bool).tril()
    same = (seg_t[:, :, None] == seg_t[:, None, :]) | (seg_t[:, None, :] == 0)
    mask = (causal[None] & same)[:, None]
    cand_flat = torch.tensor(cand_of)
    cand_b, cand_j = cand_flat // 10_000, cand_flat % 10_000
    valid = torch.zeros((B, C), dtype=torch.bool)
    for b, n in enumerate(n_cands):
        valid[b, :n] = True
    return dict(ids=ids_t, pos=pos_t, mask=mask, pred_b=torch.tensor(pred_b), pred_pos=torch.tensor(pred_pos),
                tgt=torch.tensor(tgt), cand_b=cand_b, cand_j=cand_j, valid=valid,
                target=torch.tensor(targets), C=C)


def score_loss(model, packed: dict, lm_weight: float, label_smoothing: float = 0.0):
    """(loss, metrics) of one packed batch: candidate cross-entropy (label-smoothed over the valid
    candidates) + lm_weight x the teacher action's per-token NLL."""
    import torch

    hidden = model.model(input_ids=packed["ids"], attention_mask=packed["mask"],
                         position_ids=packed["pos"]).last_hidden_state
    h = hidden[packed["pred_b"], packed["pred_pos"]]  # [N, H]
    logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
    tok_lp = logp.gather(-1, packed["tgt"][:, None])[:, 0]  # [N]
    B, C = packed["valid"].shape
    sums = torch.zeros((B, C), dtype=tok_lp.dtype).index_put((packed["cand_b"], packed["cand_j"]), tok_lp,
                                                              accumulate=True)
    counts = torch.zeros((B, C)).index_put((packed["cand_b"], packed["cand_j"]), torch.ones_like(tok_lp),
                                           accumulate=True)
    logits = sums.masked_fill(~packed["valid"], float("-inf"))
    ar = torch.arange(B)
    logq = torch.log_softmax(logits, dim=-1)
    nll = -logq[ar, packed["target"]]
    uniform = -(logq.masked_fill(~packed["valid"], 0.0).sum(-1) / packed["valid"].sum(-1))
    ce = ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()
    lm = -(sums[ar, packed["target"]] / counts[ar, packed["target"]].clamp(min=1)).mean()
    loss = ce + lm_weight * lm
    acc = (logits.argmax(-1) == packed["target"]).float().mean()
    return loss, {"ce": float(ce.detach()), "lm": float(lm.detach()), "acc": float(acc)}


def train_for(model, data: list, seconds: float, cfg, opt, rng: random.Random,
              log: list, step0: int = 0, max_steps: int = 0, progress=None) -> int:
    """Minibatch steps over ``data`` until ``seconds`` pass (or ``max_steps``). Returns steps done.
    With ``cfg.bf16`` the forward and backward run under bf16 autocast (weights and optimizer
    state stay fp32)."""
    import torch

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if getattr(cfg, "bf16", False)
                else contextlib.nullcontext())
    model.train()
    t_end = time.perf_counter() + seconds
    order: list = []
    steps = 0
    while time.perf_counter() < t_end and (max_steps <= 0 or steps < max_steps):
        if len(order) < cfg.batch_size:
            order += _length_bucketed(data, cfg.batch_size, rng)
        batch = [data[i] for i in order[:cfg.batch_size]]
        del order[:cfg.batch_size]
        packed = pack_batch(batch, cfg.max_candidates, rng)
        with autocast:
            loss, metrics = score_loss(model, packed, cfg.lm_weight, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        steps += 1
        if (step0 + steps) % 10 == 0:
            log.append({"step": step0 + steps, "loss": float(loss.detach()), **metrics})
            if progress is not None:
                progress(f"step {step0 + steps}: loss {log[-1]['loss']:.3f} acc {metrics['acc']:.2f} "
                         f"({(time.perf_counter() - t_end + seconds) / steps:.1f} s/step)")
    model.eval()
    return steps


def _length_bucketed(data: list, batch_size: int, rng: random.Random, chunk_batches: int = 16) -> list:
    """One epoch's order: shuffled, then sorted by prompt length within chunks of ``chunk_batches``
    batches (stable: prompts of equal length keep the shuffled order, so uniform data trains exactly
    as with a plain shuffle). Padding costs full compute; WebShop prompts run from ~100 to ~500 tokens,
    and random batches are padded to their longest (about 2x the tokens)."""
    perm = rng.sample(range(len(data)), len(data))
    size = batch_size * chunk_batches
    return [j for i in range(0, len(perm), size) for j in sorted(perm[i:i + size], key=lambda j: len(data[j].prompt))]
