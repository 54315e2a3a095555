"""A time to stop by (``--stop-by``, ``make run STOP_BY=``): a run on a machine lent for a few hours ends cleanly
before it is taken away, and ``RESUME=`` goes on from there.

Training stops after the last optimizer step that fits, with a checkpoint of that step; the pipeline starts no
notebook after the time; an evaluation hands out no episode after it (the ones under way are rolled again on
resume). The time travels to the notebooks' kernels and evaluation workers in ``SLMLIB_STOP_BY``.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import time

ENV = "SLMLIB_STOP_BY"
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smh])")
_UNIT = {"s": 1, "m": 60, "h": 3600}


class Stopped(Exception):
    """Work left undone on purpose, at the time to stop by; resuming goes on from where it stopped."""


def now() -> float:
    return time.time()


def parse(text: str, at: float | None = None) -> float:
    """Seconds since the epoch of ``text``: a duration from now (``90m``, ``2.5h``, ``1h30m``), a local time of day
    (``12:30``: its next occurrence) or an ISO 8601 date and time."""
    at = now() if at is None else at
    text = text.strip()
    parts = _RELATIVE.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return at + sum(float(n) * _UNIT[u] for n, u in parts)
    base = _dt.datetime.fromtimestamp(at)
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}", text):
            hour, minute = map(int, text.split(":"))
            when = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return (when if when.timestamp() > at else when + _dt.timedelta(days=1)).timestamp()
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"stop by {text!r}: give a duration from now (90m, 2.5h, 1h30m), a time of day (12:30) "
                         "or an ISO date and time (2026-12-02T12:30)") from None


def from_env() -> float | None:
    value = os.environ.get(ENV)
    return float(value) if value else None


def passed(stop_by: float | None) -> bool:
    return stop_by is not None and now() >= stop_by


def show(stop_by: float) -> str:
    return _dt.datetime.fromtimestamp(stop_by).isoformat(timespec="minutes")
