"""The ``autoawq`` backend (GPU only): AWQ checkpoints made by AutoAWQ, loaded by transformers.

transformers loads ``quantization_config.quant_method == "awq"`` checkpoints through its AWQ
integration, whose kernels come from gptqmodel / autoawq (CUDA); the ``[gpu]`` extra installs them.
On a CPU-only machine (like the development box) AutoAWQ's ``from_quantized`` wants
intel_extension_for_pytorch and transformers' loader wants CUDA kernels, so this backend refuses
with a clear :class:`ModelError` instead of failing deep inside a library. On CPU, quantize with
``dmr quantize`` and use the ``compressed`` backend. ``weight_bytes`` is the packed checkpoint size.
"""
from __future__ import annotations

from dmr_rl.errors import ModelError
from dmr_rl.models.backends.transformers_backend import TransformersBackend


class AutoAWQBackend(TransformersBackend):
    name = "autoawq"

    @classmethod
    def from_dir(cls, model_path: str, dtype: str = "float16", device: str = "cuda", **_):
        import torch

        from dmr_rl.models.checkpoints import (load_causal_lm, load_tokenizer, quantization_format,
                                               safetensors_bytes)

        fmt = quantization_format(model_path)
        if fmt != "awq":
            raise ModelError(f"{model_path!r} is not an AutoAWQ checkpoint (quantization_config.quant_method={fmt!r})")
        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            raise ModelError(f"the autoawq backend needs a CUDA GPU (device={device!r}, cuda available="
                             f"{torch.cuda.is_available()}); on CPU use `dmr quantize` + the compressed backend")
        if dtype == "float32":
            dtype = "float16"  # AWQ kernels compute in half precision
        tok = load_tokenizer(model_path)
        model = load_causal_lm(model_path, dtype, device)
        return cls(model, tok, device=device, weight_bytes=safetensors_bytes(model_path), label="autoawq")
