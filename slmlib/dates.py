"""Dates and times of day as a request names them ("December 10th, 2024", "Dec. 10", "10 of December"; "4 PM",
"3 in the afternoon", "noon") and as calls pass them (ISO ``YYYY-MM-DD``, ``HH:MM``), and a Thought that works a
call's dates and times out from the ones the request names.

ComplexFuncBench's calls never pass a date as the request writes it: 302 of its 503 test dates are rewritten from
words and 201 reckoned from one ("Today is November 15th, 2024 ... the day after tomorrow"). Its trajectories carry
no Thoughts, so a model trained on them writes the date in one jump; :func:`thought` spells the jump out (the named
date, its ISO form, the days after it) for training to show. Times likewise: the fine-tuned SmolLM2-135M wrote
03:00 for "3 in the afternoon" and 04:00 for "4 PM" (15 of cpu-session-order's endings were a car's times).
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from slmlib.schema import leaves


ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
MAX_DAYS = 14  # further from every named date, a date comes from a chain of stays or is the data's own slip
_MONTH = rf"\b(?P<{{}}>{'|'.join(m[:3] for m in MONTHS)})[a-z]*\.?"
_DAY = r"\b0?(?P<{}>\d{{1,2}})(?:st|nd|rd|th)?\b"
_YEAR = r"(?:,?\s+(?P<{}>\d{{4}})\b)?"
NAMED = re.compile(rf"{_MONTH.format('m1')},?\s+{_DAY.format('d1')}{_YEAR.format('y1')}"
                   rf"|{_DAY.format('d2')}\s+(?:of\s+)?{_MONTH.format('m2')}{_YEAR.format('y2')}", re.IGNORECASE)
TIME = re.compile(r"\b(?:(?P<h>1[0-2]|0?[1-9])(?::(?P<m>[0-5]\d))?\s*(?:(?P<ap>[ap])\.?m\b\.?|(?:o'clock\s+)?in\s+the\s+"
                  r"(?P<part>morning|afternoon|evening))|(?P<word>noon|midday|midnight))", re.IGNORECASE)
HOURS = re.compile(r"\b(\d{1,3})[- ]hours?\b", re.IGNORECASE)


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


def named_times(text: str) -> list[tuple[str, str]]:
    """The times of day ``text`` names on a 12-hour clock or in words, in order: (as written, ``HH:MM``)."""
    out = []
    for m in TIME.finditer(text):
        if m.group("word"):
            hour, minute = (0 if m.group("word").lower() == "midnight" else 12), 0
        else:
            hour, minute = int(m.group("h")) % 12, int(m.group("m") or 0)
            hour += 12 * ((m.group("ap") or "").lower() == "p" or (m.group("part") or "").lower() in ("afternoon", "evening"))
        out.append((" ".join(m.group(0).split()), f"{hour:02d}:{minute:02d}"))
    return out


def _minutes(clock: str) -> int:
    return int(clock[:2]) * 60 + int(clock[3:])


def _clock(key: str, value: str, times: list[tuple[str, str]], spans: list[int], stated: set) -> list[str]:
    """The clauses for one ``HH:MM`` value: the named time it is ("4 PM is 16:00", once), or the named time a span
    of hours the request gives ("29 hours later") moves it to ("drop_off_time 10 am +29 hours: 15:00")."""
    if words := next((w for w, clock in times if clock == value), None):
        if value in stated:
            return []
        stated.add(value)
        return [f"{words} is {value}"]
    for words, clock in times:
        for hours in spans:
            if (_minutes(clock) + 60 * hours) % (24 * 60) == _minutes(value):
                return [f"{key} {words} +{hours} hours: {value}"]
    return []


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


def thought(request: str, arguments: dict, seen: str = "") -> str:
    """One line working out each ISO date ``arguments`` pass from the named date of ``request`` nearest before it
    (or on it, at most ``MAX_DAYS`` before): "November 15th, 2024 is 2024-11-15; pick_up_date +2 days: 2024-11-17."
    Each named date is written in ISO once, a date on it needs nothing more; so is each named time a ``HH:MM``
    value is ("3 in the afternoon is 15:00"). A value that the observations so far (``seen``) hold is read from
    them, not reckoned, and gets no clause ("the cheapest day around November 25"). Empty when nothing is left to
    work out."""
    clauses, stated = [], set()
    times, spans = named_times(request), sorted({int(h) for h in HOURS.findall(request)})
    for key, value in leaves(arguments):
        if isinstance(value, str) and CLOCK.match(value):
            if value not in seen:
                clauses += _clock(key, value, times, spans, stated)
            continue
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
