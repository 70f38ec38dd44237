"""``dmr train agent``: its flags, the :class:`TrainAgentConfig` they make, and the command.

The training itself is :func:`dmr_rl.models.train_agent.train_agent`; ``--eval-data`` then plays both
tiers (:func:`dmr_rl.models.train_agent.evaluate_tiers`).
"""
from __future__ import annotations

import json
from pathlib import Path

from dmr_rl.models.prompting import PromptConfig
from dmr_rl.models.train_agent import FINE_TUNE_DEFAULTS, TrainAgentConfig, evaluate_tiers, train_agent


def register_train_agent(train_sub) -> None:
    p = train_sub.add_parser("agent", help="behaviour-clone the environment's teacher into a small LM agent")
    p.add_argument("--env", required=True, help="alfworld | webshop")
    p.add_argument("--data", required=True, help="data root (generated games / catalog)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget (data + training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--max-games", type=int, default=0, help="cap on training games (0: all)")
    p.add_argument("--val-games", type=int, default=12, help="valid_seen games checked after training (0: none)")
    p.add_argument("--hidden", type=int, default=TrainAgentConfig.hidden)
    p.add_argument("--layers", type=int, default=TrainAgentConfig.layers)
    p.add_argument("--heads", type=int, default=TrainAgentConfig.heads, help="attention heads (must divide --hidden)")
    p.add_argument("--vocab", type=int, default=TrainAgentConfig.vocab)
    p.add_argument("--init", default="", help="fine-tune a pretrained model instead of building one: "
                   "smollm2 (the registry's SmolLM2-135M-Instruct) or a checkpoint directory")
    p.add_argument("--train-layers", type=int, default=TrainAgentConfig.train_layers,
                   help="with --init: train only the top N decoder layers (0: all)")
    p.add_argument("--dagger-rounds", type=int, default=None,
                   help=f"DAgger rounds (default {TrainAgentConfig.dagger_rounds}; with --init 0)")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {TrainAgentConfig.lr}; "
                   f"with --init {FINE_TUNE_DEFAULTS['lr']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"steps per batch (default "
                   f"{TrainAgentConfig.batch_size}; with --init {FINE_TUNE_DEFAULTS['batch_size']})")
    p.add_argument("--max-candidates", type=int, default=None, help="candidate actions scored per step "
                   f"(default {TrainAgentConfig.max_candidates}; with --init {FINE_TUNE_DEFAULTS['max_candidates']})")
    p.add_argument("--lm-weight", type=float, default=TrainAgentConfig.lm_weight,
                   help="weight of the token-level LM loss on the teacher's action (generate mode needs it)")
    p.add_argument("--label-smoothing", type=float, default=TrainAgentConfig.label_smoothing,
                   help="label smoothing of the loss over the candidate actions")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--lora-rank", type=int, default=0, help="with --init: train a LoRA adapter of this rank "
                   "(on the top --train-layers layers, 0: all) instead of the layers themselves; the output "
                   "holds only the adapter (bf16) and is merged with the base at first use")
    p.add_argument("--lora-alpha", type=float, default=0.0, help="LoRA scale numerator (0: 2 x rank)")
    p.add_argument("--resume-adapter", default="", help="with --init: go on training the LoRA adapter of this "
                   "agent directory (same base and env; its rank, alpha and layers) instead of a fresh one; "
                   "training.json records it under resumed_from")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast while training (about 5x faster per "
                   "core where the CPU has AMX; see bc_loss.cpu_bf16_fast)")
    p.add_argument("--snapshots", action="store_true", help="also save the agent after each training phase "
                   "(teacher data, each DAgger round) under OUT/snapshots/")
    p.add_argument("--eval-data", default="", help="after training: data root whose --eval-split games "
                   "both tiers play (HP and its low-bit copy); recorded in training.json")
    p.add_argument("--eval-split", default="valid_unseen")
    p.add_argument("--eval-games", type=int, default=0, help="0: the whole split")
    p.add_argument("--lp-method", default="awq", help="low-bit copy: awq | rtn")
    p.add_argument("--lp-bits", type=int, default=3)
    p.add_argument("--lp-group-size", type=int, default=32, help="must divide the hidden size")
    p.add_argument("--lp-group-size-override", action="append", default=[], metavar="REGEX=G",
                   help="another group size G for the Linears whose name REGEX finds (repeatable; first match wins; "
                        "see dmr quantize --group-size-override)")
    p.add_argument("--lp-engine", default="llmcompressor", help="who searches the AWQ scales: llmcompressor "
                   "or torch (same checkpoint format, ~6x faster on CPU; see dmr quantize --engine)")
    p.set_defaults(func=_cmd_train_agent)


def config_from_args(args) -> TrainAgentConfig:
    """The TrainAgentConfig ``dmr train agent`` runs: flags given win, then FINE_TUNE_DEFAULTS
    (with ``--init``), then the dataclass defaults."""
    cfg = TrainAgentConfig(env=args.env, data=str(args.data), out=args.out, minutes=args.minutes, seed=args.seed,
                           split=args.split, max_games=args.max_games, val_games=args.val_games,
                           hidden=args.hidden, layers=args.layers, heads=args.heads, vocab=args.vocab,
                           threads=args.threads, lm_weight=args.lm_weight, label_smoothing=args.label_smoothing,
                           snapshots=args.snapshots, init=args.init, train_layers=args.train_layers,
                           lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, bf16=args.bf16,
                           resume_adapter=args.resume_adapter)
    for name in ("lr", "batch_size", "max_candidates", "dagger_rounds"):
        given = getattr(args, name)
        if given is not None:
            setattr(cfg, name, given)
        elif args.init:
            setattr(cfg, name, FINE_TUNE_DEFAULTS[name])
    if args.env == "webshop":
        # one step of history (the memory line lists the earlier clicks), the task next to the action, and
        # 600 characters of a page: on a seed-0 catalog the teacher's pick lies within the first 170
        # characters of the results page for 90% of goals (max 615); prompts then fit 512 tokens, so none is cut
        cfg.prompt = PromptConfig(history_window=1, show_admissible=False, max_obs_chars=600, task_last=True)
        cfg.max_prompt_tokens = 512
    return cfg


def _cmd_train_agent(args) -> int:
    import os

    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"data directory {data} does not exist")
    cfg = config_from_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = train_agent(cfg)
    print(json.dumps({k: info[k] for k in ("steps", "minutes", "validation", "data")}, indent=1))
    if args.eval_data:
        import torch

        torch.set_num_threads(max(1, args.threads))
        from dmr_rl.models.quantize import parse_group_size_overrides

        lp = {"method": args.lp_method, "bits": args.lp_bits, "group_size": args.lp_group_size,
              "group_size_overrides": parse_group_size_overrides(args.lp_group_size_override), "engine": args.lp_engine}
        result = evaluate_tiers(args.out, args.env, args.eval_data, args.eval_split, args.eval_games, lp, args.seed)
        print(json.dumps({t: result[t]["success"] for t in ("hp", "lp")}))
    return 0
