"""Memoised parsing for TextWorld's PDDL text generator (same engine, same output, less time).

Each step TextWorld derives the text of every admissible command and of the feedback from the
grammar, and it re-parses the same template strings (``go to [{r.name | ...}]``) and the same
conjunctive queries (``atlocation(a:agent, l:location) & ...``) with tatsu every time: that
parsing was ~60% of a step. Every ``reset`` (and ``load``) also re-translates the same PDDL
problem to SAS twice with Fast Downward's Python translator. ``install()`` memoises both parses
and the translation by their input strings (the translation for the 64 latest problems). The
text generator also deep-copies its derivation context (entity infos, variable mappings) for
every symbol it expands (~85% of what was left of a step); nothing in the derivation mutates
those values, only the two dicts (``dict.update`` in ``query``), so ``install()`` makes
``copy_context`` copy the dicts and share the values. Loading a game parses the whole grammar
(``alfred.twl2`` with the task sentence in it, ~0.3 s); games differ only in that sentence, so
the grammar is parsed once with a placeholder sentence and the placeholder is replaced in a deep
copy (grammars whose sentence holds grammar syntax fall back to a full parse). The cached
parse is deep-copied before use where TextWorld mutates it (symbols get a context), and queries
(``Rule`` objects) are only read. Outputs are unchanged (tests compare observations and
admissible commands with and without it); :func:`uninstall` restores the originals.
"""
from __future__ import annotations

import functools
import re
import sys
from copy import deepcopy

_ORIGINALS: dict = {}
_TASK_RE = re.compile(r'"rhs": "Your task is to: ([^"]*)\."')
_PLACEHOLDER = "dmrTaskSentencePlaceholder"
_GRAMMAR_SYNTAX = '#{}[]|\\"'



def install() -> None:
    """Patch textworld's PDDL textgen parser and conjunctive-query parser with memoised versions."""
    if _ORIGINALS:
        return
    from textworld.envs.pddl import textgen
    from textworld.logic import Rule

    parse_and_convert = textgen._parse_and_convert
    parse_query = Rule.parse_conjunctive_query.__func__

    @functools.lru_cache(maxsize=4096)
    def _cached_symbols(text: str, rule_name: str):
        return parse_and_convert(text, rule_name=rule_name)

    def fast_parse_and_convert(text, rule_name="symbols", **kwargs):
        if kwargs.get("trace"):
            return parse_and_convert(text, rule_name=rule_name, **kwargs)
        return deepcopy(_cached_symbols(text, rule_name))

    @functools.lru_cache(maxsize=4096)
    def _cached_query(cls, expr: str):
        return parse_query(cls, expr)

    import fast_downward

    pddl2sas = fast_downward.pddl2sas

    @functools.lru_cache(maxsize=64)
    def _cached_pddl2sas(domain: str, problem: str, verbose: bool, optimize: bool):
        argv = list(sys.argv)  # the translator overwrites sys.argv; give the caller its own back
        try:
            return pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        finally:
            sys.argv[:] = argv

    def fast_pddl2sas(domain, problem, verbose=False, optimize=False):
        return _cached_pddl2sas(domain, problem, bool(verbose), bool(optimize))

    _ORIGINALS["pddl2sas"] = (fast_downward, pddl2sas)
    fast_downward.pddl2sas = fast_pddl2sas
    copy_context = textgen.copy_context

    def shallow_copy_context(context):
        return {"state": context["state"], "facts": context["facts"],
                "variables": dict(context["variables"]), "mapping": dict(context["mapping"]),
                "entity_infos": context["entity_infos"]}

    from textworld.envs.pddl import logic as pddl_logic

    logic_parse = pddl_logic._parse_and_convert

    @functools.lru_cache(maxsize=8)
    def _cached_logic(text: str):
        return logic_parse(text, rule_name="pddlStart")

    def fast_logic_parse(text, rule_name="pddlStart", **kwargs):
        m = _TASK_RE.search(text) if rule_name == "pddlStart" and not kwargs else None
        if m is None or set(m.group(1)) & set(_GRAMMAR_SYNTAX) or _PLACEHOLDER in text:
            return logic_parse(text, rule_name=rule_name, **kwargs)
        key = text[:m.start(1)] + _PLACEHOLDER + text[m.end(1):]
        actions, grammar = deepcopy(_cached_logic(key))
        for rules in grammar._rules.values():
            for rule in rules:
                for symbol in rule.rhs:
                    if isinstance(symbol.symbol, str) and _PLACEHOLDER in symbol.symbol:
                        symbol.symbol = symbol.symbol.replace(_PLACEHOLDER, m.group(1))
        return actions, grammar

    _ORIGINALS["logic"] = (pddl_logic, logic_parse)
    pddl_logic._parse_and_convert = fast_logic_parse
    _ORIGINALS["copy_context"] = (textgen, copy_context)
    textgen.copy_context = shallow_copy_context
    _ORIGINALS["textgen"] = (textgen, parse_and_convert)
    _ORIGINALS["rule"] = (Rule, Rule.__dict__["parse_conjunctive_query"])
    textgen._parse_and_convert = fast_parse_and_convert
    Rule.parse_conjunctive_query = classmethod(_cached_query)


def uninstall() -> None:
    """Restore TextWorld's own parsers."""
    if not _ORIGINALS:
        return
    module, fn = _ORIGINALS.pop("pddl2sas")
    module.pddl2sas = fn
    module, fn = _ORIGINALS.pop("logic")
    module._parse_and_convert = fn
    module, fn = _ORIGINALS.pop("copy_context")
    module.copy_context = fn
    module, fn = _ORIGINALS.pop("textgen")
    module._parse_and_convert = fn
    cls, descriptor = _ORIGINALS.pop("rule")
    cls.parse_conjunctive_query = descriptor


def installed() -> bool:
    return bool(_ORIGINALS)
