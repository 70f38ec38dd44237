"""The ``compressed`` backend: a compressed-tensors (llm-compressor) checkpoint, e.g. from ``dmr quantize``.

On CPU the checkpoint is decompressed when it loads (transformers 5.17 + compressed-tensors 0.19):
the forward runs in the requested dtype (``auto``: bf16 where the CPU has fast bf16, as the HP
tier) with the quantization error baked into the weights, so
outputs are exactly those of the quantized model while speed is that of the full-precision one.
``weight_bytes`` is the packed checkpoint size (int weights packed into int32, per-group scales and
zero points, unquantized embeddings/norms/lm_head): the memory a packed-kernel server would read
per forward. On a GPU the same checkpoint can be served packed by vLLM (``compressed-tensors``
format) or transformers' kernels; that path is not exercised on this machine.
"""
from __future__ import annotations

from dmr_rl.errors import ModelError
from dmr_rl.models.backends.transformers_backend import TransformersBackend


class CompressedBackend(TransformersBackend):
    name = "compressed"

    @classmethod
    def from_dir(cls, model_path: str, dtype: str = "auto", device: str = "cpu", engine: str = "auto",
                 max_sessions: int = 64, **_):
        from dmr_rl.models.backends.base import resolve_dtype
        from dmr_rl.models.checkpoints import (load_causal_lm, load_tokenizer, quantization_format,
                                               safetensors_bytes)
        from dmr_rl.models.quantize import quant_label, read_quant_info

        dtype = resolve_dtype(dtype, device)

        fmt = quantization_format(model_path)
        if fmt != "compressed-tensors":
            raise ModelError(f"{model_path!r} is not a compressed-tensors checkpoint "
                             f"(quantization_config.quant_method={fmt!r}); use the transformers backend")
        info = read_quant_info(model_path) or {}
        tok = load_tokenizer(model_path)
        model = load_causal_lm(model_path, dtype, device)
        label = quant_label("compressed", info)
        be = cls(model, tok, device=device, weight_bytes=safetensors_bytes(model_path), label=label, engine=engine,
                 max_sessions=max_sessions)
        be.quant_info = info
        return be
