"""WebShop in text mode: a search page, result pages, item pages and their sub-pages, as a TextEnv.

Pages and what can be clicked (clickables are lower-cased; an action is ``search[<query>]`` where
the page has a search bar, else ``click[<clickable>]``):

* search:  ``WebShop [SEP] Instruction: [SEP] <instruction> [SEP] Search`` -- ``search[...]`` only.
* results: ``Back to Search [SEP] Page 1 (Total results: N) [SEP] Next > [SEP] <ASIN> [SEP] <title>
  [SEP] <price> ...`` -- 10 per page, at most 50 results; ``back to search``, ``next >``, ``< prev``,
  the ASINs.
* item:    ``Back to Search [SEP] < Prev [SEP] <option name> [SEP] <value> ... [SEP] <title> [SEP]
  Price: <price> [SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now``
  -- option values (one per option name is kept, the last clicked), ``description``,
  ``features``, ``reviews``, ``buy now``, ``< prev`` (back to the results), ``back to search``.
* description / features / reviews: ``Back to Search [SEP] < Prev [SEP] <text>``.

``click[buy now]`` ends the episode with WebShop's reward (``reward.get_reward``); ``won`` means a
reward of 1. Any other command (unknown element, search without a search bar, malformed text) returns
``Invalid action! ...`` followed by the current page, counts as a step and leaves the page unchanged;
``info["invalid"]`` says so. ``admissible_commands`` lists one ``click[...]`` per clickable and, on the
search page, one concrete search: ``search[<the instruction without its price clause>]``, so an agent
that scores the listed actions (score mode) has a search to choose; any other query typed there is
accepted as well.

Products, prices, goals and the search index are loaded once per data directory and shared by all
envs built over it (``data.cached_data``, ``backend_for``); each env keeps only its own page state, so
a rollout worker can host many. The reward's spaCy pipeline loads when the first env of a process is
built, and the nouns of each title are tagged once per process (``reward.title_nouns``): the goal's at
``reset``, the purchased product's at its first purchase.

The oracle (``expert_action``) reads the goal's target asin and options: it searches the
instruction (without the price clause), pages to the target, falls back to searching the target's
title when the target is not among the 50 results, clicks the goal's option values and buys. The
behaviour-cloning teacher is ``teacher.FirstMatchTeacher`` (the first listed product that earns 1).
"""
from __future__ import annotations

import re
from typing import Optional

from environments.base import TaskState, TextEnv
from environments.webshop.data import Goal, Product, WebShopData, cached_data, canonical_split
from environments.webshop.reward import fuzzy_score, get_reward, normalize_color, spacy_model, title_nouns
from environments.webshop.search import SearchBackend, make_backend

SEP = " [SEP] "
RESULTS_PER_PAGE = 10
MAX_RESULTS = 50
SUB_PAGES = ("description", "features", "reviews")
ACTION_RE = re.compile(r"^(search|click)\[(.*)\]$", re.DOTALL)
PRICE_CLAUSE_RE = re.compile(r",? and price lower than [\d.]+ dollars$")


def instruction_query(goal: Goal) -> str:
    """The goal's instruction without its price clause: the oracle's first search query."""
    return PRICE_CLAUSE_RE.sub("", goal.instruction_text).strip()


def backend_for(data: WebShopData, name: str) -> SearchBackend:
    """The search backend of ``data``, built once per data directory and backend name."""
    if name not in data.search_cache:
        data.search_cache[name] = make_backend(name, data.products)
    return data.search_cache[name]


class WebShopEnv(TextEnv):
    default_max_steps = 15
    name = "webshop"

    def __init__(self, data: WebShopData, split: str, max_steps: Optional[int] = None,
                 search_backend: str = "bm25", nouns=None):
        super().__init__(max_steps)
        self.data = data
        self.split = canonical_split(split)
        self.goal_positions = data.split_indices(split)
        self.search = backend_for(data, search_backend)
        self.nouns = nouns
        if nouns is None:  # load the reward's spaCy pipeline now (once per process), not inside an episode
            spacy_model()
        self._reset_page_state()

    @classmethod
    def from_data(cls, data_dir: str, split: str, max_steps: Optional[int] = None, search_backend: str = "bm25",
                  catalog: Optional[str] = None, human_goals: bool = True, **kwargs) -> "WebShopEnv":
        return cls(cached_data(data_dir, catalog, human_goals), split, max_steps, search_backend, **kwargs)

    # ---- TextEnv hooks ---------------------------------------------------------------------
    def _num_tasks(self) -> int:
        return len(self.goal_positions)

    def _task_id(self, index: int) -> str:
        pos = self.goal_positions[index]
        return f"goal-{pos}-{self.data.goals[pos].asin}"

    @property
    def goal(self) -> Goal:
        return self.data.goals[self.goal_positions[self._task_index]]

    def _reset_page_state(self) -> None:
        self.page = "search"
        self.query = ""
        self.results: list[int] = []
        self.page_no = 1
        self.item: Optional[Product] = None
        self.selected: dict[str, str] = {}
        self.sub_page = ""
        self._expert_by_title = False

    def _reset_task(self, index: int) -> TaskState:
        self._reset_page_state()
        if self.nouns is None:  # tag the goal's title now (cached), so "Buy Now" tags at most the purchase's
            title_nouns(self.goal.name)
        return self._state_now()

    def _step_task(self, command: str) -> TaskState:
        m = ACTION_RE.match(command)
        if not m:
            return self._invalid(f"'{command}' is not of the form search[...] or click[...]")
        kind, arg = m.group(1), m.group(2).strip()
        if kind == "search":
            if self.page != "search":
                return self._invalid("there is no search bar on this page")
            if not arg:
                return self._invalid("the search query is empty")
            self.query = arg
            self.results = self.search.search(arg, MAX_RESULTS)
            self.page, self.page_no = "results", 1
            return self._state_now()
        arg = arg.lower()
        if arg not in self._clickables():
            return self._invalid(f"'{arg}' cannot be clicked on this page")
        return self._click(arg)

    # ---- transitions -------------------------------------------------------------------------
    def _click(self, element: str) -> TaskState:
        if element == "back to search":
            self._reset_page_state_keep_expert()
        elif self.page == "results":
            if element == "next >":
                self.page_no += 1
            elif element == "< prev":
                self.page_no -= 1
            else:
                self.item = self._result_by_lower(element)
                self.selected, self.page = {}, "item"
        elif self.page == "item":
            if element == "< prev":
                self.page, self.item, self.selected = "results", None, {}
            elif element in SUB_PAGES:
                self.page, self.sub_page = "sub", element
            elif element == "buy now":
                return self._buy()
            else:
                for name, values in self.item.options.items():
                    if element in values:
                        self.selected[name] = element
                        break
        elif self.page == "sub" and element == "< prev":
            self.page = "item"
        return self._state_now()

    def _reset_page_state_keep_expert(self) -> None:
        by_title = self._expert_by_title
        self._reset_page_state()
        self._expert_by_title = by_title

    def _result_by_lower(self, element: str) -> Product:
        for i in self._page_results():
            if self.data.products[i].asin.lower() == element:
                return self.data.products[i]
        raise KeyError(element)

    def _buy(self) -> TaskState:
        price = self.data.prices[self.item.asin]
        score, details = get_reward(self.item, self.goal, price, self.selected, self.nouns)
        state = self._state_now()
        state.obs = f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {score:.4f}"
        state.admissible_commands = []
        state.done, state.reward, state.score = True, score, score
        state.won = score >= 1.0 - 1e-9
        state.extra.update(page="done", purchased=self.item.asin, purchased_options=dict(self.selected), reward_details=details)
        return state

    def _invalid(self, reason: str) -> TaskState:
        state = self._state_now()
        state.obs = f"Invalid action! {reason}.{SEP}{state.obs}"
        state.invalid = True
        return state

    # ---- rendering ---------------------------------------------------------------------------
    def _page_results(self) -> list[int]:
        start = (self.page_no - 1) * RESULTS_PER_PAGE
        return self.results[start:start + RESULTS_PER_PAGE]

    def _clickables(self) -> list[str]:
        if self.page == "search":
            return []
        out = ["back to search"]
        if self.page == "results":
            if self.page_no > 1:
                out.append("< prev")
            if self.page_no * RESULTS_PER_PAGE < len(self.results):
                out.append("next >")
            out += [self.data.products[i].asin.lower() for i in self._page_results()]
        elif self.page == "item":
            out.append("< prev")
            for values in self.item.options.values():
                out += [v for v in values if v not in out]
            out += list(SUB_PAGES) + ["buy now"]
        else:
            out.append("< prev")
        return out

    def _observation(self) -> str:
        if self.page == "search":
            return SEP.join(["WebShop", "Instruction:", self.goal.instruction_text, "Search"])
        parts = ["Back to Search"]
        if self.page == "results":
            parts.append(f"Page {self.page_no} (Total results: {len(self.results)})")
            if self.page_no > 1:
                parts.append("< Prev")
            if self.page_no * RESULTS_PER_PAGE < len(self.results):
                parts.append("Next >")
            for i in self._page_results():
                p = self.data.products[i]
                parts += [p.asin, p.title, p.price_tag]
            return SEP.join(parts)
        parts.append("< Prev")
        p = self.item
        if self.page == "item":
            for name, values in p.options.items():
                parts += [name] + values
            parts += [p.title, f"Price: {p.price_tag}", "Rating: N.A.", "Description", "Features", "Reviews",
                      "Buy Now"]
        elif self.sub_page == "description":
            parts.append(p.description)
        elif self.sub_page == "features":
            parts += p.bullet_points
        else:
            parts += [str(r) for r in p.reviews]
        return SEP.join(parts)

    def _state_now(self) -> TaskState:
        commands = [self.search_action()] if self.page == "search" else [f"click[{c}]" for c in self._clickables()]
        return TaskState(obs=self._observation(), admissible_commands=commands, task_type=self.goal.category,
                         task=self.goal.instruction_text,
                         invalid=False, extra={"page": self.page if self.page != "sub" else self.sub_page})

    def search_action(self) -> str:
        """The search page's listed action: the instruction (without its price clause) as the query."""
        return f"search[{instruction_query(self.goal)}]"

    # ---- the oracle ----------------------------------------------------------------------------
    def expert_query(self) -> str:
        """What the oracle types: the instruction without its price clause (the title as fallback)."""
        if self._expert_by_title:
            return self.data.product(self.goal.asin).title
        return instruction_query(self.goal)

    def expert_options(self, product: Optional[Product] = None) -> dict[str, str]:
        """{option name: value} of ``product`` (default: the target) that best match each goal option
        (fuzzy, colour-normalised)."""
        target = product or self.data.product(self.goal.asin)
        if isinstance(self.goal.goal_options, dict):  # a synthetic goal names each option and its value
            return {n: v for n, v in self.goal.goal_options.items() if v in target.options.get(n, [])}
        chosen: dict[str, str] = {}
        for g in self.goal.goal_options:
            g_norm = normalize_color(str(g).lower())
            best = (0, None, None)
            for name, values in target.options.items():
                for v in values:
                    s = 101 if v == str(g).lower() else fuzzy_score(normalize_color(v), g_norm)
                    if s > best[0]:
                        best = (s, name, v)
            if best[1] is not None and best[1] not in chosen:
                chosen[best[1]] = best[2]
        return chosen

    def expert_action(self) -> str:
        """Reads the goal (its target asin and options): search, page to the target, pick options, buy."""
        target = self.goal.asin
        if self.page == "search":
            return f"search[{self.expert_query()}]"
        if self.page == "sub":
            return "click[< prev]"
        if self.page == "results":
            asins = [self.data.products[i].asin for i in self.results]
            if target not in asins:
                self._expert_by_title = True
                return "click[back to search]"
            want_page = asins.index(target) // RESULTS_PER_PAGE + 1
            if want_page > self.page_no:
                return "click[next >]"
            if want_page < self.page_no:
                return "click[< prev]"
            return f"click[{target.lower()}]"
        if self.item.asin != target:
            return "click[< prev]"
        for name, value in self.expert_options().items():
            if self.selected.get(name) != value:
                return f"click[{value}]"
        return "click[buy now]"
