"""Judge floors (slmlib.floors): scripted policies that solve nothing, rolled out and judged like a model
on the real task files, pass at most 5% of them."""
import json

import pytest

from slmlib import data, envs, floors, toolbench_format as tbf
from slmlib.errors import ErrorLabel


@pytest.mark.parametrize("source,split,n", [("stabletoolbench", "train", 765), ("complexfuncbench", "test", 200)])
def test_every_policy_that_solves_nothing_stays_under_its_floor(data_root, source, split, n):
    tasks = list(data.load(source, data_root, split))
    result = floors.floors(tasks, envs.make("auto"))
    print(source, {k: (v["passed"], v["labels"]) for k, v in result.items()})
    assert set(result) == {"finish_at_once", "call_every_tool", "echo_query", "repeat_first_call"}
    for name, f in result.items():
        assert f["n_tasks"] == n
        assert f["pass_rate"] <= floors.FLOOR, (name, f)


def test_policies_write_well_formed_steps_that_call_with_schema_valid_placeholders(data_root):
    task = next(iter(data.load("stabletoolbench", data_root)))
    record = floors.play(floors.call_every_tool, task, envs.make("auto"))
    calls = [s["step"] for s in record["steps"] if s["step"]["action"] != "Finish"]
    assert [c["action"] for c in calls] == [t["name"] for t in task["tools"][:10]]
    assert all(not json.loads(s["observation"])["error"] for s in record["steps"] if "observation" in s)
    assert all(isinstance(tbf.parse_step(s["raw"]), tbf.Step) for s in record["steps"])
    assert record["verdict"]["label"] in (ErrorLabel.UNGROUNDED_ANSWER, ErrorLabel.NO_FINISH)
    echo = floors.play(floors.echo_query, task, envs.make("auto"))
    assert echo["finish"]["final_answer"] == task["messages"][-1]["content"]
    assert floors.play(floors.repeat_first_call, task, envs.make("auto"))["verdict"]["label"] == ErrorLabel.REPEATED_CALL
