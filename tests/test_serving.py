"""Model-server actors: batching is transparent, replicas share load, failures are named."""
from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import numpy as np
import pytest

from dmr_rl.config import TierConfig
from dmr_rl.errors import ActorError
from dmr_rl.models.backends.base import SamplingParams
from dmr_rl.serving.clients import LocalTierClient
from dmr_rl.serving.fake_backend import FakeBackend
from dmr_rl.serving.model_server import ModelServer

PROMPTS = ["Task: put a mug in the fridge.\nYou are in a kitchen.\n>",
           "Task: heat an egg.\nYou see a microwave 1.\n>",
           "Task: find a book.\nOn the desk 1 you see a book 2.\n>",
           "Task: clean a plate.\n>"]
CANDS = [["go to fridge 1", "open fridge 1", "look"], ["heat egg 1 with microwave 1", "look"],
         ["take book 2 from desk 1", "go to shelf 1", "inventory", "look"], ["go to sinkbasin 1"]]


def test_server_forms_batches_within_max_batch_size_and_keeps_request_results():
    """Plain asyncio: 5 concurrent 2-row requests with max_batch_size=4 -> at least 3 forwards,
    none above 4 rows, every caller gets exactly its own rows' results."""
    server = ModelServer("hp", 0, functools.partial(FakeBackend, "hp", 0.01), max_batch_size=4, max_wait_ms=50)
    reference = LocalTierClient("hp", FakeBackend("hp"))
    reqs = [(PROMPTS[i % 4:i % 4 + 1] + PROMPTS[(i + 1) % 4:(i + 1) % 4 + 1],
             [CANDS[i % 4], CANDS[(i + 1) % 4]]) for i in range(5)]

    async def main():
        return await asyncio.gather(*[server.score_actions(p, c) for p, c in reqs],
                                    server.generate(PROMPTS[:2], SamplingParams(max_new_tokens=3)))

    *outs, (gens, gen_costs) = asyncio.run(main())
    stats = server.stats()
    assert stats["requests"] == 6 and stats["rows"] == 12
    assert 4 <= stats["batches"] < 6  # batched (fewer forwards than requests), score and generate apart
    assert stats["max_rows_in_batch"] <= 4
    for (p, c), (res, costs) in zip(reqs, outs):
        want = reference.score_actions(p, c)
        assert len(res) == len(costs) == 2
        for a, b in zip(res, want):
            np.testing.assert_array_equal(a.sum_logprobs, b.sum_logprobs)
        assert all(k["latency_s"] > 0 and k["prompt_tokens"] > 0 for k in costs)
    assert [g.text for g in gens] == [g.text for g in reference.generate(PROMPTS[:2], SamplingParams(max_new_tokens=3))]
    assert sum(c["generated_tokens"] for c in gen_costs) == sum(len(g.token_ids) for g in gens)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dmr_rl.models.checkpoints import make_tiny_checkpoint

    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_serving"), arch="qwen3", seed=3))


def _load(path):
    """A picklable factory (Ray workers cannot import this test module)."""
    from dmr_rl.serving.launcher import load_tier_backend

    return functools.partial(load_tier_backend, TierConfig(dtype="float32"), path)  # exact path equality is an fp32 property: auto is bf16 on AMX / AVX-512-BF16 CPUs


def test_batched_ray_serving_matches_unbatched_calls(ray_session, tiny_model):
    from dmr_rl.serving.launcher import create_model_servers

    client = create_model_servers("hp", TierConfig(max_batch_size=64, max_wait_ms=300),
                                  _load(tiny_model))
    try:
        refs = [client.score_actions_ref([p], [c]) for p, c in zip(PROMPTS, CANDS)]
        td_refs = [client.token_distributions_ref([p], [c[0]]) for p, c in zip(PROMPTS, CANDS)]
        hid_refs = [client.prompt_hidden_ref([p]) for p in PROMPTS]
        got = [client.get(r)[0][0] for r in refs]
        got_td = [client.get(r)[0][0] for r in td_refs]
        got_hid = [client.get(r)[0][0] for r in hid_refs]
        stats = client.cost()
        local = LocalTierClient("hp", _load(tiny_model)())
        for (p, c), g in zip(zip(PROMPTS, CANDS), got):
            want = local.score_actions([p], [c])[0]
            np.testing.assert_allclose(g.sum_logprobs, want.sum_logprobs, rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(g.num_tokens, want.num_tokens)
        for (p, c), g in zip(zip(PROMPTS, CANDS), got_td):
            want = local.token_distributions([p], [c[0]])[0]
            np.testing.assert_allclose(np.exp(g.logprobs), np.exp(want.logprobs), atol=1e-5)
        for p, g in zip(PROMPTS, got_hid):  # batched with other prompts (left padding) = alone
            np.testing.assert_allclose(g, local.prompt_hidden([p])[0], atol=1e-4)
        assert stats["requests"] == 12
        assert stats["batches"] < 8, f"requests were not batched: {stats}"
        # a pass stopped at decoder layer 1 is batched apart from whole passes and equals the local one
        inner = [client.prompt_hidden_ref([p], 1) for p in PROMPTS]
        for p, ref in zip(PROMPTS, inner):
            g = client.get(ref)[0][0]
            np.testing.assert_allclose(g, local.prompt_hidden([p], 1)[0], atol=1e-4)
            assert np.abs(g - local.prompt_hidden([p])[0]).max() > 1e-3
    finally:
        client.shutdown()


def test_replicas_share_the_load(ray_session):
    from dmr_rl.serving.launcher import create_model_servers

    client = create_model_servers("lp", TierConfig(num_replicas=2, max_batch_size=1, max_wait_ms=0),
                                  functools.partial(FakeBackend, "lp", 0.05))
    try:
        t0 = time.perf_counter()
        refs = [client.score_actions_ref([PROMPTS[i % 4]], [CANDS[i % 4]]) for i in range(8)]
        results = [client.get(r)[0][0] for r in refs]
        elapsed = time.perf_counter() - t0
        per_replica = [s["rows"] for s in client.cost()["replicas"]]
        assert per_replica == [4, 4]
        assert elapsed < 8 * 0.05  # two replicas worked at once
        ref = FakeBackend("lp")
        for i, r in enumerate(results):
            np.testing.assert_array_equal(r.sum_logprobs, ref.score_actions([PROMPTS[i % 4]], [CANDS[i % 4]])[0].sum_logprobs)
    finally:
        client.shutdown()


def test_dead_server_gives_actor_error_naming_tier_and_replica(ray_session):
    from dmr_rl.serving.launcher import create_model_servers

    client = create_model_servers("lp", TierConfig(num_replicas=1), functools.partial(FakeBackend, "lp"))
    ray_session.kill(client.handles[0])
    with pytest.raises(ActorError, match=r"tier 'lp' replica 0"):
        client.score_actions(PROMPTS[:1], CANDS[:1])
    client.shutdown()


def test_unplaceable_tier_is_a_clear_error(ray_session):
    from dmr_rl.serving.launcher import create_model_servers

    with pytest.raises(ActorError, match=r"cannot place tier 'hp'.*hp_model"):
        create_model_servers("hp", TierConfig(resources={"hp_model": 1}), functools.partial(FakeBackend, "hp"),
                             place_timeout_s=1.0)


def test_server_that_cannot_load_its_backend_is_named(ray_session, tmp_path):
    from dmr_rl.serving.launcher import create_model_servers

    with pytest.raises(ActorError, match=r"tier 'hp' failed to start"):
        create_model_servers("hp", TierConfig(), _load(str(tmp_path / "missing")),
                             ready_timeout_s=120)


CLUSTER_SCRIPT = r'''
import functools, os, sys
import ray
from ray.cluster_utils import Cluster
from dmr_rl.config import RayConfig, TierConfig
from dmr_rl.errors import ActorError
from dmr_rl.serving.fake_backend import FakeBackend
from dmr_rl.serving.launcher import create_model_servers, ray_init

os.makedirs("/tmp/ray", exist_ok=True)  # Ray records the cluster address there, without creating it
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": sys.argv[1]})
hp_node = c.add_node(num_cpus=1, resources={"hp_model": 2})
lp_node = c.add_node(num_cpus=1, resources={"lp_model": 1})
gpu_node = c.add_node(num_cpus=1, num_gpus=1)
c.wait_for_nodes()
ray_init(RayConfig(address=c.address), sys.argv[1])
hp = create_model_servers("hp", TierConfig(resources={"hp_model": 1}, num_replicas=2), functools.partial(FakeBackend, "hp"))
lp = create_model_servers("lp", TierConfig(resources={"lp_model": 1}), functools.partial(FakeBackend, "lp"),
                        max_restarts=0)  # node loss with no restart left: an ActorError naming the tier
assert {r["node_id"] for r in hp.ready()} == {hp_node.node_id}, hp.ready()
assert [r["node_id"] for r in lp.ready()] == [lp_node.node_id], lp.ready()
assert len(hp.score_actions(["a >"], [["x", "y"]])[0].sum_logprobs) == 2
halves = create_model_servers("gpu", TierConfig(num_gpus=0.5, num_replicas=2), functools.partial(FakeBackend, "g"))
assert [r["node_id"] for r in halves.ready()] == [gpu_node.node_id] * 2  # two half-GPU replicas share it
halves.shutdown()
c.remove_node(lp_node)
try:
    lp.score_actions(["a >"], [["x", "y"]])
    raise SystemExit("no error from a server on a removed node")
except ActorError as e:
    assert "tier 'lp' replica 0" in str(e), e
print("PLACEMENT_OK")
ray.shutdown()
c.shutdown()
'''


def test_custom_resources_place_tiers_on_their_nodes_of_a_multinode_cluster(tmp_path):
    """A simulated 4-node cluster (its own Ray, in a subprocess): each tier's replicas land on the
    node offering its custom resource, fractional-GPU replicas on the GPU node; losing a tier's
    node is an ActorError naming the tier."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    script = tmp_path / "cluster_check.py"
    script.write_text(CLUSTER_SCRIPT)
    temp = tempfile.mkdtemp(prefix="dmrc", dir="/tmp")  # short: Ray's unix sockets live below it
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run([sys.executable, str(script), temp], capture_output=True, text=True, timeout=240,
                             env=env, cwd=root)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert "PLACEMENT_OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
