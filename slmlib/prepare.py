"""The data step of a run: sources -> fitted training trajectories and test task files.

Writes ``<run>/data/train.jsonl``, ``<run>/data/test_<set>.jsonl`` and ``<run>/data/report.json``
(counts per source, token lengths, what the window trimmed or dropped, missing optional sources, the dates the
calls pass as the requests word them).
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from slmlib import budget, choices, data, dates, heldout, judge
from slmlib import toolbench_format as tbf
from slmlib.config import Profile
from slmlib.run import atomic_write_json
from slmlib.schema import FINISH, called_tools, in_schema_order, iter_jsonl, leaves, parsed_calls, write_jsonl
from slmlib.thoughts import with_thoughts

TEST_ONLY = {"stabletoolbench"}
PERCENTILES = (50, 90, 99, 100)


def percentiles(values: Iterable[int]) -> dict[str, float]:
    arr = np.asarray(list(values))
    if arr.size == 0:
        return {}
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES} | {"mean": float(arr.mean())}


def length_report(tasks: list[dict], count, max_length: int, loss_on: str) -> dict:
    """Counts per group, token lengths before trimming, calls per trajectory, and the cost of fitting."""
    stats = budget.TrimStats()
    lengths = [count(tbf.segments(t, loss_on) if any(m["role"] == "assistant" for m in t["messages"])
                     else tbf.prompt_segments(t)) for t in tasks]
    for t in tasks:
        if any(m["role"] == "assistant" for m in t["messages"]):
            budget.fit(t, count, max_length, loss_on=loss_on, stats=stats)
    return {"n": len(tasks), "groups": dict(Counter(t["group"] for t in tasks)),
            "tokens": percentiles(lengths), "over_window": sum(n > max_length for n in lengths),
            "calls_per_task": percentiles(len(called_tools(t)) for t in tasks), "fit": stats.as_dict(),
            "dates": date_origins(tasks)}


def _call_arguments(task: dict) -> Iterable[tuple[dict, str]]:
    """Every call's arguments with the observations before it: a test task's gold calls (their first accepted
    value) after the responses recorded for the calls before them, else the trajectory's."""
    if task.get("gold_calls"):
        responses = [json.dumps(r["response"], ensure_ascii=False) for r in task.get("replay", [])]
        for i, g in enumerate(task["gold_calls"]):
            yield {k: v[0] for k, v in g["arguments"].items() if v}, "\n".join(responses[:i])
        return
    yield from ((args, seen) for _, c, args, seen in parsed_calls(task) if c["function"]["name"] != FINISH)


def date_origins(tasks: list[dict]) -> dict[str, int]:
    """The ISO dates the calls pass (``YYYY-MM-DD``), as the request names them by month and day (``in_words``:
    rewriting) or not (``worked_out``: "the day after tomorrow", "five days later"), and of the latter those a
    dated Thought works out from a named date (``worked_out_from_named``, :func:`slmlib.dates.thought`; the
    others are read from an observation or named some other way, "Christmas Eve")."""
    out = Counter({"in_words": 0, "worked_out": 0, "worked_out_from_named": 0})
    for t in tasks:
        request = judge.query_of(t)
        for args, seen in _call_arguments(t):
            for k, v in leaves(args):
                if isinstance(v, str) and dates.ISO_DATE.match(v):
                    named = dates.in_words(v, request)
                    out["in_words" if named else "worked_out"] += 1
                    out["worked_out_from_named"] += not named and bool(dates.thought(request, {k: v}, seen))
    return dict(out)


def calls_kept(report: dict) -> dict[str, dict[str, str]]:
    """Per training source, its tool calls kept by the window out of those given, by position (``"3 of 5"``): a cut
    trajectory loses its last steps, so the later calls, built from earlier observations, are the ones it loses."""
    return {name: {p: f"{v['calls_kept'].get(p, 0)} of {v['calls_before'][p]}" for p in ("1", "2", "3", "4+")
                   if p in v["calls_before"]} for name, v in report["sources"].items()}


def file_stats(path: str | Path, tokenizer: str, max_length: int = 2048, loss_on: str = "all") -> dict:
    from slmlib.models import load_tokenizer
    count = budget.make_counter(load_tokenizer(tokenizer))
    return {"file": str(path), **length_report(list(iter_jsonl(path)), count, max_length, loss_on)}


def _limited(tasks: list[dict], limit: int, seed: int) -> list[dict]:
    """A fixed, seeded sample of at most ``limit`` tasks per group (all of them for -1), in file order."""
    if limit < 0:
        return tasks
    by_group = defaultdict(list)
    for i, t in enumerate(tasks):
        by_group[t["group"]].append(i)
    rng = random.Random(seed)
    keep = {i for idx in by_group.values() for i in rng.sample(idx, min(limit, len(idx)))}
    return [t for i, t in enumerate(tasks) if i in keep]


def prepare(profile: Profile, run_path: str | Path, tokenizer) -> dict:
    cfg = profile.data
    missing = data.check_sources(cfg.required, cfg.optional, cfg.root)
    count = budget.make_counter(tokenizer)
    out = Path(run_path) / "data"
    report: dict = {"missing_optional_sources": missing, "sources": {}, "test_sets": {}}
    train: list[dict] = []
    stats = budget.TrimStats()
    held: list[dict] = []
    sources = [s for s in [*cfg.required, *cfg.optional] if s not in missing]
    thinking = cfg.date_thoughts or cfg.choice_thoughts or cfg.role_thoughts
    for name in [s for s in sources if s not in TEST_ONLY]:
        raw = [t for t in data.load(name, cfg.root, "train") if not cfg.groups or t["group"] in cfg.groups]
        if name in cfg.heldout:
            raw, held_out = heldout.split(raw)
            held += heldout.tasks(held_out)
        raw = _limited([t for t in raw if len(called_tools(t)) >= cfg.min_calls],
                       cfg.train_limits.get(name, cfg.train_limit), profile.seed)
        per_source, thought_steps, reordered = budget.TrimStats(), 0, 0
        cues = choices.cues(raw) if cfg.choice_thoughts else None  # mined from the training requests alone
        for task in raw:
            if thinking:
                task, n = with_thoughts(task, dated=cfg.date_thoughts, cues=cues, roles_named=cfg.role_thoughts)
                thought_steps += n
            if cfg.argument_order == "schema":
                task, n = in_schema_order(task)
                reordered += n
            fitted = budget.fit(task, count, cfg.max_length, loss_on=profile.train.loss_on,
                                max_observation_chars=cfg.max_observation_chars,
                                distractors=cfg.distractor_tools, seed=profile.seed, stats=per_source)
            if fitted is not None:
                train.append(fitted)
        report["sources"][name] = per_source.as_dict()
        if thinking:
            report["sources"][name]["thoughts"] = thought_steps
        if cfg.argument_order == "schema":
            report["sources"][name]["calls_reordered"] = reordered
        stats.merge(per_source)
    if not train:
        raise ValueError("no training trajectory is left after fitting the window: check the sources and max_length")
    report["train"] = {"n": write_jsonl(out / "train.jsonl", train), **stats.as_dict(), "dates": date_origins(train)}
    test_sets = {}  # a benchmark's test split where the profile reads the benchmark
    if "complexfuncbench" in sources:
        test_sets["complexfuncbench"] = (lambda: data.load("complexfuncbench", cfg.root, "test"), cfg.test_limit)
    if "stabletoolbench" in sources:
        test_sets["stabletoolbench"] = (lambda: data.load("stabletoolbench", cfg.root), cfg.stabletoolbench_limit)
    if held:
        test_sets["heldout"] = (lambda: held, cfg.heldout_limit)
    for name, (load, limit) in test_sets.items():
        tasks = _limited(list(load()), limit, profile.seed)
        report["test_sets"][name] = {"n": write_jsonl(out / f"test_{name}.jsonl", tasks),
                                     "groups": dict(Counter(t["group"] for t in tasks)), "dates": date_origins(tasks)}
    atomic_write_json(out / "report.json", report)
    return report
