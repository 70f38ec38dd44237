"""RLlib ``TorchLearner`` subclasses for the router and the ``LearnerGroup`` that runs them.

The losses are the pure functions of :mod:`dmr_rl.algos`; these classes only move a batch
through the :class:`~dmr_rl.router.rl_module.RouterRLModule` and log the metrics.

Batch columns (numpy arrays; one row = one routing decision = one step):

* features, both stages: ``tokens`` [B, L] int64, ``segments`` [B, L] int64, ``step`` [B] int64,
  ``hidden`` [B, H] float32 (lp_hidden features only). See :mod:`dmr_rl.router.features`.
* stage ``sft``: ``targets`` [B] float32 (labels or soft targets), ``weights`` [B] float32.
* stage ``grpo``: ``actions`` [B] int64 (tier taken), ``old_logp`` [B] float32 (log-prob of that
  tier under the sampling router), ``ref_logits`` [B] float32 (reference router's HP logit),
  ``advantages`` [B] float32, ``weights`` [B] float32 (mask).

Build one with :func:`build_learner_group`; feed it with :func:`make_batch`;
``lg.update(batch=..., num_epochs=..., minibatch_size=...)``; read the metrics with
:func:`update_metrics`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from dmr_rl.algos.grpo import grpo_loss
from dmr_rl.algos.router_losses import bce_loss
from dmr_rl.router.rl_module import LOGITS, module_spec

STAGES = ("sft", "grpo")


class RouterSFTLearner(TorchLearner):
    """Stage 1: BCE of the router's HP logit against per-step (soft) labels."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        lc = config.learner_config_dict
        loss, metrics = bce_loss(fwd_out[LOGITS], batch["targets"], mask=batch.get("weights"),
                                 pos_weight=lc.get("pos_weight"))
        self.metrics.log_dict(metrics, key=module_id, reduce="mean")
        return loss


class RouterGRPOLearner(TorchLearner):
    """Stage 2: clipped-ratio GRPO over the per-step decisions + KL to the stage-1 router."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        lc = config.learner_config_dict
        loss, metrics = grpo_loss(
            fwd_out[LOGITS], batch["actions"], batch["old_logp"], batch["advantages"],
            ref_logits=batch.get("ref_logits"), mask=batch.get("weights"),
            clip_eps=lc.get("clip_eps", 0.2), kl_coef=lc.get("kl_coef", 0.05),
            kl_kind=lc.get("kl_kind", "exact"), entropy_coef=lc.get("entropy_coef", 0.0))
        self.metrics.log_dict(metrics, key=module_id, reduce="mean")
        return loss


LEARNERS = {"sft": RouterSFTLearner, "grpo": RouterGRPOLearner}


class RouterTrainingConfig(AlgorithmConfig):
    """Just enough of an AlgorithmConfig to build the router's LearnerGroup (no EnvRunners:
    RLlib's runners don't handle text observations; the pipeline builds the batches)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        self.router_model_config: dict = {}

    def get_default_rl_module_spec(self):
        return module_spec(self.router_model_config)

    def get_default_learner_class(self):
        stage = self.learner_config_dict.get("stage")
        if stage not in LEARNERS:
            raise ValueError(f"router learner stage must be one of {STAGES}, got {stage!r}")
        return LEARNERS[stage]


def build_learner_group(cfg, stage: str, num_learners: Optional[int] = None,
                        lr: Optional[float] = None, grad_clip: Optional[float] = 1.0, seed: int = 0,
                        **loss_kwargs):
    """A LearnerGroup training the router for ``stage`` ("sft" or "grpo").

    cfg: a ``DMRConfig`` (router net from cfg.router; lr, num_learners and the GRPO loss
    settings from cfg.sft / cfg.grpo unless given here), or just a ``RouterConfig`` / net-config
    dict / None (defaults: lr 3e-4, num_learners 0). loss_kwargs go to the learner's loss:
    sft: pos_weight; grpo: clip_eps, kl_coef, kl_kind, entropy_coef.
    ``num_learners=0``: one learner in this process; N: N learner actors (DDP over gloo on CPU).
    Returns the ``LearnerGroup``.
    """
    from dmr_rl.router.transformer import net_config

    if stage not in STAGES:
        raise ValueError(f"router learner stage must be one of {STAGES}, got {stage!r}")
    router_cfg = cfg
    if hasattr(cfg, "router") and hasattr(cfg, stage):  # a DMRConfig
        section = getattr(cfg, stage)
        router_cfg = cfg.router
        lr = section.lr if lr is None else lr
        num_learners = section.num_learners if num_learners is None else num_learners
        if stage == "grpo":
            loss_kwargs = {"clip_eps": section.clip_eps, "kl_coef": section.kl_coef, **loss_kwargs}
        seed = getattr(cfg, "seed", seed)
    lr = 3e-4 if lr is None else lr
    num_learners = 0 if num_learners is None else num_learners
    if num_learners < 0:
        raise ValueError(f"num_learners must be >= 0, got {num_learners}")
    from dmr_rl.router.rl_module import spaces

    config = RouterTrainingConfig()
    config.router_model_config = net_config(router_cfg)
    obs_space, act_space = spaces()
    config.environment(observation_space=obs_space, action_space=act_space)
    config.training(lr=lr, grad_clip=grad_clip, grad_clip_by="global_norm")
    config.learners(num_learners=num_learners, num_cpus_per_learner=1 if num_learners else "auto",
                    learner_config_dict={"stage": stage, **loss_kwargs})
    config.debugging(seed=seed)
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return config.build_learner_group()


def check_learner_group(learner_group, stage: str, lr: float, **loss_kwargs) -> None:
    """Raise ValueError when a reused LearnerGroup was built for another stage, learning rate or
    loss setting than the run asks for (those are fixed when the group is built)."""
    cfg = learner_group.config
    have = dict(cfg.learner_config_dict)
    if have.get("stage") != stage:
        raise ValueError(f"the LearnerGroup passed in trains stage {have.get('stage')!r}, not {stage!r}")
    if abs(float(cfg.lr) - float(lr)) > 1e-12:
        raise ValueError(f"the LearnerGroup passed in has lr={cfg.lr}, the config asks for {lr}")
    for k, v in loss_kwargs.items():
        if have.get(k) != v:  # a setting the group was built without is a mismatch too
            raise ValueError(f"the LearnerGroup passed in has {k}={have.get(k)}, the config asks for {v}")


def make_batch(columns: dict):
    """A ``MultiAgentBatch`` for the router module from equal-length numpy columns."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    sizes = {k: len(v) for k, v in columns.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch columns differ in length: {sizes}")
    n = next(iter(sizes.values()))
    return MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch({k: np.asarray(v) for k, v in columns.items()})},
                           env_steps=n)


def update_metrics(results) -> dict:
    """Flatten one ``LearnerGroup.update`` result into {metric: float} for the router module."""
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    if isinstance(results, list):
        results = results[-1] if results else {}
    res = MetricsLogger.peek_results(results)
    out = {}
    for k, v in (res.get(DEFAULT_MODULE_ID) or {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def router_weights(learner_group) -> dict:
    """The router net's state dict (numpy arrays, keys without ``net.``) from the learners."""
    w = learner_group.get_weights()
    w = w.get(DEFAULT_MODULE_ID, w)
    return {(k[4:] if k.startswith("net.") else k): np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
            for k, v in w.items()}


def _clear_optimizer_state(learner, **_):
    for _name, opt in learner.get_optimizers_for_module(DEFAULT_MODULE_ID):
        opt.state.clear()
    return True


def reset_learner_group(learner_group, weights: dict) -> None:
    """Start afresh on a reused LearnerGroup: load ``weights`` and clear the optimizer state
    (Adam moments and step counts) on every learner."""
    set_router_weights(learner_group, weights)
    learner_group.foreach_learner(_clear_optimizer_state)


def set_router_weights(learner_group, weights: dict) -> None:
    """Load a router net state dict (keys with or without ``net.``) into the learners' module."""
    import torch

    sd = {(k if k.startswith("net.") else "net." + k): torch.as_tensor(np.asarray(v)) for k, v in weights.items()}
    learner_group.set_weights({DEFAULT_MODULE_ID: sd})
