"""Thoughts written into the training steps that have none: what a lookup is for, the later arguments its observation
gives (:mod:`slmlib.roles`), the dates and times a call works out from the request (:mod:`slmlib.dates`) and the
listed values it picks, after the request's word that picks them (:mod:`slmlib.choices`)."""
from __future__ import annotations

import copy

from slmlib import choices, dates, roles
from slmlib.judge import query_of
from slmlib.schema import parsed_calls


def with_thoughts(task: dict, dated: bool = True, cues: choices.Cues | None = None,
                  roles_named: bool = False) -> tuple[dict, int]:
    """``task`` with a Thought on each call step that has none and has something to work out (what it looks up for
    when ``roles_named``, then its choices, then its dates when ``dated``), and how many steps got one; a step that
    already thinks keeps its own words."""
    task, n = copy.deepcopy(task), 0
    request = query_of(task)
    fed = roles.fed(task) if roles_named else {}
    index = {id(m): i for i, m in enumerate(task["messages"])}
    for m, call, args, seen in parsed_calls(task):
        if call is not m["tool_calls"][0] or m.get("thought"):
            continue
        parts = [roles.thought(fed.get(index[id(m)], [])),
                 choices.thought(request, call["function"]["name"], args, cues) if cues else "",
                 dates.thought(request, args, seen) if dated else ""]
        if text := " ".join(p for p in parts if p):
            m["thought"], n = text, n + 1
    return task, n
