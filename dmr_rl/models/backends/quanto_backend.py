"""The ``quanto`` backend: optimum-quanto weight-only int8 / int4 (a comparison tier, CPU or GPU).

The checkpoint is loaded in ``dtype`` and every Linear but ``lm_head`` is quantized in memory with
``optimum.quanto.quantize(weights=qint8|qint4)`` + ``freeze``: weights really are stored packed
(int8, or two int4 per byte with per-group scale and shift), and the forward dequantizes them, so
on this CPU it is 1.2-2.5x slower than fp32 (DESIGN.md). ``weight_bytes`` sums the packed tensors.
"""
from __future__ import annotations

from dmr_rl.errors import ModelError
from dmr_rl.models.backends.transformers_backend import TransformersBackend

QUANTO_BITS = (4, 8)


def tensor_bytes(t) -> int:
    """Storage bytes of a tensor, looking inside quanto's tensor subclasses (data, scale, shift)."""
    import torch

    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def model_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += tensor_bytes(p)
    return total


class QuantoBackend(TransformersBackend):
    name = "quanto"

    def _no_grad(self):  # quanto's tensors cannot be created under inference_mode
        import torch

        return torch.no_grad()

    @classmethod
    def from_dir(cls, model_path: str, dtype: str = "float32", device: str = "cpu", bits: int = 8, **_):
        from dmr_rl.models.checkpoints import load_causal_lm, load_tokenizer

        if bits not in QUANTO_BITS:
            raise ModelError(f"unsupported bit width {bits!r} for the quanto backend; supported: {list(QUANTO_BITS)}")
        try:
            from optimum.quanto import freeze, qint4, qint8, quantize
        except ImportError as e:
            raise ModelError(f"the quanto backend needs optimum-quanto ({e})") from None
        tok = load_tokenizer(model_path)
        model = load_causal_lm(model_path, dtype, device)
        quantize(model, weights=qint8 if bits == 8 else qint4, exclude=["lm_head"])
        freeze(model)
        return cls(model, tok, device=device, weight_bytes=model_bytes(model), label=f"quanto:w{bits}")
