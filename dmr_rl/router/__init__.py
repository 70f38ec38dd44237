"""Routers: the learned transformer router and the baselines, by name.

``ROUTERS`` maps a name to a class; ``make_router(name, **kwargs)`` builds one. Importing this
package imports no torch and no ray: the transformer router's module loads on first use.
"""
from __future__ import annotations

from dmr_rl.router.base import RouteDecision, Router
from dmr_rl.router.baselines import (CascadeRouter, FirstKRouter, FlipOracleRouter, HPOnlyRouter,
                                     KLOracleRouter, LPOnlyRouter, RandomRouter)


class _LazyTransformer:
    """Stands in ``ROUTERS['transformer']`` so torch loads only when a transformer is built."""

    name = "transformer"
    needs_lp_first = False
    needs_both = False

    def __call__(self, *args, **kwargs):
        from dmr_rl.router.transformer import TransformerRouter
        return TransformerRouter(*args, **kwargs)

    def load(self, directory, **kw):
        from dmr_rl.router.transformer import TransformerRouter
        return TransformerRouter.load(directory, **kw)


ROUTERS = {
    "transformer": _LazyTransformer(),
    "hp_only": HPOnlyRouter,
    "lp_only": LPOnlyRouter,
    "random": RandomRouter,
    "first_k": FirstKRouter,
    "cascade": CascadeRouter,
    "kl_oracle": KLOracleRouter,
    "flip_oracle": FlipOracleRouter,
}


def make_router(name: str, **kwargs) -> Router:
    """Build the router registered as ``name`` (``transformer`` takes ``config=RouterConfig``,
    ``weights=``, ``threshold=``; ``transformer`` with ``path=`` loads a saved checkpoint)."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}")
    if name == "transformer" and kwargs.get("path"):
        path = kwargs.pop("path")
        return ROUTERS[name].load(path, **kwargs)
    return ROUTERS[name](**kwargs)


def __getattr__(name):  # TransformerRouter on demand, without importing torch at package import
    if name == "TransformerRouter":
        from dmr_rl.router.transformer import TransformerRouter
        return TransformerRouter
    raise AttributeError(name)


__all__ = ["ROUTERS", "make_router", "Router", "RouteDecision", "TransformerRouter",
           "HPOnlyRouter", "LPOnlyRouter", "RandomRouter", "FirstKRouter", "CascadeRouter",
           "KLOracleRouter", "FlipOracleRouter"]
