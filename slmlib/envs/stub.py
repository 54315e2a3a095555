"""For tasks without recordings: checks the arguments against the tool's JSON Schema and answers
with data shaped like its ``template_response`` (ToolBench's error observations otherwise)."""
from __future__ import annotations

from typing import Any

from slmlib.envs import observation, no_such_function, tool_of
from slmlib.values import schema_errors

PLACEHOLDERS = {"str": "example", "int": 1, "float": 1.0, "bool": True}


def shaped(template: Any) -> Any:
    """A value shaped like ToolBench's ``template_response`` (``"str"``, ``"int"``, ``_list_length``)."""
    if isinstance(template, dict):
        return {k: shaped(v) for k, v in template.items() if k != "_list_length"}
    if isinstance(template, list):
        return [shaped(template[0])] if template else []
    if isinstance(template, str):
        return PLACEHOLDERS.get(template, template if not template.startswith("list of") else [])
    return template


class StubEnv:
    def call(self, task: dict, name: str, arguments: dict) -> str:
        tool = tool_of(task, name)
        if tool is None:
            return no_such_function(name)
        errors = schema_errors(tool, arguments)
        if errors:
            return observation(error="Function executing from my_tools.python_function_call raise error: " + errors[0][1])
        template = tool.get("template_response")
        if template is None:
            return observation(error="API not working error...")
        return observation(shaped(template))
