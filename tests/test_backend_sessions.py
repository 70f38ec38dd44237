"""Fast CPU acting: dtype auto, the packed candidate-tree engine and the per-episode KV cache.

Contract: the packed engine, with or without a session cache, gives every candidate the same
log-likelihood as the batched engine (today's path) and as a plain forward of prompt + candidate;
sessions change speed only. The LP tier's actions are unchanged from the slow path on the
committed agent's real episodes.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from dmr_rl.errors import ModelError  # noqa: E402
from dmr_rl.models import load_backend  # noqa: E402
from dmr_rl.models.backends.base import resolve_dtype  # noqa: E402
from dmr_rl.models.backends.packing import (SessionCache, candidate_sums, candidate_tree,  # noqa: E402
                                            common_prefix, packed_inputs)
from dmr_rl.models.checkpoints import make_tiny_checkpoint  # noqa: E402

CANDS = ["go to cabinet 1", "go to cabinet 2", "go to drawer 1", "take mug 1 from cabinet 1", "look", "",
         "go to cabinet 1"]
# consecutive steps of one episode: the prompt grows, then its tail changes, then it shrinks
STEPS = ["Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n>",
         "Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n> take mug 1\nYou take it.\n>",
         "Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n> look\nNothing.\n>",
         "Task: put a mug in the fridge.\n> go to cabinet 1\nYou see a mug 1.\n> look\nNothing.\n>",
         "Task: put a mug in the fridge.\n>",
         "Other task entirely.\n>"]


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def tiny(request, tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), arch=request.param, seed=3))


def _sums(results):
    return [r.sum_logprobs for r in results]


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu", frozenset({"avx2", "amx_bf16"})) == "bfloat16"
    assert resolve_dtype("auto", "cpu", frozenset({"avx512f", "avx512_bf16"})) == "bfloat16"
    assert resolve_dtype("auto", "cpu", frozenset({"avx2", "avx512f"})) == "float32"
    assert resolve_dtype("auto", "cuda:0", frozenset()) == "bfloat16"
    assert resolve_dtype("float16", "cpu", frozenset({"amx_bf16"})) == "float16"
    with pytest.raises(ModelError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_tier_default_is_auto_and_backend_reports_resolved_dtype(tiny):
    from dmr_rl.config import TierConfig

    assert TierConfig().dtype == "auto"
    be = load_backend(TierConfig(model_path=tiny))
    info = be.info()
    assert info["dtype"] == resolve_dtype("auto", "cpu") == str(next(be.model.parameters()).dtype)[6:]
    assert info["engine"] == "packed" and info["session_cache"]["sessions"] == 0
    with pytest.raises(ModelError, match="unknown scoring engine"):
        load_backend(model_path=tiny, engine="fast")


def test_candidate_tree_shares_prefixes():
    cands = [[5, 6, 7], [5, 6, 8], [5, 9], [], [5, 6, 7]]
    tree = candidate_tree(cands)
    assert tree.token.tolist() == [5, 6, 7, 8, 9] and tree.parent.tolist() == [-1, 0, 1, 1, 0]
    assert tree.depth.tolist() == [0, 1, 2, 2, 1] and tree.inner.tolist() == [True, True, False, False, False]
    assert tree.paths == [[0, 1, 2], [0, 1, 3], [0, 4], [], [0, 1, 2]]
    assert candidate_sums(tree, np.array([-1.0, -2.0, -3.0, -4.0, -5.0])).tolist() == [-6.0, -7.0, -6.0, 0.0, -6.0]
    x = packed_inputs(prompt_len=4, keep=2, tail=[11, 12], tree=tree)
    # tail (2 tokens) then the inner nodes 5, 6 at positions 4 and 5
    assert x["ids"].tolist() == [[11, 12, 5, 6]] and x["pos"].tolist() == [[2, 3, 4, 5]]
    m = x["mask"][0, 0].int().tolist()  # columns: 2 cached, then the 4 inputs
    assert m == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert x["pred"].tolist() == [1, 2, 3]  # prompt's last token, node 5, node 6
    assert x["node_row"].tolist() == [0, 1, 2, 2, 1]  # which pred row predicts each node
    with pytest.raises(ValueError):
        packed_inputs(prompt_len=4, keep=4, tail=[], tree=tree)  # at least one prompt token is fed


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([7], [8]) == 0


def test_packed_engine_equals_batched_engine(tiny):
    old = load_backend(model_path=tiny, dtype="float32", engine="batched")
    new = load_backend(model_path=tiny, dtype="float32", engine="packed")
    prompts, cands = STEPS[:3], [CANDS, CANDS[:3], ["x", "look"]]
    for a, b in zip(old.score_actions(prompts, cands), new.score_actions(prompts, cands)):
        np.testing.assert_allclose(a.sum_logprobs, b.sum_logprobs, atol=1e-4)
        assert a.num_tokens.tolist() == b.num_tokens.tolist()
    # one forward per prompt; the candidates' shared prefixes are scored once
    n_ids = sum(len(old.tokenizer(p)["input_ids"]) for p in prompts)
    assert new.cost.weight_bytes_read == pytest.approx(3 * new.weight_bytes)
    assert new.cost.prompt_tokens < old.cost.prompt_tokens and new.cost.prompt_tokens > n_ids


def test_session_results_equal_uncached_and_reuse_the_prefix(tiny):
    """A session's scores equal the uncached ones at every step of an episode whose prompt grows,
    changes its tail, repeats, shrinks and finally shares nothing; the cache really is reused."""
    plain = load_backend(model_path=tiny, dtype="float32", engine="batched")
    cached = load_backend(model_path=tiny, dtype="float32")
    for step, prompt in enumerate(STEPS):
        ref = plain.score_actions([prompt, prompt], [CANDS, CANDS[:2]])
        got = cached.score_actions([prompt, prompt], [CANDS, CANDS[:2]], sessions=["ep1", "ep2"])
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a.sum_logprobs, b.sum_logprobs, atol=1e-4, err_msg=f"step {step}")
    stats = cached.sessions.stats()
    assert stats["hits"] == 2 * (len(STEPS) - 1) and stats["misses"] == 2
    first = len(cached.tokenizer(STEPS[0])["input_ids"])
    assert stats["reused_tokens"] >= 2 * first  # step 2 alone reuses all of step 1's prompt
    assert cached.cost.prompt_tokens < plain.cost.prompt_tokens


def test_session_eviction_lru_and_end(tiny):
    be = load_backend(model_path=tiny, dtype="float32", max_sessions=2)
    ref = load_backend(model_path=tiny, dtype="float32", max_sessions=0)  # never caches
    for sid in ("a", "b", "c"):
        be.score_actions([STEPS[0]], [CANDS], sessions=[sid])
    assert len(be.sessions) == 2 and "a" not in be.sessions and be.sessions.stats()["evictions"] == 1
    be.score_actions([STEPS[1]], [CANDS], sessions=["b"])  # b is now the most recent
    be.score_actions([STEPS[1]], [CANDS], sessions=["d"])  # evicts c, the least recently used
    assert "c" not in be.sessions and "b" in be.sessions and "d" in be.sessions
    be.end_sessions(["b", "never-seen"])
    assert "b" not in be.sessions and len(be.sessions) == 1
    got = be.score_actions([STEPS[2]], [CANDS], sessions=["a"])[0]  # evicted: recomputed, same result
    np.testing.assert_allclose(got.sum_logprobs, ref.score_actions([STEPS[2]], [CANDS])[0].sum_logprobs, atol=1e-4)
    assert len(ref.sessions) == 0
    with pytest.raises(ValueError, match="session ids"):
        be.score_actions([STEPS[0]], [CANDS], sessions=["a", "b"])


def test_session_cache_unit():
    c = SessionCache(max_sessions=1)
    assert c.take("x") is None
    c.put("x", [1, 2], "kv")
    assert c.take("x") == ([1, 2], "kv") and len(c) == 0  # take removes: the caller puts it back
    c.put("x", [1], "kv1")
    c.put("y", [2], "kv2")
    assert "x" not in c and c.stats()["evictions"] == 1
    with pytest.raises(ValueError):
        SessionCache(-1)


TOL = {"float32": 1e-3, "bfloat16": 0.3}  # see the test's docstring


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_lp_actions_unchanged_from_slow_path(alfworld_data, dtype):
    """The committed agent's low-bit (2-bit AWQ) copy on the expert's real episodes: the new path
    (``dtype``, packed engine, one session per episode as in a rollout) picks the slow path's
    (fp32, batched engine) action on every step whose slow-path margin (top-1 minus top-2 summed
    log-prob) exceeds ``tol``, and the margins leave almost every step above it.

    Tolerances: in fp32 the two engines differ by summation order only (|diff| < 1e-4 nats, so
    1e-3 is a 10x safety margin). bf16 keeps 8 mantissa bits (relative error 2^-8 per rounding);
    over this 3-layer model the summed candidate log-probs move by up to ~0.1 nats (asserted
    below), so an action can only flip on a step whose margin is below that; 0.3 leaves 3x room."""
    from dmr_rl.models.agent import agent_dir, lp_checkpoint, read_agent_config
    from dmr_rl.models.bc_data import make_teacher, rollout_labelled
    from dmr_rl.models.prompting import PromptConfig
    from environments import make_env

    tol = TOL[resolve_dtype(dtype)]  # auto: bf16 on a CPU with AMX / AVX-512-BF16, fp32 elsewhere
    agent = agent_dir("alfworld")
    lp = str(lp_checkpoint(agent, "alfworld"))
    slow = load_backend(model_path=lp, dtype="float32", engine="batched")
    fast = load_backend(model_path=lp, dtype=dtype)
    assert slow.name == fast.name == "compressed"
    prompt_cfg = PromptConfig.from_dict(read_agent_config(agent).get("prompt", {}))
    env = make_env("alfworld", alfworld_data, "valid_unseen")
    teacher = make_teacher("alfworld")
    margins, same, diffs = [], [], []
    for task in range(min(4, env.num_tasks)):
        steps = rollout_labelled(env, teacher, task, prompt_cfg, max_steps=20)[0]
        for k, s in enumerate(steps):
            a = slow.score_actions([s.prompt], [list(s.admissible)])[0].sum_logprobs
            b = fast.score_actions([s.prompt], [list(s.admissible)], sessions=[f"ep{task}"])[0].sum_logprobs
            top2 = np.sort(a)[-2:]
            margins.append(top2[1] - top2[0])
            same.append(np.argmax(a) == np.argmax(b))
            diffs.append(np.abs(a - b).max())
        fast.end_sessions([f"ep{task}"])
    margins, same = np.array(margins), np.array(same)
    assert len(margins) >= 20 and fast.sessions.stats()["reused_tokens"] > 0
    assert same[margins > tol].all(), f"actions changed on steps with margins {margins[~same]}"
    assert (margins > tol).mean() >= 0.8  # the check covers most steps, not just a few
    assert max(diffs) < tol / 3


def test_bench_agent_steps_json(alfworld_data, capsys):
    """experiments/bench_models.py --json: one JSON line, both tiers at each envs-per-call setting,
    a speedup per tier, and both paths choosing the same actions (fp32 here: summation order only)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
    import bench_models
    from dmr_rl.models.agent import agent_dir, lp_checkpoint

    agent = agent_dir("alfworld")
    assert bench_models.main(["--model", str(agent), "--awq", str(lp_checkpoint(agent, "alfworld")),
                              "--agent", str(agent), "--data", alfworld_data, "--games", "2", "--max-steps", "4",
                              "--envs", "1", "2", "--threads", "1", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert set(r["speedup"]) == {"hp", "lp"} and all(v > 0 for v in r["speedup"].values())
    assert sorted((x["tier"], x["envs"]) for x in r["rows"]) == [("hp", 1), ("hp", 2), ("lp", 1), ("lp", 2)]
    for x in r["rows"]:
        assert x["steps"] >= 4 and x["new_steps_s"] > 0 and x["old_steps_s"] > 0
        if "float32" in x["new"]:
            assert x["agree"] == 1.0
