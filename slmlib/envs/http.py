"""Client for StableToolBench's virtual API server: ``POST {url}/virtual``."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from slmlib.data.toolbench import change_name, standardize
from slmlib.envs import Environment, no_such_function, observation, tool_of


class HttpEnv(Environment):
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/") + "/virtual"
        self.timeout = timeout
        self.key = os.environ.get("TOOLBENCH_KEY", "")

    def call(self, task: dict, name: str, arguments: dict) -> str:
        tool = tool_of(task, name)
        if tool is None:
            return no_such_function(name)
        meta = tool.get("meta", {})
        body = {"category": meta.get("category", ""), "tool_name": standardize(meta.get("tool_name", name)),
                "api_name": change_name(standardize(meta.get("api_name", name))),
                "tool_input": json.dumps(arguments, ensure_ascii=False), "strip": "truncate",
                "toolbench_key": self.key}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8") or "{}")
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            return observation(error=f"virtual API server error: {e}")
        if isinstance(payload, dict) and "response" in payload:
            return observation(payload.get("response", ""), str(payload.get("error", "")))
        return observation(payload)
