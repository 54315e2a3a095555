"""Dates as a request names them ("December 10th, 2024", "Dec. 10", "10 of December") and as calls pass them
(ISO ``YYYY-MM-DD``), and a Thought that works a call's dates out from the ones the request names.

ComplexFuncBench's calls never pass a date as the request writes it: 302 of its 503 test dates are rewritten from
words and 201 reckoned from one ("Today is November 15th, 2024 ... the day after tomorrow"). Its trajectories carry
no Thoughts, so a model trained on them writes the date in one jump; :func:`thought` spells the jump out (the named
date, its ISO form, the days after it) for training to show.
"""
from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

from slmlib.judge import query_of
from slmlib.schema import parsed_calls

ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
MAX_DAYS = 14  # further from every named date, a date comes from a chain of stays or is the data's own slip
_MONTH = rf"\b(?P<{{}}>{'|'.join(m[:3] for m in MONTHS)})[a-z]*\.?"
_DAY = r"\b0?(?P<{}>\d{{1,2}})(?:st|nd|rd|th)?\b"
_YEAR = r"(?:,?\s+(?P<{}>\d{{4}})\b)?"
NAMED = re.compile(rf"{_MONTH.format('m1')},?\s+{_DAY.format('d1')}{_YEAR.format('y1')}"
                   rf"|{_DAY.format('d2')}\s+(?:of\s+)?{_MONTH.format('m2')}{_YEAR.format('y2')}", re.IGNORECASE)


def named(text: str) -> list[tuple[str, int, int, int | None]]:
    """The dates ``text`` names by month and day, in order: (as written, month, day, year or None)."""
    out = []
    for m in NAMED.finditer(text):
        month, day, year = (m.group("m1"), m.group("d1"), m.group("y1")) if m.group("m1") else \
            (m.group("m2"), m.group("d2"), m.group("y2"))
        number = next(i for i, name in enumerate(MONTHS, 1) if name.startswith(month.lower()))
        if 1 <= int(day) <= 31:
            out.append((" ".join(m.group(0).split()), number, int(day), int(year) if year else None))
    return out


def iso(value: Any) -> dt.date | None:
    m = ISO_DATE.match(value) if isinstance(value, str) else None
    try:
        return dt.date(*map(int, m.groups())) if m else None
    except ValueError:  # "2024-02-30" is not a date
        return None


def in_words(value: Any, text: str) -> bool:
    """Whether ``text`` names the ISO date ``value`` by its month and day, so that writing it takes only rewriting;
    "the day after tomorrow" or "Christmas Eve" does not. The year is not looked at: a request that names one names
    it once, often far from the day."""
    m = ISO_DATE.match(value) if isinstance(value, str) else None
    return m is not None and (int(m.group(2)), int(m.group(3))) in {(mo, d) for _, mo, d, _ in named(text)}


def _anchors(text: str, year: int) -> list[tuple[str, dt.date]]:
    """The request's named dates as dates; one named without its year may fall in ``year`` or the one before
    ("December 30th ... five nights later" passes 2025-01-04)."""
    out = []
    for words, month, day, y in named(text):
        for candidate in ([y] if y else [year, year - 1]):
            try:
                out.append((words, dt.date(candidate, month, day)))
            except ValueError:  # "February 30th"
                continue
    return out


def leaves(arguments: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every value of the arguments, nested ones by their path (``legs[1].date``)."""
    out = []
    for key, value in (arguments.items() if isinstance(arguments, dict) else enumerate(arguments)):
        path = f"{prefix}[{key}]" if isinstance(arguments, list) else f"{prefix}.{key}" if prefix else str(key)
        out += leaves(value, path) if isinstance(value, (dict, list)) else [(path, value)]
    return out


def thought(request: str, arguments: dict, seen: str = "") -> str:
    """One line working out each ISO date ``arguments`` pass from the named date of ``request`` nearest before it
    (or on it, at most ``MAX_DAYS`` before): "November 15th, 2024 is 2024-11-15; pick_up_date +2 days: 2024-11-17."
    Each named date is written in ISO once, a date on it needs nothing more. A date that the observations so far
    (``seen``) hold is read from them, not reckoned, and gets no clause ("the cheapest day around November 25").
    Empty when no date is left to work out."""
    clauses, stated = [], set()
    for key, value in leaves(arguments):
        day = iso(value)
        if day is None or value in seen:
            continue
        before = [(words, d) for words, d in _anchors(request, day.year) if 0 <= (day - d).days <= MAX_DAYS]
        if not before:
            continue
        words, anchor = min(before, key=lambda a: (day - a[1]).days)
        if anchor not in stated:
            clauses.append(f"{words} is {anchor.isoformat()}")
            stated.add(anchor)
        days = (day - anchor).days
        if days:
            clauses.append(f"{key} +{days} day{'s' * (days != 1)}: {value}")
    return "; ".join(clauses) + "." if clauses else ""


def with_thoughts(task: dict) -> tuple[dict, int]:
    """``task`` with a :func:`thought` on each call step that has none and passes a date it works out, and how
    many steps got one; a step that already thinks keeps its own words."""
    task, n = copy.deepcopy(task), 0
    request = query_of(task)
    for m, call, args, seen in parsed_calls(task):
        if call is m["tool_calls"][0] and not m.get("thought") and (text := thought(request, args, seen)):
            m["thought"], n = text, n + 1
    return task, n
