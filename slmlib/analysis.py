"""Reading evaluation outputs back: ``<run>/eval/<model>/<task set>/{predictions.jsonl, metrics.json}``.

Figures, tables and the failure inspector read these files only, so a results notebook can open
any earlier run without running anything again.
"""
from __future__ import annotations

import json
import re
from difflib import SequenceMatcher
from pathlib import Path

import pandas as pd

from slmlib import dates, judge
from slmlib import toolbench_format as tbf
from slmlib.envs import cfb
from slmlib.schema import FINISH, leaves, read_jsonl
from slmlib.values import same_value

# The paper's Table 2 (ToolEval pass rate, %), for the side-by-side table; not comparable to ours.
PAPER = pd.DataFrame({
    "group": ["G1_instruction", "G1_category", "G1_tool", "G2_category", "G2_instruction", "G3_instruction", "overall"],
    "OPT-350M SFT (paper)": [78.5, 74.0, 79.0, 80.5, 74.5, 80.0, 77.55],
    "ToolLLaMA-DFS": [32.5, 32.5, 28.0, 32.5, 29.5, 22.0, 30.18],
    "ChatGPT-CoT": [33.0, 29.5, 29.5, 24.5, 24.0, 5.0, 26.00],
})


# ComplexFuncBench's leaderboard (success % / call accuracy %, its own protocol, gpt-4o matching the calls exact
# matching misses). Zero-shot models; ours trains on the benchmark's other 800 tasks and matches exactly (stricter).
CFB_LEADERBOARD = pd.DataFrame([
    ("Claude-3.5-Sonnet", 61.00, 79.27), ("GPT-4o", 60.50, 80.55), ("GLM-4-Long", 57.10, 76.35),
    ("GPT-4-Turbo", 49.50, 71.38), ("Claude-3.5-Haiku", 45.80, 69.50), ("Qwen2.5-72B", 40.10, 58.32),
    ("Mistral Large 2", 20.10, 48.78), ("GLM-4-9B", 9.40, 27.97), ("Qwen2.5-7B", 5.00, 18.19),
    ("Llama-3.1-405B", 4.00, 11.87), ("Llama-3.1-70B", 2.70, 8.17), ("Llama-3.1-8B", 0.10, 1.34),
], columns=["model", "success_pct", "call_accuracy_pct"])


def cfb_leaderboard(evals: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """The evaluations under ComplexFuncBench's protocol (``env: cfb``; ``evals`` by label and task set, as
    :func:`evaluations` reads them) among the published rows, by success rate; ``ours`` marks the run's, ``n``
    the tasks (the published rows: all 1,000). Empty when none ran under the protocol."""
    ours = [{"model": model, "success_pct": 100 * m["cfb_success_rate"], "call_accuracy_pct": 100 * m["cfb_call_accuracy"],
             "n": m["n_tasks"], "ours": True}
            for model, sets in evals.items() for m in [sets.get("complexfuncbench", {})] if "cfb_success_rate" in m]
    if not ours:
        return pd.DataFrame()
    board = pd.concat([CFB_LEADERBOARD.assign(n=1000, ours=False), pd.DataFrame(ours)], ignore_index=True)
    return board.sort_values("success_pct", ascending=False, kind="stable").reset_index(drop=True)


def evaluations(run_path: str | Path) -> dict[str, dict[str, dict]]:
    """Every finished evaluation's ``metrics.json`` by model label and task set."""
    evals: dict[str, dict[str, dict]] = {}
    for model, task_set, d in eval_dirs(run_path):
        evals.setdefault(model, {})[task_set] = json.loads((d / "metrics.json").read_text())
    return evals


def eval_dirs(run_path: str | Path) -> list[tuple[str, str, Path]]:
    """``(model label, task set, folder)`` of every finished evaluation in a run."""
    base = Path(run_path) / "eval"
    return [(d.parent.name, d.name, d) for d in sorted(base.glob("*/*")) if (d / "metrics.json").is_file()]


def metrics_table(run_path: str | Path) -> pd.DataFrame:
    """One row per (model, task set, group) and one per (model, task set) overall."""
    rows = []
    for model, task_set, d in eval_dirs(run_path):
        m = json.loads((d / "metrics.json").read_text())
        for group, g in [("overall", m), *m.get("groups", {}).items()]:
            lo, hi = g["pass_rate_ci95"]
            rows.append({"model": model, "contender": contender(model, m), "decoding": decoding_of(m),
                         "task_set": task_set, "group": group, "n": g["n_tasks"],
                         "pass_rate": g["pass_rate"], "ci_low": lo, "ci_high": hi,
                         "format_valid_rate": g["format_valid_rate"], "hallucinated_tool_rate": g["hallucinated_tool_rate"],
                         "call_match_rate": g["call_match_rate"], "seconds_per_task": g["seconds_per_task"]})
    return pd.DataFrame(rows)


def decoding_of(metrics: dict) -> str:
    """How an evaluation decoded: ``free`` or ``grammar`` (``names`` for the action-name mask of earlier runs)."""
    return metrics.get("decoding") or ("names" if metrics.get("constrain_names") else "free")


def contender(label: str, metrics: dict) -> str:
    """An evaluation's label without its decoding: the model and how it played (``…-sft``, ``…-sft+dfsdt``), whose
    free and grammar evaluations the format-versus-competence table sets side by side."""
    return label.removesuffix(f"+{decoding_of(metrics)}")


def format_versus_competence(table: pd.DataFrame) -> pd.DataFrame:
    """Each model decoded freely and under its task's grammar, on the same tasks: pass rate, format-valid steps
    and call match side by side. Grammar decoding makes every step well-formed, so what a model still fails
    under it is competence, and the free column's gap to it is what the format costs."""
    overall = table[table["group"] == "overall"]
    if overall.empty:
        return pd.DataFrame()
    out = overall.pivot_table(index=["task_set", "contender"], columns="decoding",
                              values=["pass_rate", "format_valid_rate", "call_match_rate"])
    out = out.reindex(columns=["pass_rate", "format_valid_rate", "call_match_rate"], level=0)
    return out[out.notna().all(axis=1)]  # a variant played one way only (DFSDT under the grammar) has no pair


def floors_table(run_path: str | Path) -> pd.DataFrame:
    """What a policy that solves nothing scores on each task set (:mod:`slmlib.floors`): one row per policy."""
    rows, seen = [], set()
    for _, task_set, d in eval_dirs(run_path):
        floors = json.loads((d / "metrics.json").read_text()).get("floors")
        if floors and task_set not in seen:  # the same tasks and judge for every model: the first evaluation's
            seen.add(task_set)
            rows += [{"task_set": task_set, "policy": name, "n": f["n_tasks"], "pass_rate": f["pass_rate"],
                      "ci_low": f["pass_rate_ci95"][0], "ci_high": f["pass_rate_ci95"][1],
                      "labels": ", ".join(f"{k} {v}" for k, v in sorted(f["labels"].items(), key=lambda kv: -kv[1]))}
                     for name, f in floors.items()]
    return pd.DataFrame(rows)


def predictions(run_path: str | Path) -> pd.DataFrame:
    """Every judged episode of every model: one row each, with the task it answered."""
    rows = []
    for model, task_set, d in eval_dirs(run_path):
        tasks = {t["id"]: t for t in read_jsonl(Path(run_path) / "data" / f"test_{task_set}.jsonl")}
        for line in (d / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            rows.append({"model": model, "task_set": task_set, "id": r["id"], "group": r["group"],
                         "passed": r["verdict"]["passed"], "label": r["verdict"]["label"] or "passed",
                         "detail": r["verdict"]["detail"], "steps": len(r["steps"]), "record": r, "task": tasks.get(r["id"])})
    return pd.DataFrame(rows)


def failures(preds: pd.DataFrame) -> pd.DataFrame:
    return preds[~preds["passed"]].reset_index(drop=True)


def failure_table(preds: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """The most common failure labels per model with one example each."""
    f = failures(preds)
    if f.empty:
        return pd.DataFrame(columns=["model", "label", "count", "example_task", "example_detail"])
    g = f.groupby(["model", "label"])
    out = g.size().rename("count").reset_index()
    first = g.first().reset_index()[["model", "label", "id", "detail"]]
    out = out.merge(first, on=["model", "label"]).rename(columns={"id": "example_task", "detail": "example_detail"})
    return out.sort_values(["model", "count"], ascending=[True, False]).head(top).reset_index(drop=True)


def worst_calls(preds: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Tool calls that most often went wrong (by label), with the name the model used."""
    rows = []
    for _, r in failures(preds).iterrows():
        steps = [s for s in r["record"]["steps"] if "step" in s]
        last = steps[-1]["step"] if steps else None
        rows.append({"model": r["model"], "label": r["label"], "action": last["action"] if last else "(none parsed)"})
    if not rows:
        return pd.DataFrame(columns=["model", "label", "action", "count"])
    return (pd.DataFrame(rows).value_counts().rename("count").reset_index().head(top))


WRONG_VALUE_COLUMNS = ["model", "id", "call", "function", "parameter", "made", "golden", "golden_from", "made_from",
                       "swapped_with", "elsewhere"]
QUERY_SIBLING_COLUMNS = ["model", "id", "function", "made", "golden", "sibling", "likeness", "sibling_query",
                         "made_said", "golden_said", "sibling_said"]
OPENING_CHARS = 120  # a request's opening sentence or two: what a template fixes


def wrong_values(preds: pd.DataFrame) -> pd.DataFrame:
    """The episodes ComplexFuncBench's protocol ended on a wrong value, one row each: the call's position among the
    episode's calls (1 = its first), the function and parameter,
    the value made and the golden one, and where each stood before that call (``golden_from``, ``made_from``):
    ``request`` (the user's words), ``words`` (a date the request names by month and day, "December 10th":
    rewriting, not reasoning), ``observation`` (an earlier tool response, as a JSON value), or ``neither`` (worked
    out, like a date from "the day after tomorrow", or made up); ``swapped_with``, the other argument of the golden call
    whose value the model wrote here (a pick-up date in ``drop_off_date``: the grammar's argument order against the
    one the model learned), or ``""``; ``elsewhere``, the first argument of any of the task's golden calls that passes
    the value made here (``Search_Taxi.pick_up_place_id`` for a drop-off's place id: a role taken for another), or ``""``."""
    rows = []
    for _, r in preds.iterrows():
        task = r["task"]
        if not task or task.get("source") != "complexfuncbench":
            continue
        ep = cfb.replayed(task, r["record"]["steps"])
        if ep.ending is None or ep.ending[0] != "value_error":
            continue
        miss, key = ep.missed, ep.missed["parameter"]
        request = judge.query_of(task)
        calls = [s for s in r["record"]["steps"] if s.get("step") and s["step"]["action"] != FINISH]
        seen = [s.get("observation", "") for s in calls[:miss["at"]]]
        made, golden = miss["call"]["arguments"][key], miss["golden"]["arguments"][key]
        swapped = [k for k, v in miss["golden"]["arguments"].items() if k != key and same_value(v, made)]
        rows.append({"model": r["model"], "id": r["id"], "call": miss["at"] + 1, "function": miss["call"]["name"],
                     "parameter": key, "made": made, "golden": golden, "golden_from": _found_in(golden, request, seen),
                     "made_from": _found_in(made, request, seen), "swapped_with": swapped[0] if swapped else "",
                     "elsewhere": _passed_by(made, task.get("gold_calls", []))})
    return pd.DataFrame(rows, columns=WRONG_VALUE_COLUMNS)


def query_siblings(preds: pd.DataFrame, train: list[dict], opening: int = OPENING_CHARS) -> pd.DataFrame:
    """The episodes that ended on a look-up's wrong ``query``, beside the training task whose request opens most
    alike (ComplexFuncBench writes its tasks from templates, so that is the same template's sibling) and the query
    the sibling's golden call of the same function writes (its first look-up's where it has none). ``*_said``: the
    query stands in its own request, case ignored ("Toronto"), or not ("Toronto, Canada", a composed name). Where the
    golden query and its sibling's agree and the made one does not, the convention was in the training data and the
    model did not take it. ``train``: judged train tasks (``complexfuncbench.tasks("train", judged=True)``)."""
    rows = []
    tasks = {r["id"]: r["task"] for _, r in preds.iterrows()}
    heads = [(judge.query_of(t)[:opening], t) for t in train]
    wrong = wrong_values(preds)
    for _, w in wrong[wrong.parameter == "query"].iterrows():
        request = judge.query_of(tasks[w.id])
        likeness, sibling = max(((SequenceMatcher(None, head, request[:opening]).ratio(), t) for head, t in heads),
                                key=lambda x: x[0])
        looked = [c for c in sibling["gold_calls"] if "query" in c["arguments"]]
        same = [c for c in looked if c["name"] == w.function] or looked
        sibling_query = same[0]["arguments"]["query"][0] if same else None
        rows.append({"model": w.model, "id": w.id, "function": w.function, "made": w.made, "golden": w.golden,
                     "sibling": sibling["id"], "likeness": round(likeness, 2), "sibling_query": sibling_query,
                     "made_said": _said(w.made, request), "golden_said": _said(w.golden, request),
                     "sibling_said": _said(sibling_query, judge.query_of(sibling)) if same else None})
    return pd.DataFrame(rows, columns=QUERY_SIBLING_COLUMNS)


def _said(value, request: str) -> bool:
    return isinstance(value, str) and value.strip().lower() in request.lower()


def _passed_by(value, golden_calls: list[dict]) -> str:
    """``function.argument`` of the first golden call argument (a nested one by its path, ``legs[1].toId``) that
    passes ``value``; a golden call lists each argument's accepted values."""
    for c in golden_calls:
        for key, accepted in c["arguments"].items():
            for v in accepted if isinstance(accepted, list) else [accepted]:
                for path, x in [(key, v), *(leaves({key: v}) if isinstance(v, (dict, list)) else [])]:
                    if same_value(x, value):
                        return f"{c['name']}.{path}"
    return ""


def _found_in(value, request: str, observations: list[str]) -> str:
    """Where a value stands: said in the request (as it is, or a date in words), a JSON value of an observation,
    or neither."""
    as_json = json.dumps(value, ensure_ascii=False)
    plain = value if isinstance(value, str) else as_json
    # a number must not be a piece of a longer one
    alone = re.compile(rf"(?<![\w.-]){re.escape(plain)}(?![\w.])") if not isinstance(value, str) else None
    if alone.search(request) if alone else plain in request:
        return "request"
    if dates.in_words(value, request):
        return "words"
    if any(alone.search(o) if alone else as_json in o for o in observations):
        return "observation"
    return "neither"


def step_view(row: pd.Series, index: int) -> dict[str, str]:
    """What the inspector shows for step ``index`` of one episode: prompt, raw output, parsed and expected call, observation."""
    record, task = row["record"], row["task"] or {}
    steps = record["steps"]
    s = steps[min(index, len(steps) - 1)] if steps else {}
    history = record["messages"][: _history_len(record, index)]
    prompt = tbf.text(tbf.prompt_segments({**task, "messages": history})) if task else ""
    gold = task.get("gold_calls") or [{"name": n} for n in task.get("relevant_tools", [])]
    return {"prompt": prompt, "raw": s.get("raw", ""), "parsed": json.dumps(s.get("step"), ensure_ascii=False, indent=1),
            "expected": json.dumps(gold, ensure_ascii=False, indent=1), "observation": s.get("observation", ""),
            "verdict": f"{row['label']}: {row['detail']}", "search": search_tree(record)}


def search_tree(record: dict) -> str:
    """A searched episode's tree as indented lines (``*`` marks the chain the judge saw); empty for ReAct."""
    nodes = record.get("tree") or []
    depth: dict[int, int] = {}
    lines = []
    for n in nodes:
        depth[n["node"]] = 0 if n["parent"] is None else depth[n["parent"]] + 1
        if n["parent"] is None:
            continue
        step = (n["step"] or {}).get("step")
        what = (f"{step['action']} {step['action_input']}" if step else "(no step: the conversation exceeds the window)"
                if n["step"] is None else f"unparsable: {n['step'].get('raw', '')[:60]!r}")
        lines.append(f"{'*' if n['judged'] else ' '} {'  ' * (depth[n['node']] - 1)}{n['node']}. {what[:120]} -> {n['kind']}"
                     + (" (after the diversity prompt)" if n["diversity"] else ""))
    return "\n".join(lines)


def _history_len(record: dict, index: int) -> int:
    """Messages before step ``index``: the task's own, then two per step that was acted on."""
    first = len(record["messages"]) - sum(1 + ("observation" in s) for s in record["steps"] if "step" in s)
    done = record["steps"][:index]
    return first + sum(1 + ("observation" in s) for s in done if "step" in s)
