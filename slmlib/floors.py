"""What a policy that solves nothing scores: scripted policies rolled out and judged like the models.

A judge is only as good as the worst policy it passes. Each policy here writes its ToolBench steps
from the task alone (no model; one reads the observations, only to copy them out), acts in the same
environment through the same rollout step, and is judged by the same judge; its pass rate is the floor under a task set's
pass rates. ``FLOOR`` is the most any of them may score.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Callable

from slmlib import judge, rollout
from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH

FLOOR = 0.05
GENERIC_ANSWER = "I have completed the task and found the information you asked for."
PLACEHOLDERS = {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}


def placeholder_arguments(tool: dict, text: str = PLACEHOLDERS["string"]) -> dict:
    """Schema-valid arguments that say nothing: each required parameter's first enum value or a placeholder, ``text``
    for free text."""
    params = tool.get("parameters", {})

    def value(spec: dict):
        if spec.get("enum"):
            return spec["enum"][0]
        return PLACEHOLDERS[spec["type"]] if spec.get("type") in PLACEHOLDERS and spec["type"] != "string" else text
    return {p: value(params.get("properties", {}).get(p, {})) for p in params.get("required", [])}


def _call(tool: dict, text: str = PLACEHOLDERS["string"]) -> str:
    args = json.dumps(placeholder_arguments(tool, text), ensure_ascii=False)
    return tbf.render_step(tbf.Step(f"I will call {tool['name']}.", tool["name"], args))


def _finish(answer: str) -> str:
    args = json.dumps({"return_type": "give_answer", "final_answer": answer}, ensure_ascii=False)
    return tbf.render_step(tbf.Step("I can answer now.", FINISH, args))


def finish_at_once(ep: rollout.Episode) -> str:
    return _finish(GENERIC_ANSWER)


def _each_tool_then(ep: rollout.Episode, answer: str, text: str = PLACEHOLDERS["string"]) -> str:
    """Each declared tool once, in order, up to the step budget (``text`` as its free text), then ``answer``."""
    tools = ep.task["tools"][:ep.max_steps]
    return _call(tools[len(ep.steps)], text) if len(ep.steps) < len(tools) else _finish(answer)


def _pasted(ep: rollout.Episode) -> str:
    return " ".join(s.get("observation", "") for s in ep.steps)


def call_every_tool(ep: rollout.Episode) -> str:
    return _each_tool_then(ep, GENERIC_ANSWER)


def echo_query(ep: rollout.Episode) -> str:
    return _finish(judge.query_of(ep.task))


def echo_observations(ep: rollout.Episode) -> str:
    """Every tool with placeholders, then an answer that is their observations: it reads them only to copy them."""
    return _each_tool_then(ep, _pasted(ep))


def query_as_arguments(ep: rollout.Episode) -> str:
    """Every tool with the whole query as each free-text argument, then their observations pasted: arguments taken
    from the query in form only."""
    return _each_tool_then(ep, _pasted(ep), judge.query_of(ep.task))


def repeat_first_call(ep: rollout.Episode) -> str:
    return _call(ep.task["tools"][0])


POLICIES: dict[str, Callable[[rollout.Episode], str]] = {
    "finish_at_once": finish_at_once, "call_every_tool": call_every_tool,
    "echo_query": echo_query, "echo_observations": echo_observations, "query_as_arguments": query_as_arguments,
    "repeat_first_call": repeat_first_call}


def play(policy: Callable[[rollout.Episode], str], task: dict, env, max_steps: int = 10) -> dict:
    """One judged episode of a scripted policy, recorded as a model's would be."""
    (ep,) = rollout.play(rollout.scripted(policy), [task], env, rollout.Decoding(max_steps=max_steps))
    record = rollout.episode_record(ep)
    record["verdict"] = judge.judge(task, record)
    return record


def floors(tasks: list[dict], env, max_steps: int = 10) -> dict[str, dict]:
    """Each policy's pass rate (with its 95% interval) and failure labels on ``tasks``."""
    out = {}
    for name, policy in POLICIES.items():
        verdicts = [play(policy, t, env, max_steps)["verdict"] for t in tasks]
        passed = sum(v["passed"] for v in verdicts)
        out[name] = {"n_tasks": len(tasks), "passed": passed, "pass_rate": passed / len(tasks) if tasks else 0.0,
                     "pass_rate_ci95": list(judge.wilson(passed, len(tasks))),
                     "labels": dict(Counter(v["label"] for v in verdicts if v["label"]))}
    return out
