"""Comparing argument values and checking them against a tool's JSON Schema (BFCL's semantics)."""
from __future__ import annotations

import re
from typing import Any

from slmlib.errors import ErrorLabel

JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
_STRIP = re.compile(r"[\s,./\-_*^]")


def normalize_str(s: str) -> str:
    """BFCL's string standardisation: case, spaces and a few punctuation marks do not count."""
    return _STRIP.sub("", s).lower()


def same_value(expected: Any, given: Any) -> bool:
    if isinstance(expected, bool) or isinstance(given, bool):
        return expected is given
    if isinstance(expected, (int, float)) and isinstance(given, (int, float)):
        return float(expected) == float(given)
    if isinstance(expected, str) and isinstance(given, str):
        return normalize_str(expected) == normalize_str(given)
    if isinstance(expected, list) and isinstance(given, list):
        return len(expected) == len(given) and all(same_value(a, b) for a, b in zip(expected, given))
    if isinstance(expected, dict) and isinstance(given, dict):
        return set(expected) == set(given) and all(same_value(expected[k], given[k]) for k in expected)
    return False


def same_type(expected: Any, given: Any) -> bool:
    if isinstance(expected, bool) or isinstance(given, bool):
        return isinstance(expected, bool) and isinstance(given, bool)
    if isinstance(expected, (int, float)):
        return isinstance(given, (int, float))
    return type(expected) is type(given)


def type_ok(value: Any, json_type: str | None) -> bool:
    if json_type not in JSON_TYPES:
        return True
    if json_type in ("integer", "number") and isinstance(value, bool):
        return False
    if json_type == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, JSON_TYPES[json_type])


def schema_errors(tool: dict, arguments: dict) -> list[tuple[ErrorLabel, str]]:
    """Problems of ``arguments`` against the tool's parameters, most serious first."""
    params = tool.get("parameters", {})
    props = params.get("properties", {})
    errors = [(ErrorLabel.MISSING_REQUIRED, f"missing required parameter '{p}' of {tool['name']}")
              for p in params.get("required", []) if p not in arguments]
    for key, value in arguments.items():
        if key not in props:
            errors.append((ErrorLabel.UNEXPECTED_PARAM, f"{tool['name']} has no parameter '{key}'"))
        elif not type_ok(value, props[key].get("type")):
            errors.append((ErrorLabel.TYPE_ERROR, f"'{key}' should be {props[key].get('type')}, got {type(value).__name__}"))
        elif props[key].get("enum") and value not in props[key]["enum"]:
            errors.append((ErrorLabel.VALUE_ERROR, f"'{key}' must be one of {props[key]['enum']}, got {value!r}"))
    return errors
