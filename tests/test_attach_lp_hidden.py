"""experiments/attach_lp_hidden.py: the LP hidden state of each labelled step's recorded prompt."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import attach_lp_hidden as alh  # noqa: E402


def test_rows_get_the_lp_state_of_their_own_recorded_prompt_at_the_layer(tmp_path, monkeypatch):
    from dmr_rl.config import load_config
    from dmr_rl.pipeline.collect import collect_dir
    from dmr_rl.rollout.records import EpisodeRecord, StepRecord, TrajectoryStore
    from dmr_rl.serving import launcher
    from dmr_rl.serving.clients import LocalTierClient
    from dmr_rl.serving.fake_backend import FakeBackend

    eps = [EpisodeRecord(episode_id=f"e{k}", task_index=k, task_id=str(k), task_type="t", task="put a mug",
                         steps=[StepRecord(step=t, obs="o", action="look", tier=1, admissible=["look"],
                                           prompt=f"prompt of episode {k} step {t}") for t in range(3)])
           for k in range(2)]
    TrajectoryStore(collect_dir(tmp_path), "worker-0").append(eps)
    prompts = alh.recorded_prompts(tmp_path)
    assert prompts[("e1", 2)] == "prompt of episode 1 step 2" and len(prompts) == 6
    backend = FakeBackend("lp")
    monkeypatch.setattr(launcher, "create_tier_clients", lambda cfg, tiers, local: {"lp": LocalTierClient("lp", backend)})
    rows = [{"episode_id": "e1", "step": 2, "label": 1}, {"episode_id": "e0", "step": 0, "label": 0}]
    out = alh.attach(load_config(None), rows, prompts, layer=2, batch_size=1)
    for r, o in zip(rows, out):
        assert {k: o[k] for k in r} == r  # nothing else changes
        want = backend.prompt_hidden([prompts[(r["episode_id"], r["step"])]], 2)[0]
        np.testing.assert_allclose(o["lp_hidden"], want, atol=1e-5)
    assert np.abs(np.subtract(out[0]["lp_hidden"], out[1]["lp_hidden"])).max() > 1e-3
    with pytest.raises(KeyError, match="no recorded prompt"):
        alh.attach(load_config(None), [{"episode_id": "e9", "step": 0}], prompts, layer=2)
