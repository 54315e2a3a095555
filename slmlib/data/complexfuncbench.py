"""ComplexFuncBench (1,000 multi-step Booking.com tasks with real responses), from ``nestful-wrapper``.

Each task becomes a trajectory (training) or a task with ``gold_calls`` and ``replay`` (testing):

* ``$varN.path$`` references in later calls are resolved to the literal values of call N's
  response (a list is searched for the first element where the path exists);
* every response is compacted to an observation of at most ``OBSERVATION_CHARS`` characters in
  ToolBench's ``{"error": "", "response": ...}`` shape, always keeping the values that later
  calls use;
* a closing ``Finish`` is added. The benchmark records no final answer, so its text is one short
  template sentence naming the last call (marked in ``meta.synthetic_answer``). A first version
  listed every call made; a model trained on it learned to finish at once, listing calls it never
  made, and to loop on the list.

The split is fixed: tasks are numbered by their position in the data file (``cfb-0000`` ..),
divided into single- and cross-domain, and a seeded shuffle of each puts 20% in the test split,
so the 200 test tasks keep the benchmark's mix.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any, Iterator

from slmlib import assets
from slmlib.schema import assistant_call, finish_call, validate_task

OBSERVATION_CHARS = 1024
SPLIT_SEED = 20251217
TEST_FRACTION = 0.2
REF = re.compile(r"^\$(var\d+)((?:\.[^.$]+)*)\$$")

DOMAINS = {  # every ComplexFuncBench tool by the Booking.com API family it belongs to
    "car": ["Search_Car_Location", "Search_Car_Rentals", "Vehicle_Details", "Vehicle_Supplier_Ratings",
            "Vehicle_Supplier_Details", "Vehicle_Supplier_Review", "Booking_Summary"],
    "hotel": ["Get_Hotel_Policies", "Get_Availability", "Search_Hotels", "Get_Room_Availability",
              "Get_Room_List_With_Availability", "Get_Availability_Calendar", "Property_Children_Policies",
              "Get_Hotel_Reviews(Tips)_Sort_Option", "Get_Description_And_Info", "Get_Hotel_Review_Scores",
              "Get_Nearby_Cities", "Payment_features_of_the_Hotel", "Get_Question_And_Answer",
              "Get_Filter", "Search_Hotels_By_Coordinates", "Get_Hotel_Details", "Get_Hotel_Reviews(Tips)",
              "Search_Hotel_Destination", "Get_Packages"],
    "flight": ["Search_Flights_Multi_Stops", "Search_Flights", "Get_Seat_Map", "Get_Min_Price_Multi_Stops",
               "Get_Min_Price", "Get_Flight_Details", "Search_Flight_Location"],
    "attraction": ["Get_Attraction_Details", "Get_Popular_Attraction_Near_By", "Search_Attractions",
                   "Search_Attraction_Location"],
    "taxi": ["Search_Taxi", "Taxi_Search_Location", "Location_to_Lat_Long"],
}
DOMAIN_OF = {tool: domain for domain, tools in DOMAINS.items() for tool in tools}


def spec_to_tool(spec: dict) -> dict:
    props, required = {}, []
    for name, p in spec.get("query_parameters", {}).items():
        prop: dict[str, Any] = {"type": p.get("type") or "string", "description": p.get("description", "")}
        if p.get("enum"):
            prop["enum"] = p["enum"]
        if p.get("default") is not None:
            prop["default"] = p["default"]
        props[name] = prop
        if p.get("required"):
            required.append(name)
    return {"name": spec["name"], "description": spec.get("description", ""),
            "parameters": {"type": "object", "properties": props, "required": required}}


def _lookup(value: Any, path: list[str]) -> tuple[bool, Any]:
    if not path:
        return True, value
    if isinstance(value, list):
        for item in value:
            found, v = _lookup(item, path)
            if found:
                return True, v
        return False, None
    if isinstance(value, dict) and path[0] in value:
        return _lookup(value[path[0]], path[1:])
    return False, None


def resolve(arguments: dict, responses: dict[str, Any]) -> tuple[dict, dict[str, list[list[str]]]]:
    """Arguments with every ``$varN.path$`` replaced by its value, and the paths used per variable."""
    used: dict[str, list[list[str]]] = {}

    def sub(v: Any) -> Any:
        if isinstance(v, str) and (m := REF.match(v)):
            var, path = m.group(1), [p for p in m.group(2).split(".") if p]
            found, value = _lookup(responses.get(var), path)
            if not found:
                raise KeyError(f"{v} does not resolve in the response of {var}")
            used.setdefault(var, []).append(path)
            return value
        if isinstance(v, list):
            return [sub(x) for x in v]
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        return v

    return {k: sub(v) for k, v in arguments.items()}, used


def _keep_paths(value: Any, paths: list[list[str]]) -> Any:
    """The smallest piece of ``value`` that still resolves every path the way :func:`_lookup` does."""
    if not paths or any(not p for p in paths):
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            hits = [p for p in paths if _lookup(item, p)[0]]
            if hits:
                rest = [p for p in paths if p not in hits]
                first = _keep_paths(item, hits)
                return [first] + (_keep_paths(value[i + 1:], rest) if rest else [])
        return []
    if isinstance(value, dict):
        out = {}
        for key in dict.fromkeys(p[0] for p in paths):
            if key in value:
                out[key] = _keep_paths(value[key], [p[1:] for p in paths if p[0] == key])
        return out
    return value


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def observation(response: Any, keep: list[list[str]], limit: int = OBSERVATION_CHARS) -> str:
    """``{"error":"","response":...}`` in at most ``limit`` characters where possible.

    Starts from the values later calls need, then adds the response's own leading entries
    (top-level keys, or list items) while the text stays within the limit.
    """
    wrap = lambda r: _dumps({"error": "", "response": r})  # noqa: E731
    full = wrap(response)
    if len(full) <= limit:
        return full
    core = _keep_paths(response, keep) if keep else type(response)()
    if isinstance(response, dict):
        for key, v in response.items():
            if key not in core:
                trial = {**core, key: v}
                if len(wrap(trial)) <= limit:
                    core = trial
        core = {k: core[k] for k in response if k in core}
    elif isinstance(response, list):
        for item in response:
            if item not in core and len(wrap(core + [item])) <= limit:
                core = core + [item]
    return wrap(core)


def task_domains(record: dict) -> list[str]:
    return sorted({DOMAIN_OF.get(call["name"], "other") for call in record["output"]})


def convert(record: dict, index: int, specs: dict[str, dict], judged: bool) -> dict:
    """One benchmark record as a trajectory to train on, or (``judged``) a task with gold calls and replay."""
    responses: dict[str, Any] = {}
    resolved = []
    for call in record["output"]:
        args, used = resolve(call["arguments"], responses)
        resolved.append((call, args, used))
        responses[call["label"]] = call["response"]
    needed: dict[str, list[list[str]]] = {}
    for _, _, used in resolved:
        for var, paths in used.items():
            needed.setdefault(var, []).extend(paths)
    names = list(dict.fromkeys(call["name"] for call in record["output"]))
    domains = task_domains(record)
    task: dict[str, Any] = {
        "id": f"cfb-{index:04d}", "group": "cross_domain" if len(domains) > 1 else "single_domain",
        "source": "complexfuncbench", "tools": [spec_to_tool(specs[n]) for n in names],
        "toolkits": [{"name": "booking_com", "description": "Booking.com RapidAPI: stays, flights, car rentals, taxis and attractions."}],
        "messages": [{"role": "user", "content": record["input"].strip()}],
        "meta": {"domains": domains, "n_calls": len(resolved)}}
    observations = [observation(call["response"], needed.get(call["label"], [])) for call, _, _ in resolved]
    if judged:
        task["gold_calls"] = [{"name": c["name"], "arguments": {k: [v] for k, v in args.items()}}
                              for c, args, _ in resolved]
        task["replay"] = [{"name": c["name"], "arguments": args, "response": json.loads(obs)}
                          for (c, args, _), obs in zip(resolved, observations)]
    else:
        for (call, args, _), obs in zip(resolved, observations):
            task["messages"].append(assistant_call(call["name"], args))
            task["messages"].append({"role": "tool", "name": call["name"], "content": obs})
        answer = f"Here is what {resolved[-1][0]['name']} returned for your request: see the results above."
        task["messages"].append(finish_call(answer))
        task["meta"]["synthetic_answer"] = True
    return validate_task(task)


def split_of(records: list[dict]) -> dict[int, str]:
    """Index -> "train" | "test": a seeded 80/20 split within single- and cross-domain tasks."""
    rng = random.Random(SPLIT_SEED)
    out = {}
    for cross in (False, True):
        idx = [i for i, r in enumerate(records) if (len(task_domains(r)) > 1) == cross]
        rng.shuffle(idx)
        n_test = round(len(idx) * TEST_FRACTION)
        out.update({i: ("test" if k < n_test else "train") for k, i in enumerate(idx)})
    return out


def load_raw() -> tuple[list[dict], dict[str, dict]]:
    data_path, spec_path = assets.complexfuncbench_files()
    records = json.loads(data_path.read_text(encoding="utf-8"))
    specs = {s["name"]: s for s in json.loads(spec_path.read_text(encoding="utf-8"))}
    return records, specs


def tasks(split: str, judged: bool = False) -> Iterator[dict]:
    """The ``train`` trajectories or ``test`` tasks, in file order; ``judged=True`` gives the train split as tasks
    too, to play a model on what it trained on (how far it fits its own training data)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    records, specs = load_raw()
    splits = split_of(records)
    for i, record in enumerate(records):
        if splits[i] == split:
            yield convert(record, i, specs, judged or split == "test")
