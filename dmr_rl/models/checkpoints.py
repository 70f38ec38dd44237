"""Local causal-LM checkpoints: validate, load, measure, and build tiny ones for tests.

Every loader here turns a missing path or a corrupt checkpoint into a :class:`ModelError` that
names the directory and what is wrong with it; nothing ever reaches the hub
(``local_files_only=True`` everywhere).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional

from dmr_rl.errors import ModelError

DTYPES = ("float32", "bfloat16", "float16")


def cache_root() -> Path:
    """Where fetched/converted models live: ``$DMR_CACHE`` or ``~/.cache/dmr_rl``."""
    return Path(os.environ.get("DMR_CACHE") or Path.home() / ".cache" / "dmr_rl")


def check_model_dir(path) -> Path:
    """The checkpoint directory as a Path; ModelError if it is missing or has no usable config."""
    if not path:
        raise ModelError("no model path given (tier model_path is empty)")
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model path {str(p)!r} does not exist")
    if not p.is_dir():
        raise ModelError(f"model path {str(p)!r} is not a directory (expected a transformers checkpoint)")
    cfg = p / "config.json"
    if not cfg.exists():
        raise ModelError(f"model path {str(p)!r} has no config.json (not a transformers checkpoint)")
    try:
        data = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"corrupt checkpoint: {cfg} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"corrupt checkpoint: {cfg} has no 'model_type' field")
    if not list(p.glob("*.safetensors")) and not list(p.glob("*.bin")):
        raise ModelError(f"corrupt checkpoint: {str(p)!r} holds no weight files (*.safetensors or *.bin)")
    return p


def read_config(path) -> dict:
    return json.loads((check_model_dir(path) / "config.json").read_text())


def quantization_format(path) -> Optional[str]:
    """The checkpoint's ``quantization_config.quant_method`` (e.g. 'compressed-tensors', 'awq'), or None."""
    qc = read_config(path).get("quantization_config")
    return qc.get("quant_method") if isinstance(qc, dict) else None


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; expected one of {list(DTYPES)}")
    return getattr(torch, name)


def load_tokenizer(path):
    """The checkpoint's tokenizer with a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    p = check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means an unusable checkpoint
        raise ModelError(f"cannot load the tokenizer of {str(p)!r}: {type(e).__name__}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def load_causal_lm(path, dtype: str = "float32", device: str = "cpu"):
    """``AutoModelForCausalLM`` from a local directory, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    td = torch_dtype(dtype)
    try:
        kw = {} if str(device) == "cpu" else {"device_map": device}
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=td, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"corrupt checkpoint {str(p)!r}: {type(e).__name__}: {str(e)[:300]}") from None
    return model.to(device).eval()


def safetensors_bytes(path) -> int:
    """Sum of the tensor byte sizes stored in a checkpoint's ``*.safetensors`` files (from headers)."""
    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModelError(f"corrupt checkpoint: {f} is truncated")
            (n,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ModelError(f"corrupt checkpoint: {f} has an unreadable header") from None
        for name, meta in header.items():
            if name != "__metadata__":
                lo, hi = meta["data_offsets"]
                total += hi - lo
    return total


def param_bytes(model) -> int:
    """Bytes of a model's distinct parameters and buffers-that-are-weights (tied weights once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints (tests, benchmarks, the project's own agent LM)
# ---------------------------------------------------------------------------------------------
DEFAULT_CORPUS = [
    "go to the kitchen and take the apple from the table",
    "open the fridge, put the apple in the fridge, close the fridge",
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 2.",
    "Your task is to: put a clean mug in the coffeemachine.",
    "> take mug 1 from countertop 2\nYou pick up the mug 1 from the countertop 2.",
    "search[red shoes size 9] click[b0123] click[buy now] 0123456789",
]


def train_tokenizer(vocab_size: int = 512, corpus: Optional[list] = None):
    """A byte-level BPE tokenizer trained offline on ``corpus`` (a PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(list(corpus or DEFAULT_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def tiny_config(arch: str = "llama", hidden: int = 64, layers: int = 2, vocab: int = 512,
                heads: int = 4, kv_heads: int = 2, intermediate: Optional[int] = None):
    """A small Llama or Qwen3 config (random init is near-uniform: fine for plumbing tests)."""
    from transformers import LlamaConfig, Qwen3Config

    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=0,
              eos_token_id=1, bos_token_id=None)
    if arch == "llama":
        return LlamaConfig(**kw)
    if arch == "qwen3":
        return Qwen3Config(head_dim=hidden // heads, **kw)
    raise ModelError(f"unknown tiny architecture {arch!r}; expected llama or qwen3")


def make_tiny_checkpoint(out_dir, arch: str = "llama", hidden: int = 64, layers: int = 2,
                         vocab: int = 512, seed: int = 0, corpus: Optional[list] = None) -> Path:
    """Write a random-initialised causal LM and a trained tokenizer to ``out_dir``; return it."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = train_tokenizer(vocab, corpus)
    cfg = tiny_config(arch, hidden, layers, len(tok))
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
