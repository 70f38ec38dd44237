"""The router network as an RLlib ``TorchRLModule`` (new API stack), trained by the learners.

It wraps :class:`~dmr_rl.router.transformer.RouterNet` as ``self.net``; ``model_config`` is the
net config dict (``transformer.net_config``). Forward: a batch with ``tokens``, ``segments``,
``step`` (and ``hidden`` for lp_hidden features) -> ``{"logits": [B] HP logits}``. Its state dict
keys are ``net.<name>``; ``TransformerRouter.set_weights`` accepts them as they are.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

from dmr_rl.router.transformer import RouterNet, net_config

LOGITS = "logits"


class RouterRLModule(TorchRLModule):
    def setup(self):
        self.net = RouterNet(net_config(self.model_config or {}))

    def _forward(self, batch, **kwargs):
        import torch

        hidden = batch.get("hidden")
        tokens = batch["tokens"]
        # Minibatches of a padded batch may end in all-pad columns: drop them (cheaper).
        keep = int(tokens.ne(0).any(0).nonzero().max()) + 1 if bool(tokens.ne(0).any()) else 1
        logits = self.net(tokens[:, :keep].long(), batch["segments"][:, :keep].long(),
                          batch["step"].long(), None if hidden is None else hidden.float())
        return {LOGITS: logits.to(torch.float32)}


def spaces():
    """Placeholder spaces: the router reads text features, RLlib only needs them to exist."""
    return (gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), gym.spaces.Discrete(2))


def module_spec(model_config: dict):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    obs, act = spaces()
    return RLModuleSpec(module_class=RouterRLModule, observation_space=obs, action_space=act,
                        model_config=net_config(model_config))
