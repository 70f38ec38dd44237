"""Low-precision checkpoints: AWQ and round-to-nearest through llm-compressor.

``quantize_checkpoint(src, out, method, bits, group_size, calib_prompts)`` reads a local
transformers checkpoint and writes a compressed-tensors ``pack-quantized`` checkpoint (weight-only
integer quantization of every Linear except ``lm_head``; asymmetric, per-group scales and zero
points) plus ``dmr_quant.json`` describing it. The ``compressed`` backend loads the result.

- ``awq``: llm-compressor's ``AWQModifier`` + ``oneshot``, calibrated on the agent's own prompts
  (activation-aware per-channel scales folded into the preceding norm / linear, then grouped
  min-max quantization).
- ``rtn``: llm-compressor's ``QuantizationModifier`` (no calibration): the comparison baseline.

Two AWQ engines write the same checkpoint: ``llmcompressor`` (default, the maintained library)
and ``torch`` (:mod:`dmr_rl.models.awq_torch`: our scale search folded into the model, then the
library's RTN packs). Why both: on this CPU the library's sequential AWQ took 9 min 44 s on
SmolLM2-135M unloaded; the torch search took ~1.5 min unloaded (15 min on a heavily shared box)
and measured int4 g64 next-token KL 0.114 against RTN's 0.338 (676 positions, 0.87 vs 0.79 top-1).

Bit widths: compressed-tensors 0.19 packs any width from 1 to 8 bits densely into int32
(``pack_to_int32``), and transformers 5.17 loads (decompresses) such checkpoints; 2, 3, 4 and 8
were checked here (see ``tests/test_quantize.py``), so no quantizer of our own is needed for the
bit widths. CPU caveat: llm-compressor's sequential pipeline pins calibration tensors in page-locked
memory, which fails with "Cannot access accelerator device" on a machine without a GPU;
:func:`_cpu_patches` replaces ``IntermediatesCache.pin_memory`` by a no-op while ``oneshot`` runs.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterable, Optional

from dmr_rl.errors import ModelError

METHODS = ("awq", "rtn")
ENGINES = ("llmcompressor", "torch")  # who searches the AWQ scales (see dmr_rl.models.awq_torch)
BITS = (2, 3, 4, 8)
QUANT_INFO_FILE = "dmr_quant.json"


def validate_request(method: str, bits: int, group_size: int) -> None:
    if method not in METHODS:
        raise ModelError(f"unknown quantization method {method!r}; expected one of {list(METHODS)}")
    if bits not in BITS:
        raise ModelError(f"unsupported bit width {bits!r} for {method}; supported: {list(BITS)}")
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 8:
        raise ModelError(f"group size {group_size!r} must be a positive multiple of 8")


def linear_layers(model) -> dict:
    """name -> nn.Linear for every Linear that gets quantized (all but lm_head)."""
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


def parse_group_size_overrides(items) -> dict:
    """``["REGEX=G", ...]`` (command-line flags, in order) -> {REGEX: G}, the order kept (the first
    matching pattern wins in :func:`module_group_sizes`); a ModelError names a malformed item."""
    overrides: dict = {}
    for item in items:
        pat, sep, size = str(item).rpartition("=")
        if not sep or not pat or not size.strip().isdigit():
            raise ModelError(f"group-size override {item!r}: expected REGEX=G with G a whole number")
        overrides[pat] = int(size)
    return overrides


def module_group_sizes(model, group_size: int, overrides: Optional[dict] = None) -> dict:
    """name -> group size for every Linear that gets quantized: ``group_size``, unless a pattern of
    ``overrides`` (a regular expression searched in the module's name -> group size; the first
    pattern that matches wins) gives another, e.g. ``{r"layers\\.(2[2-9])\\.": 32}`` for finer groups
    in the top 8 of 30 layers. Every size must divide its Linear's input width; a pattern that
    matches no Linear is an error, not a no-op."""
    import re

    patterns = []
    for pat, size in (overrides or {}).items():
        try:
            patterns.append((re.compile(str(pat)), pat, size))
        except re.error as e:
            raise ModelError(f"group-size override {pat!r} is not a regular expression ({e})") from None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 8:
            raise ModelError(f"group-size override {pat!r}: {size!r} must be a positive multiple of 8")
    sizes, used = {}, set()
    for name, lin in linear_layers(model).items():
        size = group_size
        for rx, pat, g in patterns:
            if rx.search(name):
                size = g
                used.add(pat)
                break
        if lin.in_features % size:
            raise ModelError(f"group size {size} does not divide {name}.in_features={lin.in_features} "
                             f"(try {', '.join(str(g) for g in (128, 64, 32) if lin.in_features % g == 0)})")
        sizes[name] = size
    unused = [pat for _, pat, _ in patterns if pat not in used]
    if unused:
        raise ModelError(f"group-size override(s) {unused} match no quantized Linear of this model "
                         f"(names look like {next(iter(sizes), '?')!r})")
    return sizes


def copy_dir_name(method: str, bits: int, group_size: int, overrides: Optional[dict] = None) -> str:
    """Directory name of a low-bit copy: ``lp-awq-w3g48``, plus a short hash of the group-size
    overrides when there are any (``lp-awq-w3g48-mixed-1a2b3c``), so two recipes never share one
    (in their order: the first matching pattern wins, so order is part of the recipe)."""
    name = f"lp-{method}-w{bits}g{group_size}"
    if overrides:
        import hashlib

        key = json.dumps([[str(k), int(v)] for k, v in overrides.items()])
        name += "-mixed-" + hashlib.sha1(key.encode()).hexdigest()[:6]
    return name


def read_calib_prompts(path) -> list:
    """Prompts from a .jsonl file (each line a string, or an object with 'prompt' or 'text') or a
    text file (blank-line separated blocks; one prompt per line if there are no blank lines)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"calibration file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    prompts = []
    if p.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ModelError(f"calibration file {p} line {i}: not JSON ({e})") from None
            if isinstance(row, dict):
                row = row.get("prompt", row.get("text"))
            if not isinstance(row, str):
                raise ModelError(f"calibration file {p} line {i}: expected a string or an object with 'prompt'/'text'")
            prompts.append(row)
    else:
        blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
        prompts = blocks if len(blocks) > 1 else [ln for ln in text.splitlines() if ln.strip()]
    if not prompts:
        raise ModelError(f"calibration file {p} holds no prompts")
    return prompts


@contextlib.contextmanager
def _cpu_patches():
    """Make llm-compressor's sequential pipeline run on a machine without an accelerator."""
    import torch
    from llmcompressor.pipelines import cache

    if torch.cuda.is_available():
        yield
        return
    original = cache.IntermediatesCache.pin_memory
    cache.IntermediatesCache.pin_memory = lambda self, *a, **k: None
    try:
        yield
    finally:
        cache.IntermediatesCache.pin_memory = original


def quantization_scheme(bits: int, group_size: int, symmetric: bool = False,
                        sizes: Optional[dict] = None) -> dict:
    """compressed-tensors config groups: every Linear at ``group_size``, and the modules ``sizes``
    (name -> group size, from :func:`module_group_sizes`) puts at another size in a group of their
    own (exact names take precedence over the class target)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    def scheme(targets, g):
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=g)
        return QuantizationScheme(targets=targets, weights=args)

    other = sorted({g for g in (sizes or {}).values() if g != group_size})
    # the named groups first: compressed-tensors stops at a module's first matching target when it
    # checks that every target matched, and would warn about names that a "Linear" group shadowed
    groups = {f"group_{k}": scheme(sorted(n for n, v in sizes.items() if v == g), g) for k, g in enumerate(other, 1)}
    groups["group_0"] = scheme(["Linear"], group_size)
    return groups


def quantize_model(model, tokenizer, method: str, bits: int, group_size: int = 64,
                   calib_prompts: Optional[Iterable[str]] = None, max_seq_length: int = 256,
                   num_samples: int = 64, symmetric: bool = False, n_grid: int = 20,
                   engine: str = "llmcompressor", group_size_overrides: Optional[dict] = None):
    """Quantize ``model`` in place (fake-quantized: its forward applies the quantization).

    ``engine`` (awq only): ``llmcompressor`` (AWQModifier) or ``torch`` (our scale search, then
    llm-compressor's round-to-nearest packs; ~10x faster on CPU, see ``awq_torch``).
    ``group_size_overrides``: other group sizes for some Linears (see :func:`module_group_sizes`).

    Returns the model, ready for ``save_pretrained(dir, save_compressed=True)``.
    """
    validate_request(method, bits, group_size)
    sizes = module_group_sizes(model, group_size, group_size_overrides)
    if engine not in ENGINES:
        raise ModelError(f"unknown quantization engine {engine!r}; expected one of {list(ENGINES)}")
    if method == "awq" and engine == "torch":
        from dmr_rl.models.awq_torch import awq_torch_quantize

        prompts = [p for p in (calib_prompts or []) if p and p.strip()][:num_samples]
        return awq_torch_quantize(model, tokenizer, prompts, bits, group_size, n_grid=n_grid,
                                  max_seq_length=max_seq_length, symmetric=symmetric,
                                  group_size_overrides=group_size_overrides)
    from llmcompressor import oneshot

    scheme = quantization_scheme(bits, group_size, symmetric, sizes)
    with _cpu_patches(), _quiet():
        if method == "rtn":
            from llmcompressor.modifiers.quantization import QuantizationModifier

            oneshot(model=model, recipe=[QuantizationModifier(ignore=["lm_head"], config_groups=scheme)])
        else:
            from datasets import Dataset
            from llmcompressor.modifiers.awq import AWQModifier

            prompts = [p for p in (calib_prompts or []) if p and p.strip()]
            if not prompts:
                raise ModelError("AWQ needs calibration prompts (--calib FILE or --calib-from-env ENV)")
            rows = [tokenizer(p, add_special_tokens=True, truncation=True, max_length=max_seq_length)["input_ids"]
                    for p in prompts[:num_samples]]
            ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
            recipe = [AWQModifier(ignore=["lm_head"], config_groups=scheme, n_grid=n_grid)]
            oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=max_seq_length,
                    num_calibration_samples=len(rows))
    return model.eval()


@contextlib.contextmanager
def _quiet():
    """llm-compressor logs every grid-search step through loguru; keep the console readable."""
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover
        yield
        return
    logger.disable("llmcompressor")
    try:
        yield
    finally:
        logger.enable("llmcompressor")


def save_quantized(model, tokenizer, out_dir, info: dict) -> dict:
    """Write the compressed checkpoint, the tokenizer and ``dmr_quant.json``; return the info."""
    from dmr_rl.models.checkpoints import safetensors_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet():
        model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    info = dict(info, packed_bytes=safetensors_bytes(out))
    (out / QUANT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def quantize_checkpoint(src_dir, out_dir, method: str, bits: int, group_size: int = 64,
                        calib_prompts: Optional[Iterable[str]] = None, dtype: str = "bfloat16",
                        max_seq_length: int = 256, num_samples: int = 64, symmetric: bool = False,
                        n_grid: int = 20, engine: str = "llmcompressor",
                        group_size_overrides: Optional[dict] = None) -> dict:
    """Quantize the checkpoint in ``src_dir`` into ``out_dir``; returns what ``dmr_quant.json`` holds.

    ``dtype`` is the storage dtype of what stays unquantized (embeddings, norms, lm_head) and of
    the scales: bfloat16 by default, the usual deployment; calibration always runs in float32.
    ``n_grid``: AWQ's scale-search grid points per layer group (llm-compressor's default 20).
    ``engine``: who searches the AWQ scales, ``llmcompressor`` or ``torch`` (see quantize_model).
    ``group_size_overrides``: regex over Linear names -> group size (see :func:`module_group_sizes`).
    """
    from dmr_rl.models.checkpoints import load_causal_lm, load_tokenizer, safetensors_bytes, torch_dtype

    validate_request(method, bits, group_size)
    calib_prompts = list(calib_prompts or [])
    td = torch_dtype(dtype)
    tok = load_tokenizer(src_dir)
    model = load_causal_lm(src_dir, "float32")
    t0 = time.perf_counter()  # quantize_model checks the group sizes before it calibrates
    quantize_model(model, tok, method, bits, group_size, calib_prompts, max_seq_length=max_seq_length,
                   num_samples=num_samples, symmetric=symmetric, n_grid=n_grid, engine=engine,
                   group_size_overrides=group_size_overrides)
    seconds = time.perf_counter() - t0
    model.to(td)
    info = {"method": method, "bits": bits, "group_size": group_size,
            "group_size_overrides": dict(group_size_overrides or {}), "symmetric": symmetric,
            "dtype": dtype, "source": str(Path(src_dir).resolve()), "source_bytes": safetensors_bytes(src_dir),
            "format": "compressed-tensors/pack-quantized",
            "engine": "llmcompressor" if method == "rtn" else engine, "n_grid": n_grid if method == "awq" else 0,
            "calib_prompts": 0 if method == "rtn" else min(num_samples, len(calib_prompts)),
            "seconds": round(seconds, 2)}
    return save_quantized(model, tok, out_dir, info)


def read_quant_info(model_dir) -> Optional[dict]:
    p = Path(model_dir) / QUANT_INFO_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"corrupt checkpoint: {p} is not valid JSON ({e})") from None


def quant_label(engine: str, info: dict, bits=None) -> str:
    """A low-bit copy's name in tier labels: ``<engine>:<method>-w<bits>g<group>``, then each
    group-size override (``[REGEX]g<G>``, in order), e.g. ``compressed:awq-w3g48 [layers\\.[0-7]\\.]g32``."""
    bits = info.get("bits", "?") if bits is None else bits
    label = f"{engine}:{info.get('method', '?')}-w{bits}g{info.get('group_size', '?')}"
    return label + "".join(f" [{pat}]g{g}" for pat, g in (info.get("group_size_overrides") or {}).items())


def calib_prompts_from_env(env_name: str, n_prompts: int = 64, seed: int = 0, data_dir: str = "") -> list:
    """The agent's own prompts on expert trajectories of ``env_name`` (each prompt + the expert's
    action, so calibration sees action tokens too). Without ``data_dir``, small offline games are
    generated in a temporary directory."""
    import tempfile

    from environments import make_env

    try:
        from dmr_rl.models.prompting import build_prompt
    except ImportError as e:  # the agent's prompt builder lives beside this module
        raise ModelError(f"--calib-from-env needs dmr_rl.models.prompting ({e})") from None
    from dmr_rl.step import StepContext

    with tempfile.TemporaryDirectory(prefix="dmr_calib_") as tmp:
        root = data_dir or tmp
        if not data_dir:
            if env_name == "alfworld":
                from environments.alfworld.generator import generate

                generate(root, n=12, seed=seed)
            elif env_name == "webshop":
                from environments.webshop.generator import generate

                generate(root, n_products=200, n_instructions=20, seed=seed)
            else:
                raise ModelError(f"unknown environment {env_name!r} for --calib-from-env; expected alfworld or webshop")
        env = make_env(env_name, root, "train")
        prompts: list = []
        task = 0
        while len(prompts) < n_prompts and task < env.num_tasks:
            obs, info = env.reset(options={"task_index": task})
            history, done = [], False
            while not done and len(prompts) < n_prompts:
                ctx = StepContext(task=str(info.get("task", "")), obs=obs, history=list(history),
                                  admissible=list(info.get("admissible_commands") or []))
                action = env.expert_action()
                prompts.append(build_prompt(ctx) + " " + action)
                obs, _, term, trunc, info = env.step(action)
                history.append((action, obs))
                done = term or trunc
            task += 1
    if not prompts:
        raise ModelError(f"no calibration prompts came out of {env_name!r}")
    return prompts
