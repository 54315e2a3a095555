"""Judge floors (slmlib.floors): scripted policies that solve nothing, rolled out and judged like a model
on the real task files, pass at most 5% of them."""
import json

import pytest

from slmlib import data, envs, floors, judge, toolbench_format as tbf
from slmlib.errors import ErrorLabel


@pytest.mark.parametrize("source,split,n", [("stabletoolbench", "train", 765), ("complexfuncbench", "test", 200)])
def test_every_policy_that_solves_nothing_stays_under_its_floor(data_root, source, split, n):
    tasks = list(data.load(source, data_root, split))
    result = floors.floors(tasks, envs.make("auto"))
    print(source, {k: (v["passed"], v["labels"]) for k, v in result.items()})
    assert set(result) == set(floors.POLICIES)
    for name, f in result.items():
        assert f["n_tasks"] == n
        if (source, name) not in UNDER_NO_OFFLINE_FLOOR:
            assert f["pass_rate"] <= floors.FLOOR, (name, f)


# Pasted observations pass where no relevant tool asks text of the query (the next test); with the query pasted as
# every text argument they pass every query they finish (670 of 765): without gold arguments only a judge that reads
# the answer tells them from a solution (README, "Judge floors").
UNDER_NO_OFFLINE_FLOOR = {("stabletoolbench", "echo_observations"), ("stabletoolbench", "query_as_arguments")}


def asks_the_query(task: dict) -> bool:
    """Some relevant tool has a required text argument that is not one of its enum values, and the query does not
    happen to hold the placeholder ("for example")."""
    texts = any(spec.get("type") == "string" and not spec.get("enum")
                for t in task["tools"] if t["name"] in task["relevant_tools"]
                for p in t["parameters"].get("required", []) for spec in [t["parameters"]["properties"].get(p, {})])
    return texts and not judge.grounded_argument(floors.PLACEHOLDERS["string"], judge.query_of(task))


def test_echoing_observations_passes_only_tasks_whose_relevant_tools_ask_nothing_of_the_query(data_root):
    """Placeholders and a copy of what came back: the stub answers any call, so where no relevant tool needs
    text from the query nothing offline tells this from an answer (ToolEval's judge reads the answer)."""
    tasks = list(data.load("stabletoolbench", data_root, "train"))
    env = envs.make("auto")
    passed = [t for t in tasks if floors.play(floors.echo_observations, t, env)["verdict"]["passed"]]
    asking = [t for t in tasks if asks_the_query(t)]
    print(len(passed), "passed of", len(tasks), ";", len(asking), "ask the query")
    assert passed and not any(asks_the_query(t) for t in passed)
    assert len(asking) >= 0.7 * len(tasks)  # 570 of the 765: where the judge can tell, it does (172 pass, 22%)


def test_policies_write_well_formed_steps_that_call_with_schema_valid_placeholders(data_root):
    task = next(iter(data.load("stabletoolbench", data_root)))
    record = floors.play(floors.call_every_tool, task, envs.make("auto"))
    calls = [s["step"] for s in record["steps"] if s["step"]["action"] != "Finish"]
    assert [c["action"] for c in calls] == [t["name"] for t in task["tools"][:10]]
    assert all(not json.loads(s["observation"])["error"] for s in record["steps"] if "observation" in s)
    assert all(isinstance(tbf.parse_step(s["raw"]), tbf.Step) for s in record["steps"])
    assert record["verdict"]["label"] in (ErrorLabel.UNGROUNDED_ARGUMENT, ErrorLabel.UNGROUNDED_ANSWER, ErrorLabel.NO_FINISH)
    echo = floors.play(floors.echo_query, task, envs.make("auto"))
    assert echo["finish"]["final_answer"] == task["messages"][-1]["content"]
    assert floors.play(floors.repeat_first_call, task, envs.make("auto"))["verdict"]["label"] == ErrorLabel.REPEATED_CALL
    pasted = floors.play(floors.query_as_arguments, task, envs.make("auto"))
    texts = [v for s in pasted["steps"] if s["step"]["action"] != "Finish" for v in json.loads(s["step"]["action_input"]).values()
             if isinstance(v, str)]
    assert texts and set(texts) <= {judge.query_of(task)} | {e for t in task["tools"] for spec in t["parameters"]["properties"].values()
                                                              for e in spec.get("enum", [])}
