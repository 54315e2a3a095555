"""ToolRL's single-step SFT examples (``rlla_sft.json``: ToolACE, Hammer, xLAM) as trajectories.

The instruction lists the tools (``N. Name: ...\\nDescription: ...\\nParameters: {json}``), the
input holds the dialogue so far (``<user>``, ``<tool_call>``, ``<obs>``, ``<response>`` tags), and
the output is ``<think>`` plus ``<tool_call>`` lines and/or a ``<response>``. The target step is the
first call of the output (the ReAct format shows one action per step and the later parallel
calls have no observations to show before them), or ``Finish`` with the response.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from slmlib.data import types
from slmlib.data.files import locate
from slmlib.schema import SchemaError, assistant_call, convert_records, finish_call

FILE = Path("toolrl/dataset/rlla_4k_raw/rlla_sft.json")
TOOL = re.compile(r"^\d+\. Name: (.+)\nDescription: (.*)\nParameters: (.*)$", re.M)
TAG = re.compile(r"<(user|tool_call|obs|response)>(.*?)</\1>", re.S)


def _calls(block: str) -> list[dict]:
    return [json.loads(line) for line in block.strip().splitlines() if line.strip()]


def _tool(name: str, description: str, params: str) -> dict:
    return {"name": name.strip(), "description": description.strip(),
            "parameters": types.parameters(json.loads(params))}


def example_to_task(ex: dict, task_id: str) -> dict:
    tools: dict[str, dict] = {}
    for m in TOOL.findall(ex["instruction"].split("**Steps for Each Turn**")[0]):
        tool = _tool(*m)
        tools.setdefault(tool["name"], tool)  # a few examples list a tool twice: the first one counts
    messages: list[dict] = []
    for tag, body in TAG.findall(ex["input"]):
        body = body.strip()
        if tag == "user":
            messages.append({"role": "user", "content": body})
        elif tag == "tool_call":
            for call in _calls(body):
                messages.append(assistant_call(call["name"], call.get("parameters", call.get("arguments", {}))))
        elif tag == "obs":
            names = [m["tool_calls"][0]["function"]["name"] for m in messages if m["role"] == "assistant"]
            messages.append({"role": "tool", "name": names[-1] if names else "", "content": body})
        else:
            messages.append(finish_call(body))
    out = ex["output"]
    think = re.search(r"<think>(.*?)</think>", out, re.S)
    thought = think.group(1).strip() if think else ""
    tail = out[think.end():] if think else out  # the reasoning may mention the tags itself
    call_block = re.search(r"<tool_call>(.*?)</tool_call>", tail, re.S)
    response = re.search(r"<response>(.*?)</response>", tail, re.S)
    if call_block and _calls(call_block.group(1)):
        call = _calls(call_block.group(1))[0]
        messages.append(assistant_call(call["name"], call.get("parameters", call.get("arguments", {})), thought))
    elif response:
        messages.append(finish_call(response.group(1).strip(), thought))
    else:
        raise SchemaError("output", "neither <tool_call> nor <response>")
    return {"id": task_id, "group": "toolrl", "source": "toolrl", "tools": list(tools.values()), "messages": messages}


def tasks(path: str | Path, on_error=None) -> Iterator[dict]:
    path = locate(path, FILE)
    examples = json.loads(path.read_text(encoding="utf-8"))
    yield from convert_records(examples, str(path), lambda ex, i: example_to_task(ex, f"toolrl-{i}"), on_error)
