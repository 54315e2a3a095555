"""API-Bank level-3 training steps (``lv3-train.json``, Alpaca style) as trajectories.

Each step's input lists ToolSearcher's description (one JSON line), the user's utterance, and the
calls so far as ``API-Request: [Api(k='v', ...)]->response``; the output is the next
``API-Request: [...]`` or the final ``AI: ...`` reply (which becomes ``Finish``). The tools are
ToolSearcher plus every API that a ToolSearcher response has described by then, so the model
sees what the original model saw.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Iterator

from slmlib.data import types
from slmlib.data.files import locate
from slmlib.schema import SchemaError, assistant_call, convert_records, finish_call

FILE = Path("apibank-train/training-data/lv3-train.json")
REQUEST, REPLY = "API-Request: ", "AI: "


CALL = re.compile(r"^(\w+)\((.*)\)$", re.S)


def parse_request(text: str) -> tuple[str, dict[str, Any]]:
    """``[Api(key='v', n=3)]`` -> ``("Api", {"key": "v", "n": 3})``; unquoted values stay strings."""
    m = CALL.match(text.strip().removeprefix("[").removesuffix("]"))
    if not m:
        raise ValueError(f"not an API call: {text[:80]!r}")
    name, body = m.groups()
    try:
        expr = ast.parse(f"f({body})", mode="eval").body
        return name, {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords}
    except (ValueError, SyntaxError, AttributeError):  # a few steps write values without quotes
        pairs = re.split(r",\s*(?=\w+=)", body)
        return name, {k.strip(): _literal(v.strip()) for k, _, v in (p.partition("=") for p in pairs if p)}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _api_tool(doc: dict) -> dict:
    name = doc.get("apiCode") or doc["name"]
    params = doc.get("parameters", doc.get("input_parameters", {}))
    if not isinstance(params, dict):  # a few descriptions list bare parameter names
        params = {str(p): {"type": "str"} for p in params}
    return {"name": name, "description": doc.get("description", ""),
            "parameters": types.parameters(params, required=list(params))}


def step_to_task(step: dict, task_id: str) -> dict:
    tools: dict[str, dict] = {}
    messages: list[dict] = []
    for line in step["input"].splitlines():
        if line.startswith("{"):
            tool = _api_tool(json.loads(line))
            tools[tool["name"]] = tool
        elif line.startswith("User: "):
            messages.append({"role": "user", "content": line[len("User: "):].replace("TIME: ", " Current time: ")})
        elif line.startswith(REQUEST):
            call_text, _, response = line[len(REQUEST):].partition("->")
            name, args = parse_request(call_text)
            messages.append(assistant_call(name, args))
            messages.append({"role": "tool", "name": name, "content": response})
            described = _literal(response)
            if name == "ToolSearcher" and isinstance(described, dict) and "name" in described:
                tools.setdefault(described["name"], _api_tool(described))
        elif line.startswith(REPLY):
            messages.append(finish_call(line[len(REPLY):]))
    out = step["output"]
    if out.startswith(REQUEST):
        messages.append(assistant_call(*parse_request(out[len(REQUEST):])))
    elif out.startswith(REPLY):
        messages.append(finish_call(out[len(REPLY):]))
    else:
        raise SchemaError("output", f"expected 'API-Request: ' or 'AI: ', got {out[:40]!r}")
    return {"id": task_id, "group": "apibank_lv3", "source": "apibank", "tools": list(tools.values()),
            "messages": messages}


def tasks(path: str | Path, on_error=None) -> Iterator[dict]:
    path = locate(path, FILE)
    steps = json.loads(path.read_text(encoding="utf-8"))
    yield from convert_records(steps, str(path), lambda step, i: step_to_task(step, f"apibank-{i}"), on_error)
