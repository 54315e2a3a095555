"""For tasks without recordings: checks the arguments against the tool's JSON Schema and answers
with data shaped like its ``template_response`` (ToolBench's error observations otherwise).

Every value it invents is distinctive and deterministic (a digest of the task, the call and the
value's place), so the judge can tell an answer that carries what a tool returned from one that
does not. A tool without a template answers ``{"result": ...}``, as StableToolBench's virtual
server answers every tool, instead of an error that no answer could use.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from slmlib.envs import Environment, no_such_function, observation, tool_of
from slmlib.values import schema_errors


NO_TEMPLATE = {"result": "str"}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def shaped(template: Any, seed: str, key: str = "value") -> Any:
    """A value shaped like ToolBench's ``template_response`` (``"str"``, ``"int"``, ``_list_length``)."""
    if isinstance(template, str) and template[:1] in ("{", "["):  # some templates are JSON text, some of it cut
        try:
            template = json.loads(template)
        except ValueError:
            template = NO_TEMPLATE
    if isinstance(template, dict):
        return {k: shaped(v, f"{seed}.{k}", k) for k, v in template.items() if k != "_list_length"}
    if isinstance(template, list):
        return [shaped(template[0], f"{seed}[0]", key)] if template else []
    if not isinstance(template, str) or template.startswith("list of"):
        return [] if isinstance(template, str) else template
    d = _digest(seed)
    number = 10_000 + int(d[:8], 16) % 90_000  # five digits: not a count a generic answer would write
    return {"str": f"{key}-{d[:6]}", "int": number, "float": number / 100, "bool": True}.get(template, template)


class StubEnv(Environment):
    def call(self, task: dict, name: str, arguments: dict) -> str:
        tool = tool_of(task, name)
        if tool is None:
            return no_such_function(name)
        errors = schema_errors(tool, arguments)
        if errors:
            return observation(error="Function executing from my_tools.python_function_call raise error: " + errors[0][1])
        seed = _digest(task["id"], name, json.dumps(arguments, sort_keys=True))
        return observation(shaped(tool.get("template_response", NO_TEMPLATE), seed))
