"""The configuration's schema: one dataclass per component, composed into :class:`DMRConfig`.

Every field carries its documentation as ``metadata["help"]``; that text is the only place a
setting is described (``dmr config --fields`` prints it). Loading, overrides and value checks
live in :mod:`dmr_rl.config`, which is what callers import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


def doc(default: Any, help: str, **kw):  # noqa: A002 - "help" reads best at the call sites
    """A dataclass field with a default and its documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------
@dataclass
class EnvConfig:
    name: str = doc("alfworld", "Task family: a key of environments.ENVIRONMENTS (alfworld, webshop).")
    data_dir: str = doc("", "Data root. Empty: generated games under <run_dir>/data (ALFWORLD_DATA is honoured for alfworld).")
    train_split: str = doc("train", "Split used for trajectory collection and training.")
    eval_split: str = doc("valid_unseen", "Split used for evaluation.")
    max_steps: int = doc(0, "Episode cap; 0 means the family's default (50 ALFWorld, 15 WebShop).")
    generate_n: int = doc(60, "When data_dir is empty: number of games/instructions to generate.")
    generate_seed: int = doc(0, "When data_dir is empty: generator seed.")
    generate_train_n: int = doc(0, "ALFWorld, when data_dir is empty: games in the train split (0: generate_n less its two "
                                   "validation splits of generate_n // 3 each); more training tasks for stage 1 without "
                                   "lengthening calibration or evaluation.")


@dataclass
class TierConfig:
    model_path: str = doc("", "Local checkpoint directory (transformers layout). Empty: the project's agent for this env.")
    backend: str = doc("transformers", "Backend key in dmr_rl.models.BACKENDS (transformers, compressed, quanto, autoawq, "
                                       "vllm; vllm needs the tier's python to name an interpreter that has vLLM).")
    dtype: str = doc("auto", "Compute dtype: auto, float32, bfloat16, float16. auto: bfloat16 on CUDA and on CPUs with "
                             "AMX or AVX-512-BF16 (about 5x faster linears there), float32 on other CPUs; "
                             "`dmr models info` and the model server's info() show what it resolved to.")
    quant_method: str = doc("none", "Quantization applied when the checkpoint is produced: none, awq, rtn.")
    bits: int = doc(16, "Weight bits for quant_method (2, 3, 4, 8; 16 means unquantized).")
    group_size: int = doc(64, "Quantization group size (must divide the hidden size).")
    group_size_overrides: dict = doc({}, "Other group sizes for some Linears: a regular expression searched in the "
                                         "module name -> group size, first match wins; e.g. "
                                         "{'layers\\.(2[2-9])\\.': 32} quantizes the top 8 of 30 layers in finer "
                                         "groups. Each must be a positive multiple of 8 dividing those Linears' widths.")
    device: str = doc("cpu", "torch device for this tier's server: cpu, cuda.")
    num_replicas: int = doc(1, "Model-server replicas for this tier (requests are load-balanced).")
    num_gpus: float = doc(0.0, "GPUs per replica (fractional allowed).")
    resources: dict = doc({}, "Extra Ray custom resources per replica, e.g. {hp_model: 1}.")
    max_batch_size: int = doc(64, "Largest batch a server forms from queued requests.")
    max_wait_ms: float = doc(2.0, "How long a server waits to fill a batch.")
    tensor_parallel_size: int = doc(1, "vllm backend: GPUs one replica's engine shards the model over (set num_gpus to the "
                                       "same number).")
    gpu_memory_utilization: float = doc(0.4, "vllm backend: share of each GPU's memory one engine takes for weights and KV "
                                             "cache, in (0, 1]; replicas sharing a GPU must sum to at most 1.")
    enforce_eager: bool = doc(False, "vllm backend: skip CUDA-graph / torch.compile capture (starts faster, steps slower).")
    python: str = doc("", "Interpreter this tier's model servers run in (Ray runtime_env py_executable), e.g. "
                          ".venv-vllm/bin/python from `python -m dmr_rl.models.vllm_env` for backend vllm, whose "
                          "compressed-tensors pin differs from the base install's; a relative path is taken from the "
                          "driver's working directory and must exist on every node that hosts the tier; empty: the "
                          "driver's interpreter.")


@dataclass
class AgentConfig:
    name: str = doc("", "Committed agent (a directory under dmr_rl/assets/agents/) the tiers serve when hp/lp.model_path "
                        "are empty: alfworld (the tiny 0.7M agent) or alfworld-smollm2 (SmolLM2-135M + LoRA adapter, "
                        "merged with its base once at first use). Empty: the directory named after env.name.")
    action_mode: str = doc("score", "score: rank admissible actions by log-likelihood; generate: free text matched to an admissible action.")
    history_window: int = doc(4, "Recent (observation, action) pairs kept in the prompt.")
    temperature: float = doc(0.0, "0: argmax/greedy; >0: sample with this temperature.")
    max_new_tokens: int = doc(24, "Generation cap in generate mode.")
    train_games: int = doc(0, "dmr train agent: games used for behaviour cloning (0: all of train).")
    train_minutes: float = doc(12.0, "dmr train agent: wall-clock budget for training.")


@dataclass
class RouterConfig:
    kind: str = doc("transformer", "Router key in dmr_rl.router.ROUTERS (transformer, or a baseline name).")
    d_model: int = doc(64, "Router width.")
    n_layers: int = doc(2, "Transformer encoder layers (the paper uses 2). 0 with features=lp_hidden: no token encoder, a "
                           "linear probe on the standardised LP hidden state.")
    n_heads: int = doc(4, "Attention heads.")
    max_tokens: int = doc(256, "Context tokens the router reads (task, observation, recent actions).")
    features: str = doc("tokens", "Feature extractor: tokens, or lp_hidden (also the LP model's hidden state at the prompt's "
                              "last token, standardised with its stage-1 training mean and std: an LP prompt pass per "
                              "step, recorded while collecting and charged when routing).")
    hidden_layer: int = doc(0, "lp_hidden: which LP layer the router reads. 0: the last (after the final norm; a whole LP "
                               "prompt pass); k > 0: the output of decoder layer k, the pass stopping there and charged "
                               "k / n_layers of an LP call on the steps HP acts on (on LP's steps it is the start of "
                               "LP's own pass).")
    threshold: float = doc(0.5, "Route to HP when P(HP) >= threshold (deterministic evaluation).")
    hp_first_steps: int = doc(0, "HP acts on each episode's first k steps whatever the network says (the router's score "
                                 "there is 1, so a threshold calibrated to a target HP ratio counts them; GRPO leaves "
                                 "them out of its loss). Saved with the checkpoint.")


@dataclass
class CollectConfig:
    policy: str = doc("hp", "Who acts while collecting: hp, lp, or mixed (random tier per step).")
    episodes: int = doc(40, "Episodes to collect.")
    num_workers: int = doc(2, "Rollout-worker actors.")
    envs_per_worker: int = doc(4, "Environments hosted per rollout worker.")
    seed: int = doc(0, "Seed for task order and sampling.")
    record_kl: bool = doc(False, "Also run the other tier at every collected step (its KV cache kept per episode like the "
                                 "acting tier's) and record KL(HP || LP) and whether the greedy actions agree; dmr "
                                 "label then labels from these instead of scoring every step again (score mode, greedy "
                                 "acting, kl_space actions or greedy_flip; dmr label --rescore scores anyway).")


@dataclass
class LabelConfig:
    mode: str = doc("budget", "budget: the top rho of steps by KL are positive; threshold: KL >= kl_threshold.")
    rho: float = doc(0.25, "Share of steps labelled precision-sensitive in budget mode.")
    kl_threshold: float = doc(0.1, "KL threshold in threshold mode (nats).")
    kl_space: str = doc("actions", "actions: KL(HP || LP) over the admissible-action distribution, at the agent's acting "
                                   "temperature when agent.temperature > 0 (the distribution it samples from); when it "
                                   "acts greedily (0) at temperature 1, the models' own distributions, since the greedy "
                                   "limit of the KL is degenerate (0 or infinite): greedy_flip is that limit; "
                                   "greedy_flip: a step is positive exactly where the two tiers' greedy (argmax) actions "
                                   "differ (the acting rule at temperature 0; label.mode, rho and kl_threshold are then "
                                   "unused; the rows' kl field still holds the actions KL); tokens: teacher-forced over "
                                   "the action tokens (temperature 1). Action scores are length-normalised when the "
                                   "agent acts on them that way (its agent_config.json), as the rollout KL is.")


@dataclass
class SFTConfig:
    epochs: int = doc(30, "Passes over the labelled steps.")
    lr: float = doc(3e-4, "Adam learning rate.")
    batch_size: int = doc(64, "Minibatch size.")
    soft_targets: bool = doc(False, "Train on KL-derived soft targets instead of hard labels.")
    holdout: float = doc(0.2, "Share of TASKS held out for precision/recall/AUROC (all episodes of a held-out task: a "
                              "task replayed by several collected episodes never sits on both sides).")
    pos_weight: float = doc(0.0, "Weight of the positive (HP) class in the BCE. 0 (auto): from the label balance of the "
                                 "training steps, negatives / positives (1 when there are none); 1: unweighted; any "
                                 "other positive value: that weight. Recorded in sft_metrics.json.")
    num_learners: int = doc(0, "RLlib learners (0: in the driver process).")


@dataclass
class GRPOConfig:
    iterations: int = doc(8, "GRPO iterations.")
    tasks_per_iter: int = doc(8, "Tasks per iteration.")
    group_size: int = doc(4, "Rollouts per task (G).")
    lr: float = doc(1e-4, "Adam learning rate.")
    clip_eps: float = doc(0.2, "PPO-style ratio clip.")
    kl_coef: float = doc(0.05, "Weight of the KL penalty to the stage-1 router.")
    hp_cost: float = doc(0.3, "lambda: reward = success - hp_cost * HP share of steps.")
    hp_budget: float = doc(-1.0, "If >= 0, hinge variant: penalise only the HP share above this budget.")
    adv_norm: str = doc("group_mean", "Advantage normalisation: group_mean (Dr. GRPO: reward minus its task group's mean), "
                                      "group_std (also divided by the group's std, as verl's GRPO), batch_std (group "
                                      "mean subtracted, divided by the batch's std). group_mean is the default because "
                                      "with group_std an all-success (or all-fail) group's advantages, which differ only "
                                      "by lambda x HP share, are rescaled to unit size, so lambda has no effect there.")
    epochs_per_iter: int = doc(2, "Update epochs over each iteration's batch.")
    checkpoint_every: int = doc(2, "Checkpoint every K iterations.")
    lambda_sweep: list = doc([], "dmr run: extra GRPO routers trained at these lambdas (hp_cost) beside the main one, each "
                                 "evaluated as its sampled policy for the report's lambda sweep (HP share should fall as "
                                 "lambda rises).")
    num_learners: int = doc(0, "RLlib learners (0: in the driver process).")


@dataclass
class EvalConfig:
    episodes: int = doc(0, "Tasks of the evaluation split every method plays: 0 = all of them; N = the same evenly spread N "
                           "tasks for every method and seed (never re-drawn).")
    seeds: list = doc([0, 1, 2, 3, 4], "Seeds of the stochastic methods (random routing, sampled routers, a sampling agent): "
                                       "each plays every task once per seed, averaged per task; deterministic methods on a "
                                       "deterministic environment play once, under the first seed.")
    target_hp_ratios: list = doc([0.1, 0.2, 0.3, 0.4, 0.6], "HP ratios a learned router's thresholds are calibrated to hit on "
                                                           "the validation split (eval.calib_split); random and first-k then "
                                                           "run at each point's realised ratio on the test split.")
    routers: list = doc(["sft", "grpo"], "The main job's routers `dmr run` evaluates: 'sft' (stage 1) and/or 'grpo' "
                                         "(stage 2); the causal check reads GRPO's router either way.")
    sampled: bool = doc(True, "Also play each GRPO router as the sampled policy it was trained as (point 'sampled', "
                              "every seed, with random routing matched to it).")
    calib_split: str = doc("", "Validation split for threshold calibration; empty: the family's (ALFWorld valid_seen, "
                               "WebShop eval). Never the evaluation split.")
    calib_episodes: int = doc(0, "Tasks of the calibration split played (0: all; N: an evenly spread N).")
    baselines: list = doc(["hp_only", "lp_only", "random", "first_k", "cascade", "kl_oracle"], "Baselines evaluated beside the router.")
    calibrated_baselines: list = doc([], "Baselines whose knob is calibrated on the validation split like a router's "
                                         "threshold and then compared with random and first-k at their realised HP "
                                         "ratio (point <name>_calibrated/r<target>); only 'cascade' has such a knob.")
    escalate_shares: list = doc([], "Also play every learned router with an LP-confidence floor (method <router>_escalate): "
                                    "on steps it gives LP, HP acts too where LP's max action probability is below the floor. "
                                    "Candidate shares of the steps escalated; an escalated step pays both tiers, so each "
                                    "share leaves the probe the HP share that reads the weight bytes of the probe alone at "
                                    "the target; per target the share (0 included), probe threshold and floor that put HP "
                                    "on the most flips of the validation play are chosen (dmr_rl.pipeline.escalation). "
                                    "Empty: off.")
    bootstrap: int = doc(2000, "Bootstrap resamples for 95% confidence intervals.")
    baseline_sweeps: dict = doc({}, "Knob values per baseline for fixed sweeps, e.g. {cascade: [0.3, 0.5], kl_oracle: [0.1]}; "
                                    "random and first-k follow the routers' realised HP ratios when a router is evaluated; "
                                    "missing baselines use dmr_rl.pipeline.eval_points.BASELINE_SWEEPS.")
    causal_episodes: int = doc(0, "Causal check: tasks replayed (0: skip the check; N: an evenly spread N of the split).")
    causal_flag_share: float = doc(0.1, "Causal check, router row: flag this share of each reference episode's steps "
                                        "(highest router P(HP), at least one).")


@dataclass
class RayConfig:
    address: str = doc("", "Ray address: empty starts a local Ray; 'auto' joins a running cluster.")
    num_cpus: int = doc(0, "CPUs for a local Ray (0: all).")
    num_gpus: int = doc(0, "GPUs for a local Ray.")
    max_restarts: int = doc(3, "Times Ray restarts a dead model server or rollout worker (requests in flight are resent, "
                               "finished episodes kept); after that the run stops with one error line.")


@dataclass
class DMRConfig:
    name: str = doc("default", "Experiment name.")
    run_dir: str = doc("runs/default", "Where every artefact of the run goes (data, models, shards, checkpoints, report).")
    seed: int = doc(0, "Global seed.")
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "Environment."})
    hp: TierConfig = field(default_factory=TierConfig, metadata={"help": "High-precision tier."})
    lp: TierConfig = field(default_factory=lambda: TierConfig(quant_method="awq", bits=2),
                           metadata={"help": "Low-precision tier."})
    agent: AgentConfig = field(default_factory=AgentConfig, metadata={"help": "Agent prompting and acting."})
    router: RouterConfig = field(default_factory=RouterConfig, metadata={"help": "Router policy."})
    collect: CollectConfig = field(default_factory=CollectConfig, metadata={"help": "Trajectory collection."})
    label: LabelConfig = field(default_factory=LabelConfig, metadata={"help": "KL labelling."})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "Stage 1."})
    grpo: GRPOConfig = field(default_factory=GRPOConfig, metadata={"help": "Stage 2."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    ray: RayConfig = field(default_factory=RayConfig, metadata={"help": "Ray cluster."})

    @property
    def path(self) -> Path:
        return Path(self.run_dir)
