"""LMAgent over a real transformers backend, and a tiny behaviour-cloning run on a toy text env."""
import json

import numpy as np
import pytest

from environments.base import TaskState, TextEnv

COLORS = ["red", "blue", "green", "yellow"]


class BoxEnv(TextEnv):
    """Two steps: open the box (reveals a coloured ball), then take that ball. Won iff right ball."""

    name = "box"
    default_max_steps = 4

    def __init__(self, n=8, max_steps=None):
        super().__init__(max_steps)
        self.n = n

    def _num_tasks(self):
        return self.n

    def _task_id(self, index):
        return f"box-{index}"

    def _admissible(self):
        return ["open box", "look"] + [f"take {c} ball" for c in COLORS]

    def _reset_task(self, index):
        self.color = COLORS[index % len(COLORS)]
        self.opened = False
        return TaskState("You see a closed box.", self._admissible(), "box", "take the ball from the box")

    def _step_task(self, command):
        if command == "open box":
            self.opened = True
            return TaskState(f"You open the box. In it, you see a {self.color} ball.", self._admissible(),
                             "box", "take the ball from the box")
        if command.startswith("take"):
            won = self.opened and command == f"take {self.color} ball"
            return TaskState("You take the ball." if won else "Nothing happens.", self._admissible(), "box",
                             "take the ball from the box", won=won, score=float(won), done=True)
        return TaskState("You see a box.", self._admissible(), "box", "take the ball from the box")

    def expert_action(self):
        return f"take {self.color} ball" if self.opened else "open box"


class BoxTeacher:
    """Observation-driven: opens the box, then takes the ball it saw."""

    def reset(self, env):
        self.seen = None

    def act(self, obs, info):
        for c in COLORS:
            if f"{c} ball" in obs:
                self.seen = c
        return f"take {self.seen} ball" if self.seen else "open box"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("transformers")
    from dmr_rl.models.prompting import PromptConfig
    from dmr_rl.models.train_agent import TrainAgentConfig, train_agent

    out = tmp_path_factory.mktemp("agent")
    cfg = TrainAgentConfig(env="box", out=str(out), minutes=0.7, hidden=32, layers=1, heads=2, vocab=200,
                           batch_size=16, lr=3e-3, dagger_rounds=1, val_games=0, val_split="", snapshots=True, train_share=0.3,
                           prompt=PromptConfig(history_window=1, show_admissible=False))
    logs = []
    info = train_agent(cfg, env=BoxEnv(8), teacher=BoxTeacher(), progress=logs.append)
    return out, info


def test_training_improves_loss_and_writes_checkpoint(trained):
    out, info = trained
    log = info["loss_log"]
    assert info["steps"] >= 20 and len(log) >= 2
    assert log[-1]["loss"] < log[0]["loss"]
    first = json.loads((out / "training.json").read_text())
    assert first["data"]["teacher_success"] == 1.0 and first["data"]["samples"] >= 16
    assert log[-1]["loss"] < 0.5 * np.log(6)  # far below a uniform guess over 6 actions
    assert log[-1]["acc"] >= 0.9
    for name in ("config.json", "model.safetensors", "tokenizer.json", "agent_config.json", "calib_prompts.json"):
        assert (out / name).exists(), name


def test_snapshots_after_each_phase(trained):
    from safetensors.torch import load_file

    out, info = trained
    rounds = [f"dagger{r['round']}" for r in info["dagger"]]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == sorted(["bc"] + rounds)
    for name in ["bc"] + rounds:
        d = out / "snapshots" / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "agent_config.json", "calib_prompts.json"):
            assert (d / f).exists(), d / f
        assert json.loads((d / "training.json").read_text())["snapshot"] == name
    bc_steps = json.loads((out / "snapshots" / "bc" / "training.json").read_text())["steps"]
    assert bc_steps == info["steps"] - sum(r["train_steps"] for r in info["dagger"]) > 0
    if rounds:  # training went on after the first snapshot, and the last one is the final model
        final = load_file(str(out / "model.safetensors"))
        early = load_file(str(out / "snapshots" / "bc" / "model.safetensors"))
        last = load_file(str(out / "snapshots" / rounds[-1] / "model.safetensors"))
        assert any(not torch_equal(early[k], final[k]) for k in final)
        assert all(torch_equal(last[k], final[k]) for k in final)


def test_fine_tune_from_a_checkpoint_trains_only_the_top_layers(trained, tmp_path):
    """``--init DIR``: the checkpoint's tokenizer and weights; embeddings frozen, the top layer trained."""
    from safetensors.torch import load_file

    from dmr_rl.errors import ModelError
    from dmr_rl.models.prompting import PromptConfig
    from dmr_rl.models.train_agent import TrainAgentConfig, train_agent

    base, _ = trained
    out = tmp_path / "tuned"
    cfg = TrainAgentConfig(env="box", out=str(out), minutes=0.1, init=str(base), train_layers=1, batch_size=8,
                           lr=1e-2, dagger_rounds=0, val_games=0, val_split="",
                           prompt=PromptConfig(history_window=1, show_admissible=False))
    info = train_agent(cfg, env=BoxEnv(8), teacher=BoxTeacher(), progress=lambda m: None)
    assert info["model"]["init"] == str(base) and info["steps"] > 0
    assert 0 < info["model"]["trained_params"] < info["model"]["params"]
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert torch_equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert any(not torch_equal(before[k], after[k]) for k in after if k.startswith("model.layers.0."))
    vocab = [json.loads((d / "tokenizer.json").read_text())["model"]["vocab"] for d in (base, out)]
    assert vocab[0] == vocab[1]
    with pytest.raises(ModelError, match="--train-layers 5"):
        train_agent(TrainAgentConfig(env="box", out=str(tmp_path / "x"), minutes=0.1, init=str(base), train_layers=5,
                                     val_games=0, val_split=""), env=BoxEnv(8), teacher=BoxTeacher(),
                    progress=lambda m: None)
    with pytest.raises(ModelError, match="nope"):
        train_agent(TrainAgentConfig(env="box", out=str(tmp_path / "y"), minutes=0.1, init=str(tmp_path / "nope"),
                                     val_games=0, val_split=""), env=BoxEnv(8), teacher=BoxTeacher(),
                    progress=lambda m: None)


def test_train_agent_flags_with_init_take_fine_tuning_defaults():
    from dmr_rl.cli import build_parser
    from dmr_rl.cli.train_agent_cmds import config_from_args
    from dmr_rl.models.train_agent import FINE_TUNE_DEFAULTS, TrainAgentConfig

    base = ["train", "agent", "--env", "alfworld", "--data", "D", "--out", "O"]
    plain = config_from_args(build_parser().parse_args(base))
    assert (plain.init, plain.lr, plain.dagger_rounds) == ("", TrainAgentConfig.lr, TrainAgentConfig.dagger_rounds)
    tuned = config_from_args(build_parser().parse_args(base + ["--init", "smollm2"]))
    assert tuned.init == "smollm2"
    assert {k: getattr(tuned, k) for k in FINE_TUNE_DEFAULTS} == FINE_TUNE_DEFAULTS
    given = config_from_args(build_parser().parse_args(base + ["--init", "smollm2", "--lr", "0.01",
                                                               "--dagger-rounds", "2", "--train-layers", "4"]))
    assert (given.lr, given.dagger_rounds, given.train_layers, given.batch_size) == (
        0.01, 2, 4, FINE_TUNE_DEFAULTS["batch_size"])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_trained_agent_plays_episodes_end_to_end(trained):
    from dmr_rl.models import load_backend
    from dmr_rl.models.agent import AgentPolicy, LMAgent
    from environments.runner import evaluate_policy

    out, _ = trained
    agent = LMAgent.from_checkpoint(out, load_backend(model_path=str(out)))
    assert agent.history_window == 1 and agent.action_mode == "score"
    summary = evaluate_policy(BoxEnv(8), AgentPolicy(agent, seed=0), episodes=8)
    assert summary["success_rate"] == 1.0  # random play wins 1/4 * 1/6 of the time


def test_lmagent_batched_score_and_generate_modes(trained):
    from dmr_rl.models import load_backend
    from dmr_rl.models.agent import LMAgent
    from dmr_rl.step import StepContext

    out, _ = trained
    backend = load_backend(model_path=str(out))
    agent = LMAgent.from_checkpoint(out, backend)
    adm = BoxEnv()._admissible()
    ctxs = [StepContext(task="take the ball from the box", obs=f"You open the box. In it, you see a {c} ball.",
                        history=[("open box", f"You open the box. In it, you see a {c} ball.")],
                        admissible=adm, step=1) for c in COLORS]
    calls = backend.cost.calls
    acts = agent.act(ctxs, np.random.default_rng(0))
    assert backend.cost.calls == calls + 1  # one batched backend call for all contexts
    assert [a for a, _ in acts] == [f"take {c} ball" for c in COLORS]
    for _, p in acts:
        assert p.shape == (len(adm),) and abs(p.sum() - 1) < 1e-9
    gen = LMAgent.from_checkpoint(out, backend, action_mode="generate", max_new_tokens=6)
    g_acts = gen.act(ctxs, np.random.default_rng(0))
    for (a, p), c in zip(g_acts, COLORS):
        assert a in adm and p.max() == 1.0 and p[adm.index(a)] == 1.0
    assert sum(a == f"take {c} ball" for (a, _), c in zip(g_acts, COLORS)) >= 3
    sampled = LMAgent.from_checkpoint(out, backend, temperature=1.0)
    assert all(a in adm for a, _ in sampled.act(ctxs, np.random.default_rng(1)))


def test_model_dir_with_tier_lp_plays_its_low_bit_copy(trained, tmp_path, monkeypatch):
    """``dmr env eval --policy agent --model DIR --tier lp``: the copy is made once, then reused."""
    from types import SimpleNamespace

    from dmr_rl.models.agent import agent_policy_from_args
    from environments.runner import run_episode

    monkeypatch.setenv("DMR_CACHE", str(tmp_path))
    out, _ = trained
    args = SimpleNamespace(model=str(out), tier="lp", env="box", seed=0)
    policy = agent_policy_from_args(args, BoxEnv())
    made = tmp_path / "agents" / "box" / "lp-awq-w3g32"
    quant = json.loads((made / "dmr_quant.json").read_text())
    assert (quant["method"], quant["bits"], quant["group_size"]) == ("awq", 3, 32)
    assert run_episode(BoxEnv(4), policy, 2).steps >= 1
    stamp = (made / "dmr_quant.json").stat().st_mtime_ns
    agent_policy_from_args(args, BoxEnv())
    assert (made / "dmr_quant.json").stat().st_mtime_ns == stamp


def test_agent_policy_from_args_and_bad_input(trained, tmp_path):
    from types import SimpleNamespace

    from dmr_rl.errors import ModelError
    from dmr_rl.models.agent import LMAgent, agent_policy_from_args
    from environments.runner import run_episode

    out, _ = trained
    policy = agent_policy_from_args(SimpleNamespace(model=str(out), tier="hp", env="box", seed=0), BoxEnv())
    assert run_episode(BoxEnv(4), policy, 2).won
    with pytest.raises(ModelError, match="does not exist"):
        agent_policy_from_args(SimpleNamespace(model=str(tmp_path / "nope"), tier="hp", env="box", seed=0), None)
    with pytest.raises(ModelError, match="unknown tier"):
        agent_policy_from_args(SimpleNamespace(model="", tier="mp", env="box", seed=0), None)
    with pytest.raises(ModelError, match="no trained agent"):
        agent_policy_from_args(SimpleNamespace(model="", tier="hp", env="box", seed=0), None)
    with pytest.raises(ModelError, match="action_mode"):
        LMAgent(None, action_mode="beam")


def test_packed_candidates_score_like_separate_sequences():
    """The tree mask makes one packed forward give each candidate the log-likelihood it gets
    alone after the prompt (what score mode computes at acting time)."""
    torch = pytest.importorskip("torch")
    import random

    from transformers import LlamaConfig, LlamaForCausalLM

    from dmr_rl.models.bc_loss import Encoded, pack_batch

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True))
    model.config._attn_implementation = "sdpa"
    model.eval()
    ex = Encoded(prompt=[3, 7, 9, 11], cands=[[5, 6], [8], [12, 13, 14]], target=2)
    packed = pack_batch([ex], max_candidates=8, rng=random.Random(0))
    with torch.no_grad():
        hidden = model.model(input_ids=packed["ids"], attention_mask=packed["mask"],
                             position_ids=packed["pos"]).last_hidden_state
        logp = torch.log_softmax(model.lm_head(hidden[packed["pred_b"], packed["pred_pos"]]), -1)
        tok = logp.gather(-1, packed["tgt"][:, None])[:, 0]
        packed_sums = {}
        for j, v in zip(packed["cand_j"].tolist(), tok.tolist()):
            packed_sums[j] = packed_sums.get(j, 0.0) + v
        by_tokens = {}
        for j in packed_sums:  # which candidate sits in slot j: read its tokens back
            by_tokens[tuple(t for t, jj in zip(packed["tgt"].tolist(), packed["cand_j"].tolist()) if jj == j)] = j
        for cand in ex.cands:
            ids = torch.tensor([ex.prompt + cand])
            lp = torch.log_softmax(model(ids).logits[0], -1)
            alone = sum(float(lp[len(ex.prompt) - 1 + t, c]) for t, c in enumerate(cand))
            assert abs(packed_sums[by_tokens[tuple(cand)]] - alone) < 1e-4
    assert ex.cands[ex.target] == [t for t, j in zip(packed["tgt"].tolist(), packed["cand_j"].tolist())
                                   if j == int(packed["target"][0])]


def test_evaluate_tiers_quantizes_with_the_group_size_overrides(trained, tmp_path, monkeypatch):
    """``dmr train agent --eval-data ... --lp-group-size-override R=G``: training.json keeps the overrides
    and the low-bit copy it plays is quantized with them (not only named after them)."""
    import shutil

    import environments
    from dmr_rl.models.agent import lp_spec
    from dmr_rl.models.quantize import parse_group_size_overrides
    from dmr_rl.models.train_agent import evaluate_tiers

    out, _ = trained
    d = tmp_path / "agent"
    shutil.copytree(out, d, ignore=shutil.ignore_patterns("snapshots", "lp-*"))
    monkeypatch.setattr(environments, "make_env", lambda name, data, split: BoxEnv(4))
    over = parse_group_size_overrides([r"mlp\.=16"])
    lp = {"method": "awq", "bits": 3, "group_size": 32, "group_size_overrides": over, "engine": "torch"}
    result = evaluate_tiers(d, "box", "unused", "valid", 2, lp, progress=lambda *_: None)
    assert result["games"] == 2 and 0.0 <= result["lp"]["success"] <= 1.0
    spec = lp_spec(d)
    assert spec["group_size_overrides"] == over and spec["dir"].startswith("lp-awq-w3g32-mixed-")
    quant = json.loads((d / spec["dir"] / "dmr_quant.json").read_text())
    assert quant["group_size_overrides"] == over
    from dmr_rl.errors import ModelError

    with pytest.raises(ModelError, match="expected REGEX=G"):
        parse_group_size_overrides(["mlp.16"])
