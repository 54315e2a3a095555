"""ComplexFuncBench's own protocol (slmlib.envs.cfb) on a hand-made task: every ending, its messages and
metrics, through the real rollout with scripted policies."""
import json

import pytest

from slmlib import envs, floors, judge, rollout
from slmlib.envs import cfb
from slmlib.errors import ErrorLabel

SEARCH = {"name": "Search_Car_Rentals", "description": "Cars.", "parameters": {"type": "object", "properties": {
    "pick_up_latitude": {"type": "number"}, "pick_up_date": {"type": "string"}, "currency_code": {"type": "string"},
    "note": {"type": "string"}}, "required": ["pick_up_latitude", "pick_up_date"]}}
DETAILS = {"name": "Vehicle_Details", "description": "One car.", "parameters": {"type": "object", "properties": {
    "vehicle_id": {"type": "string"}, "search_key": {"type": "string"}}, "required": ["vehicle_id", "search_key"]}}
LOOKUP = {"name": "Search_Car_Location", "description": "Where.", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}}, "required": ["query"]}}
GOLDEN = [
    {"name": "Search_Car_Location", "arguments": {"query": "Sydney"}, "response": {"lat": -33.86}},
    {"name": "Search_Car_Rentals", "arguments": {"pick_up_latitude": -33.86, "pick_up_date": "2024-11-15"},
     "response": {"vehicle_id": "733", "search_key": "k1"}},
    {"name": "Vehicle_Details", "arguments": {"vehicle_id": "733", "search_key": "k1"}, "response": {"seats": 5}},
]
TASK = {"id": "cfb-x", "group": "car", "source": "complexfuncbench", "tools": [SEARCH, DETAILS, LOOKUP],
        "messages": [{"role": "user", "content": "A car in Sydney on 2024-11-15, and its details."}],
        "gold_calls": [{"name": g["name"], "arguments": {k: [v] for k, v in g["arguments"].items()}} for g in GOLDEN],
        "replay": GOLDEN}
ANSWER = ("Finish", {"return_type": "give_answer", "final_answer": "Car 733, 5 seats."})


def episode(*steps):
    """Roll the scripted steps out in the cfb environment; returns (record, their verdict)."""
    texts = [f"Thought: t\nAction: {name}\nAction Input: {json.dumps(args)}" for name, args in steps]
    (ep,) = rollout.play(rollout.scripted(lambda ep: texts[len(ep.steps)]), [TASK], envs.make("cfb"), rollout.Decoding())
    record = rollout.episode_record(ep)
    return record, cfb.verdict(TASK, record)


def test_every_golden_call_then_an_answer_is_a_success_and_the_lookup_is_free():
    record, verdict = episode(*[(g["name"], g["arguments"]) for g in GOLDEN[1:]], ANSWER)
    assert verdict == {"label": "success", "success": True, "correct_calls": 2, "golden_calls": 3}
    assert json.loads(record["steps"][0]["observation"]) == {"error": "", "response": {"vehicle_id": "733", "search_key": "k1"}}
    # our replay verdict asks for every gold call, the look-up included: stricter than theirs here
    assert judge.judge(TASK, record)["label"] == ErrorLabel.MISSING_CALL
    record, _ = episode(*[(g["name"], g["arguments"]) for g in GOLDEN], ANSWER)
    assert judge.judge(TASK, record)["passed"]
    assert cfb.metrics([verdict, {**verdict, "success": False, "correct_calls": 0}]) == \
        {"cfb_success_rate": 0.5, "cfb_call_accuracy": 2 / 6}


def test_a_format_error_gets_their_message_and_may_be_retried():
    record, verdict = episode(("Search_Car_Rentals", {"pick_up_latitude": "-33.86", "pick_up_date": "2024-11-15"}),
                              *[(g["name"], g["arguments"]) for g in GOLDEN[1:]], ANSWER)
    assert json.loads(record["steps"][0]["observation"])["error"] == (
        "Parameter pick_up_latitude of function Search_Car_Rentals should be a number, but <class 'str'> is provided.")
    assert verdict["label"] == "success"
    _, missing = episode(("Search_Car_Rentals", {"pick_up_date": "2024-11-15"}), ANSWER)
    assert missing["label"] == "stop_early"


@pytest.mark.parametrize("call,label,ours", [
    (("Vehicle_Details", {"vehicle_id": "1", "search_key": "k1"}), "value_error", ErrorLabel.VALUE_ERROR),
    (("Search_Car_Rentals", {"pick_up_latitude": -33.86, "pick_up_date": "2024-11-16"}), "value_error", ErrorLabel.VALUE_ERROR),
    (("Search_Car_Rentals", {"pick_up_latitude": -33.86, "pick_up_date": "2024-11-15", "note": "x"}), "param_hallucination",
     ErrorLabel.UNEXPECTED_PARAM),
    (("Search_Car_Rentals", {"pick_up_latitude": -33.86, "pick_up_date": "2024-11-15", "currency_code": "AUD"}),
     "param_hallucination", ErrorLabel.UNEXPECTED_PARAM),
])
def test_a_valid_call_that_matches_nothing_ends_the_episode_with_their_label(call, label, ours):
    record, verdict = episode(call, ANSWER)
    assert verdict["label"] == label and not verdict["success"] and len(record["steps"]) == 1
    assert json.loads(record["steps"][0]["observation"])["response"] == cfb.UNEXPECTED_CALL
    assert judge.judge(TASK, record)["label"] == ours and record["failure"][1].startswith(f"ComplexFuncBench {label}")


def test_other_endings():
    _, early = episode(ANSWER)
    assert early["label"] == "stop_early"
    record, extra = episode(*[(g["name"], g["arguments"]) for g in GOLDEN], ("Vehicle_Details", {"vehicle_id": "9", "search_key": "k"}))
    assert extra["label"] == "func_hallucination" and extra["correct_calls"] == 3
    assert judge.judge(TASK, record)["label"] == ErrorLabel.IRRELEVANCE
    wrong = {"name": "Vehicle_Details", "arguments": {"vehicle_id": "733", "search_key": "k1"}}
    assert cfb.mismatch(wrong, GOLDEN[1]) == ("func_error", "Do not call the correct function.", None)
    (ep,) = rollout.play(rollout.scripted(lambda ep: "Thought: t\nAction: Search_Car_Rentals\nAction Input: {nope"),
                         [TASK], envs.make("cfb"), rollout.Decoding())
    assert cfb.verdict(TASK, rollout.episode_record(ep))["label"] == "decode_error"
    # a task of another source gets the auto environment, and nothing ends its episode but the model
    other = {**TASK, "source": "stabletoolbench", "replay": []}
    (ep,) = rollout.play(rollout.scripted(lambda ep: "Thought: t\nAction: Vehicle_Details\nAction Input: {\"vehicle_id\": \"1\", "
                                          "\"search_key\": \"k\"}" if not ep.steps else
                                          'Thought: t\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "x"}'),
                         [other], envs.make("cfb"), rollout.Decoding())
    assert ep.failure is None and ep.finish["final_answer"] == "x"


def test_evaluate_in_the_cfb_environment_reports_their_metrics_beside_ours(tmp_path):
    from slmlib import schema
    from slmlib.evaluate import evaluate
    schema.write_jsonl(tmp_path / "tasks.jsonl", [TASK])
    m = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "eval", env="cfb", max_new_tokens=24, batch_size=1)
    assert m["env"] == "cfb" and m["cfb_success_rate"] == 0.0 and 0.0 <= m["cfb_call_accuracy"] <= 1.0
    assert m["pass_rate"] == 0.0 and set(m["floors"]) == set(floors.POLICIES)


def test_wrong_values_say_where_the_golden_value_and_the_made_one_stood():
    import pandas as pd
    from slmlib import analysis
    rentals = GOLDEN[1]
    episodes = {
        "date": [("Search_Car_Rentals", {"pick_up_latitude": -33.86, "pick_up_date": "2024-11-16"})],
        "copied": [(rentals["name"], rentals["arguments"]), ("Vehicle_Details", {"vehicle_id": "k1", "search_key": "k1"})],
        "made_up": [(rentals["name"], rentals["arguments"]), ("Vehicle_Details", {"vehicle_id": "73", "search_key": "k1"})],
        # -33.8 is a piece of the observed -33.86, not the value
        "number": [("Search_Car_Location", {"query": "Sydney"}),
                   ("Search_Car_Rentals", {"pick_up_latitude": -33.8, "pick_up_date": "2024-11-15"})],
        "solved": [(g["name"], g["arguments"]) for g in GOLDEN[1:]] + [ANSWER],
        # another golden call's value: the rental's date written as the vehicle
        "elsewhere": [(rentals["name"], rentals["arguments"]), ("Vehicle_Details", {"vehicle_id": "2024-11-15", "search_key": "k1"})],
    }
    rows = [{"model": "m", "id": name, "task": TASK, "record": episode(*steps, ANSWER)[0]} for name, steps in episodes.items()]
    # the same date, the request naming it in words
    worded = {**TASK, "messages": [{"role": "user", "content": "A car in Sydney on November 15th, and its details."}]}
    rows.append({**rows[0], "id": "worded", "task": worded})
    table = analysis.wrong_values(pd.DataFrame(rows)).set_index("id")
    assert list(table.index) == ["date", "copied", "made_up", "number", "elsewhere", "worded"]
    assert table.loc["date", ["call", "function", "parameter", "made", "golden"]].tolist() == \
        [1, "Search_Car_Rentals", "pick_up_date", "2024-11-16", "2024-11-15"]
    assert table["call"].tolist() == [1, 2, 2, 2, 2, 1]  # the lookup is the first call where it is made
    assert table[["golden_from", "made_from"]].values.tolist() == [
        ["request", "neither"], ["observation", "observation"], ["observation", "neither"], ["observation", "neither"],
        ["observation", "request"], ["words", "neither"]]
    assert table["swapped_with"].tolist() == ["", "search_key", "", "", "", ""]  # the search key written as the vehicle id
    assert table["elsewhere"].tolist() == ["", "Vehicle_Details.search_key", "", "", "Search_Car_Rentals.pick_up_date", ""]
    assert analysis.wrong_values(pd.DataFrame(rows[4:5])).empty


def test_a_wrong_query_stands_beside_its_templates_sibling_in_training():
    import pandas as pd
    from slmlib import analysis

    def task(id_, request, query):
        golden = [{**GOLDEN[0], "arguments": {"query": query}}, *GOLDEN[1:]]
        return {**TASK, "id": id_, "messages": [{"role": "user", "content": request}], "replay": golden,
                "gold_calls": [{"name": g["name"], "arguments": {k: [v] for k, v in g["arguments"].items()}} for g in golden]}
    test = task("t", "A car in Sydney on 2024-11-15, and its details.", "Sydney, Australia")
    train = [task("oslo", "Flights from Oslo to Bergen, the cheapest one.", "Oslo"),
             task("melbourne", "A car in Melbourne on 2024-12-01, and its details.", "Melbourne, Australia")]
    steps = [("Search_Car_Location", {"query": "Sydney"}), ANSWER]
    texts = [f"Thought: t\nAction: {name}\nAction Input: {json.dumps(args)}" for name, args in steps]
    (ep,) = rollout.play(rollout.scripted(lambda ep: texts[len(ep.steps)]), [test], envs.make("cfb"), rollout.Decoding())
    preds = pd.DataFrame([{"model": "m", "id": "t", "task": test, "record": rollout.episode_record(ep)}])
    (row,) = analysis.query_siblings(preds, train).to_dict("records")
    assert (row["made"], row["golden"], row["sibling"], row["sibling_query"]) == \
        ("Sydney", "Sydney, Australia", "melbourne", "Melbourne, Australia")
    # the golden query is composed as its sibling's is; the model wrote the request's word
    assert (row["made_said"], row["golden_said"], row["sibling_said"]) == (True, False, False)
    assert analysis.query_siblings(preds.iloc[:0], train).empty
