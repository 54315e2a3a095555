"""Which of a parameter's listed values (its schema's ``enum``) a call picks, and the request's word that picks it.

A model trained on ComplexFuncBench's calls writes each choice in one jump from the whole request, and a small one
falls back on the commonest value: the fine-tuned SmolLM2-135M sorted every attraction search by ``trending`` and
every flight search by ``BEST`` (27 of cpu-session-order's endings). The word that decides ("highest-rated",
"cheapest") is mined from the training requests, as the one that goes most often with the value and least with
the others, and :func:`thought` names it beside the value for training to show.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Iterable

from slmlib.judge import query_of
from slmlib.schema import parsed_calls

WORD = re.compile(r"[a-z]{4,}(?:-[a-z]+)*|[a-z]+-[a-z]+")  # shorter words are grammar, not a choice
MIN_LEAD = 0.3   # a cue is in at least this much larger a share of its value's requests than of any other value's
MIN_TIMES = 3    # and in this many of them: a value picked once or twice has no word of its own to learn

Cues = dict[tuple[str, str, str], dict[str, float]]  # (tool, parameter, value) -> word -> lead


def words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def listed(task: dict) -> dict[str, dict[str, list]]:
    """Each tool's parameters that list their values: tool -> parameter -> values."""
    return {t["name"]: {k: p["enum"] for k, p in t.get("parameters", {}).get("properties", {}).items()
                        if isinstance(p, dict) and isinstance(p.get("enum"), list) and len(p["enum"]) > 1}
            for t in task.get("tools", [])}


def picks(task: dict) -> Iterable[tuple[str, str, str]]:
    """Each choice a call makes among listed values: (tool, parameter, value)."""
    lists = listed(task)
    for _, call, args, _ in parsed_calls(task):
        name = call["function"]["name"]
        for key, value in args.items():
            if key in lists.get(name, {}) and isinstance(value, str) and value in lists[name][key]:
                yield name, key, value


def cues(tasks: Iterable[dict]) -> Cues:
    """For each value a training call picks, the request words that go with it: a word's lead is the share of the
    requests picking the value that hold it less the largest share among those picking another value of the same
    parameter; only words leading by ``MIN_LEAD`` and held ``MIN_TIMES`` times are kept."""
    held: dict[tuple[str, str], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    asked: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for task in tasks:
        request = words(query_of(task))
        for name, key, value in set(picks(task)):  # a request counts once per value
            held[name, key][value].update(request)
            asked[name, key][value] += 1
    out: Cues = {}
    for (name, key), by_value in held.items():
        n = asked[name, key]
        for value, counts in by_value.items():
            lead = {w: c / n[value] - max((by_value[o][w] / n[o] for o in by_value if o != value), default=0.0)
                    for w, c in counts.items() if c >= MIN_TIMES}
            out[name, key, value] = {w: round(s, 3) for w, s in lead.items() if s >= MIN_LEAD}
    return out


def thought(request: str, name: str, arguments: dict, table: Cues) -> str:
    """Each listed value the call ``name(arguments)`` picks, after the request's word that leads most for it:
    '"cheapest": sort CHEAPEST.' A value whose best word ties with another of the request's gets none: words of one
    template go together, and which of them decides cannot be told. Empty when no value has a cue."""
    said = words(request)
    clauses = []
    for key, value in arguments.items():
        lead = sorted(((s, w) for w, s in table.get((name, key, str(value)), {}).items() if w in said), reverse=True)
        if lead and (len(lead) == 1 or lead[0][0] > lead[1][0]):
            clauses.append(f'"{lead[0][1]}": {key} {value}')
    return "; ".join(clauses) + "." if clauses else ""
