"""LoRA adapters for the pretrained agents (``dmr train agent --init smollm2 --lora-rank R``).

The fine-tuned part of a pretrained agent is committed as a small bf16 adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, peft's format) next to the agent's own
files; the base comes from its package at first use and the two are merged once into a plain
checkpoint (:func:`dmr_rl.models.agent.resolve_agent_dir`), so every backend, the AWQ path and
the low-bit copy see an ordinary transformers model.
"""
from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


#: the linear layers of a Llama decoder layer that a LoRA adapter wraps
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model, rank: int, alpha: float = 0.0, layers: int = 0, seed: int = 0):
    """Freeze ``model`` and wrap every linear layer of its top ``layers`` decoder layers (0: all)
    in a rank-``rank`` LoRA adapter (``alpha`` 0: 2 x rank), in place. Returns the ``PeftModel``
    (for ``save_pretrained``: the adapter only); ``model`` itself keeps working with the adapter
    active. A fresh adapter leaves the outputs unchanged (B is initialised to zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from dmr_rl.errors import ModelError

    n = len(model.model.layers)
    if rank <= 0:
        raise ModelError(f"--lora-rank must be positive, got {rank}")
    if layers < 0 or layers > n:
        raise ModelError(f"--train-layers {layers} is outside 0..{n}")
    torch.manual_seed(seed)
    model.requires_grad_(False)
    lcfg = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, bias="none",
                      target_modules=list(LORA_TARGETS),
                      layers_to_transform=list(range(n - layers, n)) if layers else None)
    return get_peft_model(model, lcfg)


def resume_lora(model, adapter_dir):
    """Freeze ``model`` and load the LoRA adapter saved in ``adapter_dir`` on it, trainable, to go on
    training it (its rank, alpha and layers come from its ``adapter_config.json``). Returns the
    ``PeftModel``, as :func:`apply_lora` does."""
    from peft import PeftModel

    from dmr_rl.errors import ModelError

    d = Path(adapter_dir)
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (d / f).exists()]
    if missing:
        raise ModelError(f"--resume-adapter {d}: not a LoRA agent (no {', '.join(missing)})")
    model.requires_grad_(False)
    return PeftModel.from_pretrained(model, str(d), is_trainable=True)


def adapter_shape(adapter_dir) -> dict:
    """``{"rank", "alpha", "layers"}`` of the adapter saved in ``adapter_dir`` (layers: how many
    decoder layers it wraps, 0: all)."""
    import json

    c = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    return {"rank": int(c["r"]), "alpha": float(c["lora_alpha"]), "layers": len(c.get("layers_to_transform") or [])}


def save_adapter(peft_model, out, dtype: str = "bfloat16", base: str = "") -> int:
    """Write the adapter (``adapter_config.json``, ``adapter_model.safetensors``) with its weights
    in ``dtype`` (``base`` recorded as the base model's name); the live model keeps its own.
    Returns the weight file's size in bytes."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dmr_rl.models.checkpoints import torch_dtype

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch_dtype(dtype)).contiguous()
             for k, v in get_peft_model_state_dict(peft_model).items()}
    config = peft_model.peft_config["default"]
    if base:  # the base's name (e.g. smollm2), not this machine's cache path
        config.base_model_name_or_path = base
    config.save_pretrained(str(out))
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return (out / ADAPTER_WEIGHTS).stat().st_size


def merged_from_adapter(base_dir, adapter_dir):
    """The base checkpoint (fp32) with the adapter in ``adapter_dir`` merged into its weights: a
    plain ``LlamaForCausalLM`` (no peft layers left)."""
    from peft import PeftModel

    from dmr_rl.models.checkpoints import load_causal_lm

    base = load_causal_lm(str(base_dir), "float32", "cpu")
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def cpu_bf16_fast() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AMX or AVX-512 BF16), i.e. where bf16
    autocast pays (~5x per core measured with AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags
