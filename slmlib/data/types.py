"""Python-style parameter docs (``"type": "str, optional"``) as JSON Schema, shared by adapters."""
from __future__ import annotations

import re
from typing import Any

PY_TO_JSON = {"str": "string", "string": "string", "int": "integer", "integer": "integer",
              "float": "number", "number": "number", "bool": "boolean", "boolean": "boolean",
              "list": "array", "array": "array", "tuple": "array", "dict": "object", "object": "object"}


def json_type(py_type: str) -> str:
    """``"List[int], optional"`` -> ``"array"``; unknown types fall back to ``"string"``."""
    head = re.split(r"[\[,( ]", py_type.strip().lower(), maxsplit=1)[0]
    return PY_TO_JSON.get(head, "string")


def parameters(properties: dict[str, Any], required: list[str] | None = None) -> dict:
    """A JSON Schema object; without ``required``, every parameter not marked optional is required."""
    props, req = {}, []
    for name, doc in properties.items():
        doc = doc if isinstance(doc, dict) else {"description": str(doc)}
        raw = str(doc.get("type", "string"))
        prop = {"type": json_type(raw), "description": str(doc.get("description", ""))}
        if doc.get("default") not in (None, ""):
            prop["default"] = doc["default"]
        props[name] = prop
        if required is None and "optional" not in raw.lower():
            req.append(name)
    return {"type": "object", "properties": props, "required": list(required) if required is not None else req}
