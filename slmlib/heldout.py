"""A fixed held-out split of a training source, and its trajectories turned into tasks to solve.

Records of one dialogue (API-Bank and ToolRL give each step of a dialogue as its own record) share
their first user message, so the split goes by a digest of it: a held-out dialogue never meets the
training rows, whatever the profile's seed or limits. The split is fixed (the digest alone decides),
so two runs, or two profiles, hold out the same dialogues.

A held-out dialogue becomes one task: its fullest record, cut before its last tool call. What comes
before is the task's context (the user's turns, earlier replies, earlier calls and their observations:
API-Bank's level-3 steps are judged this way, the ToolSearcher call given and the API call asked for),
that call is its one gold call, and its recorded observation, where the source has one, its
``replay``; without a recording the schema stub answers. The episode then has to end with an answer.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from slmlib.schema import FINISH

FRACTION = 0.2   # of the dialogues, by digest
SALT = "slm-toolcalling heldout v1"


def dialogue_key(trajectory: dict) -> str:
    return next(m["content"] for m in trajectory["messages"] if m["role"] == "user").strip()


def is_heldout(trajectory: dict, fraction: float = FRACTION) -> bool:
    digest = hashlib.sha256(f"{SALT}\x1f{dialogue_key(trajectory)}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000 < fraction


def split(trajectories: Iterable[dict], fraction: float = FRACTION) -> tuple[list[dict], list[dict]]:
    """(training trajectories, held-out trajectories), in source order."""
    train, held = [], []
    for t in trajectories:
        (held if is_heldout(t, fraction) else train).append(t)
    return train, held


def _is_call(message: dict) -> bool:
    return message["role"] == "assistant" and any(c["function"]["name"] != FINISH for c in message.get("tool_calls", []))


def as_task(trajectory: dict) -> dict | None:
    """The trajectory's last tool call as a task to solve, or None when it calls no tool or that call is one of
    several made at once."""
    msgs = trajectory["messages"]
    calls = [i for i, m in enumerate(msgs) if _is_call(m)]
    if not calls:
        return None
    i = calls[-1]
    if msgs[i - 1]["role"] == "assistant":
        return None  # one of parallel calls, whose observations all come after the last of them
    fn = msgs[i]["tool_calls"][0]["function"]
    args = json.loads(fn["arguments"])
    task = {k: v for k, v in trajectory.items() if k not in ("messages", "meta")}
    task.update(messages=msgs[:i], gold_calls=[{"name": fn["name"], "arguments": {k: [v] for k, v in args.items()}}],
                meta={**trajectory.get("meta", {}), "heldout_from": trajectory["id"]})
    if i + 1 < len(msgs) and msgs[i + 1]["role"] == "tool" and msgs[i + 1]["name"] == fn["name"]:
        task["replay"] = [{"name": fn["name"], "arguments": args, "response": _response(msgs[i + 1]["content"])}]
    return task


def _response(content: str):
    try:
        return json.loads(content)
    except ValueError:
        return content


def tasks(heldout: Iterable[dict]) -> list[dict]:
    """One task per held-out dialogue that calls a tool (its fullest record), in source order."""
    fullest: dict[str, dict] = {}
    for t in heldout:
        key = dialogue_key(t)
        if key not in fullest or len(t["messages"]) > len(fullest[key]["messages"]):
            fullest[key] = t
    return [task for t in fullest.values() if (task := as_task(t)) is not None]
