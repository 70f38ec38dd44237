"""experiments/gpu_check.py runs end to end on a CPU (so it cannot rot before a GPU runs it).

Both tiers through Ray model servers in the vLLM side venv (.ci/run's second step sets
``DMR_VLLM_PYTHON``); on a CPU without AVX-512 vLLM has no 4-bit kernel, so LP is served by the
compressed backend there. Plays the tiny committed agent (the SmolLM2 one is the script's default on a
GPU; on 2 CPU cores it took over 15 min here). Skipped without the side venv.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VLLM_PYTHON = os.environ.get("DMR_VLLM_PYTHON", "")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not VLLM_PYTHON, reason="DMR_VLLM_PYTHON (the vLLM side venv's python) is not set")
def test_gpu_check_runs_on_cpu(tmp_path):
    from dmr_rl.models.backends.vllm_backend import cpu_has_avx512

    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--device", "cpu", "--episodes", "2",
           "--python", os.path.abspath(VLLM_PYTHON), "--agent-name", "alfworld", "--lp-method", "rtn",
           "--enforce-eager", "--workers", "1",
           "--envs-per-worker", "2", "--latency-reps", "1", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    if not cpu_has_avx512():
        cmd += ["--lp-backend", "compressed"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads(out.read_text())
    res = json.loads(lines[0])
    assert set(res["methods"]) == {"hp", "lp", "router"}
    for m in res["methods"].values():
        assert 0.0 <= m["success"] <= 1.0 and m["steps"] > 0 and m["steps_per_s"] > 0
    assert res["methods"]["hp"]["hp_ratio"] == 1.0 and res["methods"]["lp"]["hp_ratio"] == 0.0
    for b in ("batch1", "batch32"):
        assert res["latency_s"][b]["hp"] > 0 and res["latency_s"][b]["lp"] > 0
        assert res["lp_hp_latency_ratio"][b] == pytest.approx(res["latency_s"][b]["lp"] / res["latency_s"][b]["hp"],
                                                              rel=0.01)
    assert res["memory"]["lp"]["weight_bytes"] < res["memory"]["hp"]["weight_bytes"]  # packed 4-bit copy
    assert res["shards"] == 3 * 2
