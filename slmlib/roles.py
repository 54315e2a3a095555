"""What a lookup is for: the later call arguments its observation gives, for a training Thought to name.

ComplexFuncBench's tasks look things up before they act: a flight search takes the airport ids two location
searches returned, a taxi search the place ids of two others. A third of cpu-session-order's wrong values (50 of
161, ``analysis.wrong_values``' ``elsewhere``) are a value another of the task's golden calls passes: the pick-up's
place id as the drop-off's, the origin searched for where the destination was asked. A lookup whose training step
first says what it is for ("For fromId.") puts the role before the lookup's own arguments, and next to the
observation that answers it, where the later call copies the value from.
"""
from __future__ import annotations

import json
from typing import Any

from slmlib import dates
from slmlib.judge import query_of
from slmlib.schema import leaves

MIN_CHARS = 3    # a shorter string ("1", "en") names nothing in particular
MIN_INT = 1000   # nor does a smaller whole number (a count of adults, a page); ids and prices are larger


def distinctive(value: Any) -> bool:
    """A value that can only have come from where it was found: not a flag, a count or a short word, nor a date or
    a time, which the request gives as often as an observation does (their Thoughts are :mod:`slmlib.dates`')."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, float):
        return not value.is_integer()
    if isinstance(value, int):
        return abs(value) >= MIN_INT
    return (isinstance(value, str) and len(value) >= MIN_CHARS
            and not dates.ISO_DATE.match(value) and not dates.CLOCK.match(value))


def fed(task: dict) -> dict[int, list[str]]:
    """By the index in ``task["messages"]`` of each call's message: the arguments of later calls whose value its
    observation was the first to hold (and the request does not), in the order they are passed. An observation is
    the tool message after its call."""
    request = query_of(task)
    held: list[tuple[int, set[str]]] = []  # (call message, the distinctive values of its observation)
    out: dict[int, list[str]] = {}
    caller = None
    for i, m in enumerate(task["messages"]):
        if m["role"] == "tool" and caller is not None:
            held.append((caller, {json.dumps(v) for _, v in leaves(_json(m["content"])) if distinctive(v)}))
            caller = None
        elif m["role"] == "assistant" and m.get("tool_calls"):
            caller = i
            for path, v in leaves(_json(m["tool_calls"][0]["function"]["arguments"])):
                if not distinctive(v) or str(v) in request:
                    continue
                key = json.dumps(v)
                source = next((j for j, values in held if key in values), None)
                if source is not None and path not in out.get(source, []):
                    out.setdefault(source, []).append(path)
    return out


def thought(paths: list[str]) -> str:
    """``For fromId.``, ``For pick_up_latitude, pick_up_longitude.``"""
    return f"For {', '.join(paths)}." if paths else ""


def _json(text: str) -> dict | list:
    """A call's or an observation's JSON object or list; anything else holds nothing to pass on."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, (dict, list)) else []
