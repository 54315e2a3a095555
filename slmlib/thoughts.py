"""Thoughts written into the training steps that have none: the dates and times a call works out from the request
(:mod:`slmlib.dates`) and the listed values it picks, after the request's word that picks them (:mod:`slmlib.choices`)."""
from __future__ import annotations

import copy

from slmlib import choices, dates
from slmlib.judge import query_of
from slmlib.schema import parsed_calls


def with_thoughts(task: dict, dated: bool = True, cues: choices.Cues | None = None) -> tuple[dict, int]:
    """``task`` with a Thought on each call step that has none and has something to work out (its choices first,
    then its dates when ``dated``), and how many steps got one; a step that already thinks keeps its own words."""
    task, n = copy.deepcopy(task), 0
    request = query_of(task)
    for m, call, args, seen in parsed_calls(task):
        if call is not m["tool_calls"][0] or m.get("thought"):
            continue
        parts = [choices.thought(request, call["function"]["name"], args, cues) if cues else "",
                 dates.thought(request, args, seen) if dated else ""]
        if text := " ".join(p for p in parts if p):
            m["thought"], n = text, n + 1
    return task, n
