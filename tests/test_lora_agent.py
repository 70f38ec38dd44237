"""LoRA agents: training moves only the adapter, the saved bf16 adapter merges back to the same
model, an adapter directory loads like any agent, and the shipped SmolLM2 adapter acts."""
import json
import random
from types import SimpleNamespace

import pytest
import torch

from dmr_rl.models.agent import ASSETS, AGENT_CONFIG, is_adapter_dir

CFG = SimpleNamespace(batch_size=4, max_candidates=3, lm_weight=0.2, label_smoothing=0.0, bf16=False)


def _data(tok, n=8):
    from dmr_rl.models.bc_loss import Encoded

    rng = random.Random(0)
    words = ["go to desk 1", "open drawer 2", "take apple 1", "look"]
    cands = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    return [Encoded(tok(f"You see a room {i}. Task: find it.\n>", add_special_tokens=False)["input_ids"], cands,
                    rng.randrange(len(words))) for i in range(n)]


@pytest.fixture()
def tiny(tmp_path):
    from dmr_rl.models.checkpoints import load_causal_lm, load_tokenizer, make_tiny_checkpoint

    d = make_tiny_checkpoint(tmp_path / "base", hidden=32, layers=2, vocab=300)
    return d, load_causal_lm(str(d)), load_tokenizer(str(d))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_lora_trains_the_adapter_only(tiny):
    from dmr_rl.models.bc_loss import train_for
    from dmr_rl.models.lora import apply_lora

    base_dir, model, tok = tiny
    ids = torch.tensor([_data(tok, 1)[0].prompt])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out0 = _logits(model, ids)
    peft_model = apply_lora(model, rank=4, layers=1)
    assert torch.equal(_logits(model, ids), out0)  # a fresh adapter (B = 0) changes nothing
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "layers.1." in n for n in trainable)  # top layer only
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_for(model, _data(tok), 1e9, CFG, opt, random.Random(0), [], max_steps=5)
    assert not torch.allclose(_logits(model, ids), out0, atol=1e-4)
    base_state = peft_model.get_base_model().state_dict()
    for k, v in before.items():  # every base weight is where it was (peft renames wrapped ones)
        key = k if k in base_state else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(base_state[key], v), k


def test_bf16_autocast_trains(tiny):
    from dmr_rl.models.bc_loss import train_for
    from dmr_rl.models.lora import apply_lora

    _, model, tok = tiny
    apply_lora(model, rank=4)
    log: list = []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_for(model, _data(tok), 1e9, SimpleNamespace(**{**vars(CFG), "bf16": True}), opt, random.Random(0), log,
              max_steps=20)
    assert log[0]["loss"] > log[-1]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and optimizer stay fp32


def test_adapter_round_trip_and_agent_dir(tiny, tmp_path, monkeypatch):
    from dmr_rl.models.agent import load_agent, lp_spec, resolve_agent_dir
    from dmr_rl.models.bc_loss import train_for
    from dmr_rl.models.lora import ADAPTER_WEIGHTS, apply_lora, merged_from_adapter, save_adapter

    base_dir, model, tok = tiny
    peft_model = apply_lora(model, rank=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_for(model, _data(tok), 1e9, CFG, opt, random.Random(0), [], max_steps=5)
    out = tmp_path / "agent"
    size = save_adapter(peft_model, out)
    assert size == (out / ADAPTER_WEIGHTS).stat().st_size
    with torch.no_grad():  # what the saved (bf16) adapter holds
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(p.to(torch.bfloat16).float())
    ids = torch.tensor([_data(tok, 1)[0].prompt])
    merged = merged_from_adapter(base_dir, out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, ids), _logits(model, ids), atol=1e-4)

    # an agent directory holding only the adapter: merged once into the cache, then reused
    tok.save_pretrained(str(out))
    (out / AGENT_CONFIG).write_text(json.dumps({"action_mode": "score", "base": str(base_dir)}))
    (out / "training.json").write_text(json.dumps({"lp": {"bits": 4, "group_size": 16}}))
    monkeypatch.setenv("DMR_CACHE", str(tmp_path / "cache"))
    assert is_adapter_dir(out) and not is_adapter_dir(base_dir)
    d = resolve_agent_dir(out)
    assert d.parent == tmp_path / "cache" / "agents" / "merged" and (d / "config.json").exists()
    fp32 = load_agent(out, dtype="float32").backend.model  # auto is bf16 on AMX / AVX-512-BF16 CPUs
    assert torch.allclose(_logits(fp32, ids), _logits(model, ids), atol=1e-4)
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    (out / "training.json").write_text(json.dumps({"lp": {"bits": 3, "group_size": 16}}))
    assert resolve_agent_dir(out) == d and (d / "model.safetensors").stat().st_mtime_ns == stamp
    assert lp_spec(d)["bits"] == 3  # the agent's small files follow the source
    (out / AGENT_CONFIG).write_text(json.dumps({"action_mode": "score"}))
    from dmr_rl.errors import ModelError

    with pytest.raises(ModelError, match="names no 'base'"):
        resolve_agent_dir(out)


def test_resume_adapter_goes_on_from_the_saved_one(tiny, tmp_path):
    """--resume-adapter: the saved adapter loads trainable on the base (same outputs as the merged
    agent), takes its shape from its config, trains on; mismatched flags or bases are named."""
    from dmr_rl.errors import ModelError
    from dmr_rl.models.bc_loss import train_for
    from dmr_rl.models.lora import adapter_shape, apply_lora, merged_from_adapter, resume_lora, save_adapter
    from dmr_rl.models.checkpoints import load_causal_lm
    from dmr_rl.models.train_agent import TrainAgentConfig

    base_dir, model, tok = tiny
    peft_model = apply_lora(model, rank=4, layers=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_for(model, _data(tok), 1e9, CFG, opt, random.Random(0), [], max_steps=3)
    out = tmp_path / "agent"
    save_adapter(peft_model, out, base=str(base_dir))
    (out / AGENT_CONFIG).write_text(json.dumps({"action_mode": "score", "base": str(base_dir), "env": "alfworld"}))
    assert adapter_shape(out) == {"rank": 4, "alpha": 8.0, "layers": 1}

    ids = torch.tensor([_data(tok, 1)[0].prompt])
    fresh = load_causal_lm(str(base_dir))
    resumed = resume_lora(fresh, out)
    trainable = [n for n, p in fresh.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "layers.1." in n for n in trainable)
    assert torch.allclose(_logits(fresh, ids), _logits(merged_from_adapter(base_dir, out), ids), atol=1e-4)
    before = _logits(fresh, ids)
    opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    train_for(fresh, _data(tok), 1e9, CFG, opt, random.Random(1), [], max_steps=3)
    assert not torch.allclose(_logits(fresh, ids), before, atol=1e-4) and resumed is not None

    cfg = TrainAgentConfig(out=str(tmp_path / "next"), init=str(base_dir), resume_adapter=str(out))
    cfg.validate()
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.train_layers) == (4, 8.0, 1)
    with pytest.raises(ModelError, match="differs from the resumed adapter's 4"):
        TrainAgentConfig(out="x", init=str(base_dir), resume_adapter=str(out), lora_rank=8).validate()
    with pytest.raises(ModelError, match="not --env webshop"):
        TrainAgentConfig(out="x", env="webshop", init=str(base_dir), resume_adapter=str(out)).validate()
    with pytest.raises(ModelError, match="its base is"):
        TrainAgentConfig(out="x", init="smollm2", resume_adapter=str(out)).validate()
    with pytest.raises(ModelError, match="no LoRA agent there"):
        TrainAgentConfig(out="x", init=str(base_dir), resume_adapter=str(base_dir)).validate()


SHIPPED = ASSETS / "alfworld-smollm2"


@pytest.mark.skipif(not is_adapter_dir(SHIPPED), reason="the shipped SmolLM2 LoRA agent is not committed")
def test_shipped_adapter_agent_acts(alfworld_data):
    """The committed adapter: small, merged with SmolLM2 from its package, plays a generated game."""
    from dmr_rl.models.agent import AgentPolicy, agent_policy_from_args
    from environments import make_env

    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) <= 25 * 2**20
    info = json.loads((SHIPPED / "training.json").read_text())
    assert info["eval"]["hp"]["success"] >= 0.6 and info["model"]["lora"]["rank"] > 0
    env = make_env("alfworld", alfworld_data, "valid_seen", max_steps=3)
    policy = agent_policy_from_args(SimpleNamespace(model=str(SHIPPED), tier="hp", env="alfworld", seed=0), env)
    assert isinstance(policy, AgentPolicy)
    obs, info = env.reset(options={"task_index": 0})
    policy.reset(env)
    for _ in range(3):
        action = policy.act(obs, info)
        assert action in info["admissible_commands"]
        assert policy.last_probs is not None and abs(policy.last_probs.sum() - 1) < 1e-4
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
