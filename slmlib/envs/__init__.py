"""Environments that answer a model's tool calls with ToolBench-style observations.

Every environment returns the observation text ``{"error": ..., "response": ...}`` for a call
that parsed; ``replay`` answers from a task's recorded responses, ``stub`` from the tool's JSON
Schema and ``template_response``, ``auto`` with the first where a task has recordings and the second
elsewhere, ``http`` from StableToolBench's virtual API server, ``cfb`` as ComplexFuncBench's own runner
for its tasks (``auto`` for other tasks).
"""
from __future__ import annotations

import json
from typing import Any

MAX_OBSERVATION = 1024  # ToolBench cuts observations to 1,024 characters and appends "..."


class Environment:
    """Answers a model's tool calls. ``respond`` is what the rollout asks: the observation, and the
    ``(label, detail)`` that ends the episode, if the environment ends it. A stateless environment answers
    ``call`` alone; a benchmark's protocol (``cfb``) overrides ``respond``, which sees the earlier steps."""

    def call(self, task: dict, name: str, arguments: dict) -> str:
        raise NotImplementedError

    def respond(self, task: dict, steps: list[dict], name: str, arguments: dict) -> tuple[str, tuple[str, str] | None]:
        return self.call(task, name, arguments), None


def observation(response: Any = "", error: str = "") -> str:
    text = json.dumps({"error": error, "response": response}, ensure_ascii=False)
    return text if len(text) <= MAX_OBSERVATION else text[:MAX_OBSERVATION] + "..."


def no_such_function(name: str) -> str:
    return observation(error=f"No such function name: {name}")


def tool_of(task: dict, name: str) -> dict | None:
    return next((t for t in task["tools"] if t["name"] == name), None)


class AutoEnv(Environment):
    """Replay for tasks with recordings, the schema stub for the rest."""

    def __init__(self):
        self.replay, self.stub = make("replay"), make("stub")

    def call(self, task: dict, name: str, arguments: dict) -> str:
        return (self.replay if task.get("replay") else self.stub).call(task, name, arguments)


def make(kind: str, url: str | None = None) -> Environment:
    from slmlib.envs.cfb import CfbEnv
    from slmlib.envs.http import HttpEnv
    from slmlib.envs.replay import ReplayEnv
    from slmlib.envs.stub import StubEnv
    if kind == "auto":
        return AutoEnv()
    if kind == "replay":
        return ReplayEnv()
    if kind == "stub":
        return StubEnv()
    if kind == "http":
        if not url:
            raise ValueError("the http environment needs the virtual API server's URL")
        return HttpEnv(url)
    if kind == "cfb":
        return CfbEnv()
    raise ValueError(f"unknown environment {kind!r}: auto, replay, stub, http or cfb")
