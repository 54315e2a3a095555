"""``python -m slmlib evaluate``: roll a model out on a task file and judge every episode.

``predictions.jsonl`` gets one line per task as soon as it finishes (so a crash loses nothing and
a rerun skips what is done, and judges every stored episode again with the current judge);
``metrics.json`` is written atomically at the end. ``--mode step``
scores next-step prediction against the gold trajectory instead (teacher-forced, fast).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from slmlib import deadline, envs, eval_workers, floors, judge, models, rollout
from slmlib import toolbench_format as tbf
from slmlib.assets import sha256_file
from slmlib.config import ConfigError, SearchConfig
from slmlib.run import atomic_write_json, atomic_write_text, read_json
from slmlib.schema import FINISH, argument_orders, assistant_call, read_jsonl
from slmlib.values import same_value

log = logging.getLogger(__name__)


def load_model(name: str, adapter: str | None = None, dtype: str = "float32"):
    """The model (on the GPU when there is one) and its tokenizer."""
    import torch
    model, tok = models.load(name, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).eval()  # no merge: the adapter stays separate
    return model, tok


def done_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by a crash is redone
    return ids


class SettingsChanged(ValueError):
    pass


def keep_settings(out: Path, settings: dict[str, Any], resuming: bool) -> None:
    """Record how the episodes in ``out`` are rolled out; resuming them otherwise would mix two experiments."""
    path = out / "settings.json"
    if path.is_file() and resuming:
        before = read_json(path)
        changed = [f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in sorted(set(before) | set(settings))
                   if before.get(k) != settings.get(k)]
        if changed:
            raise SettingsChanged(f"{out} holds episodes rolled out with other settings ({'; '.join(changed)}); "
                                  "give another output folder")
    atomic_write_json(path, settings)


def take_earlier(earlier: Path, out: Path, *, model: str, adapter: str | None, tasks_file: Path, tasks: list[dict],
                 settings: dict[str, Any]) -> None:
    """Copy a finished evaluation's episodes into ``out`` when they are the ones this evaluation would roll out: the same
    model and adapter, the same settings, a task file identical byte for byte, every task played. Decoded with the same
    settings and seed they are the same episodes, up to another machine's rounding (an untuned baseline beside each
    new training: ``make run EVALS_FROM=``); the earlier seconds and peaks come with them, and ``metrics.json`` names
    where they came from. Anything else is logged with its reason, and this evaluation rolls out as ever."""
    why = why_not_taken(earlier, model=model, adapter=adapter, tasks_file=tasks_file, tasks=tasks, settings=settings)
    if why:
        log.info("%s: not taken from %s (%s); rolled out here", out, earlier, why)
        return
    atomic_write_text(out / "predictions.jsonl", (earlier / "predictions.jsonl").read_text(encoding="utf-8"))
    atomic_write_json(out / "metrics.json", read_json(earlier / "metrics.json") | {"taken_from": str(earlier.resolve())})
    log.info("%s: episodes taken from %s", out, earlier)


def why_not_taken(earlier: Path, *, model: str, adapter: str | None, tasks_file: Path, tasks: list[dict],
                  settings: dict[str, Any]) -> str | None:
    if not (earlier / "metrics.json").is_file() or not (earlier / "settings.json").is_file():
        return "no finished evaluation there"
    theirs = read_json(earlier / "metrics.json")
    if (theirs.get("model"), theirs.get("adapter")) != (model, adapter):
        return f"another model: {theirs.get('model')}, adapter {theirs.get('adapter')}"
    if read_json(earlier / "settings.json") != settings:
        return "other settings"
    if tasks_sha256(theirs) != sha256_file(tasks_file):
        return f"other tasks: {theirs.get('tasks')} is not {tasks_file} byte for byte"
    if not {t["id"] for t in tasks} <= done_ids(earlier / "predictions.jsonl"):
        return "not every task played there"
    return None


def tasks_sha256(metrics: dict[str, Any]) -> str | None:
    """The sha256 of the task file an evaluation played: recorded since exports carry evaluations to other machines,
    where the file it names is not; an older evaluation's is that of the file, where it still is."""
    if "tasks_sha256" in metrics:
        return metrics["tasks_sha256"]
    tasks = Path(metrics.get("tasks", ""))
    return sha256_file(tasks) if tasks.is_file() else None


def append_line(path: Path, record: dict) -> None:
    cut = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"  # a crash cut the last line: start on a fresh one
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if cut else "") + json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def gold_trajectory(task: dict) -> list[dict]:
    """The task's own trajectory, or one built from ``gold_calls`` and ``replay`` (in order)."""
    if any(m["role"] == "assistant" for m in task["messages"]):
        return task["messages"]
    replay = envs.make("replay")
    msgs = list(task["messages"])
    for rec in task.get("replay", []):
        msgs.append(assistant_call(rec["name"], rec["arguments"]))
        msgs.append({"role": "tool", "name": rec["name"], "content": replay.call(task, rec["name"], rec["arguments"])})
    return msgs


@dataclasses.dataclass
class StepRow:
    """One task's teacher-forced steps as a row of the batch, predicted in order: each prompt extends the row's one
    before, so with the row's KV cache it prefills only the gold step and observation that came since."""
    task: dict
    turns: list[tuple[list[dict], tbf.Step, int]]  # (history, gold step, position) of each assistant turn
    grammar: Any
    cache: rollout.PrefixCache | None
    steps: list[dict] = dataclasses.field(default_factory=list)


def step_records(model, tok, tasks: Iterable[dict], dec: rollout.Decoding, batch_size: int) -> Iterator[dict]:
    """Teacher-forced next-step prediction over every assistant turn of each task's gold trajectory: one record per
    task (``id``, ``steps``, ``prefix_reuse``) as soon as its last step is predicted. Up to ``batch_size`` tasks run
    at once, a row each; a task is taken from ``tasks`` only when a row is free (a worker's tasks come from a queue),
    and takes over the KV cache of the task it replaces (the system prompt and tools they share)."""
    reuse = rollout.reuses_prefix(model, dec, batch_size)
    tasks, active, spare = iter(tasks), [], []
    while True:
        while len(active) < batch_size and (task := next(tasks, None)) is not None:
            msgs = gold_trajectory(task)
            turns = [(msgs[:i], tbf.message_step(msgs[i]), k + 1)
                     for k, i in enumerate(i for i, m in enumerate(msgs) if m["role"] == "assistant")]
            if not turns:
                yield {"id": task["id"], "steps": [], "prefix_reuse": reuse}
                continue
            cache = (spare.pop() if spare else rollout.PrefixCache()) if reuse else None
            active.append(StepRow(task, turns, rollout.task_grammar(task, dec), cache))  # its grammar once, not per step
        if not active:
            return
        prompts = [rollout.prompt_ids({**r.task, "messages": r.turns[len(r.steps)][0]}, tok, dec) for r in active]
        fits = [len(p) + dec.max_new_tokens <= dec.max_context for p in prompts]
        kept = [(p, r) for p, r, ok in zip(prompts, active, fits) if ok]
        texts = iter(rollout.generate_steps(model, tok, [p for p, _ in kept], dec, caches=[r.cache for _, r in kept] if reuse else None,
                                            grammars=[r.grammar.text for _, r in kept] if dec.decoding == "grammar" else None).texts
                     if kept else [])
        still = []
        for row, ok in zip(active, fits):
            text = next(texts) if ok else ""  # a prompt beyond the window counts as a failed step
            _, gold, position = row.turns[len(row.steps)]
            parsed, guarded = rollout.parse_generated(text)
            valid = isinstance(parsed, tbf.Step)
            name_ok = valid and parsed.action == gold.action
            row.steps.append({"id": row.task["id"], "group": row.task["group"], "position": position, "raw": text,
                              "gold_action": gold.action, "format_valid": valid, "guarded": guarded, "name_match": name_ok,
                              "call_match": name_ok and same_value(gold.arguments(), parsed.arguments())})
            if len(row.steps) < len(row.turns):
                still.append(row)
                continue
            if row.cache is not None:
                spare.append(row.cache)
            yield {"id": row.task["id"], "steps": row.steps, "prefix_reuse": reuse}
        active = still


def step_mode(spec: eval_workers.TeacherForced, tasks: list[dict], out: Path, workers: int = 1) -> dict:
    """Step mode in this process or in ``workers`` processes sharing the cores (tasks handed out as they free up);
    ``step_predictions.jsonl`` in task order, ``metrics.json`` with the rates, the speed and the peak memory."""
    peak: dict[str, Any] = {}
    workers = max(1, min(workers, len(tasks)))
    t0 = time.perf_counter()
    records = {r["id"]: r for r in eval_workers.play(spec, tasks, workers, peak)}
    seconds = time.perf_counter() - t0
    results = [s for t in tasks for s in records[t["id"]]["steps"]]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "step_predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    n = len(results)
    metrics = {"mode": "step", "n_tasks": len(tasks), **step_metrics(results), "batch_size": spec.batch_size,
               "prefix_reuse": any(r["prefix_reuse"] for r in records.values()), "workers": workers,
               "fit_window": spec.dec.fit_window, "argument_order": "as_trained" if spec.dec.argument_orders else "schema",
               "seconds_per_step": seconds / n if n else 0.0, **peak}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def step_metrics(results: list[dict]) -> dict[str, Any]:
    """Next-step rates overall and by the step's position in its task (1, 2, 3, 4 and later).

    With the gold history given, a rate that falls with the position shows where a model stops
    using what the earlier observations returned.
    """
    by_position: dict[str, list[dict]] = {}
    for r in results:
        by_position.setdefault(str(r["position"]) if r["position"] < 4 else "4+", []).append(r)
    finish = [r["name_match"] for r in results if r["gold_action"] == FINISH]
    return {"n_steps": len(results),
            "step_format_valid_rate": _rate([r["format_valid"] for r in results]),
            "step_guarded_rate": _rate([r["guarded"] for r in results]),
            "step_name_accuracy": _rate([r["name_match"] for r in results]),
            "step_call_match_rate": _rate([r["call_match"] for r in results]),
            "finish_step_accuracy": _rate(finish) if finish else None,  # None: the gold has no Finish step
            "by_position": {p: {"n_steps": len(rs), "step_name_accuracy": _rate([r["name_match"] for r in rs]),
                                "step_call_match_rate": _rate([r["call_match"] for r in rs])}
                            for p, rs in sorted(by_position.items())}}


def _rate(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def rejudge(preds: Path, by_id: dict[str, dict]) -> list[dict]:
    """The records of these tasks, each judged by the current judge; the file is rewritten if a verdict changed.

    Episodes are kept as they were rolled out; a judge that changed since is applied to them all.
    """
    lines, changed = [], False
    for line in preds.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            changed = True  # a line cut by a crash: its task was rolled out again, the fragment goes
    for r in lines:
        if r["id"] in by_id:
            verdict = judge.judge(by_id[r["id"]], r)
            changed |= verdict != r["verdict"]
            r["verdict"] = verdict
    if changed:
        atomic_write_text(preds, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    return [r for r in lines if r["id"] in by_id]


PEAKS = ("peak_rss_gb", "peak_gpu_gb")


def rollout_peak(previous: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The peak memory of the rollouts behind the stored episodes: those of an earlier execution count too."""
    before = {k: previous[k] for k in (*PEAKS, "peak_rss_is_process_peak") if k in previous}
    return before | now | {k: max(now[k], before[k]) for k in PEAKS if k in now and k in before}


def context_window(model) -> int:
    return min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 8192)


def evaluate(model: str, tasks_file: str | Path, out_dir: str | Path, *, adapter: str | None = None,
             mode: str = "episode", env: str = "auto", url: str | None = None, max_steps: int = 10,
             limit: int = -1, judge_name: str = "offline", batch_size: int = 8, temperature: float = 0.0,
             max_new_tokens: int = 256, seed: int = 0, dtype: str = "float32", judge_model: str | None = None,
             key_guard: bool = True, decoding: str = "free", agent: str = "react",
             search: SearchConfig = SearchConfig(), workers: int = 1, lookup_tokens: int = 15,
             fit_window: int = 0, argument_order_from: str | Path | None = None,
             earlier: str | Path | None = None) -> dict[str, Any]:
    """``argument_order_from``: a training file; under the grammar each call's arguments are written in the order its
    calls write them (:func:`slmlib.schema.argument_orders`), not in the schema's. ``earlier``: another folder of this
    function's; its episodes are taken instead of rolled out when they are this evaluation's (:func:`take_earlier`)."""
    tasks = read_jsonl(tasks_file)  # a malformed file stops here, before any model loads
    if limit >= 0:
        tasks = tasks[:limit]
    orders = argument_orders(read_jsonl(argument_order_from)) if argument_order_from else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dec = rollout.Decoding(max_steps=max_steps, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           key_guard=key_guard, decoding=decoding, lookup_tokens=lookup_tokens, fit_window=fit_window,
                           argument_orders=orders)
    if mode == "step":
        return step_mode(eval_workers.TeacherForced(model, adapter, dtype, dec, batch_size), tasks, out, workers)
    settings = {"env": env, "max_steps": max_steps, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "seed": seed, "dtype": dtype, "key_guard": key_guard, "decoding": decoding}
    if agent != "react":  # absent = react, so the episodes of earlier runs still resume
        settings |= {"agent": agent, "search": dataclasses.asdict(search)}
    if fit_window:  # absent = off, likewise
        settings |= {"fit_window": fit_window, "history_chars": dec.history_chars}
    if argument_order_from:  # absent = each schema's order, likewise
        settings |= {"argument_order": "as_trained", "argument_order_from": sha256_file(Path(argument_order_from))}
    preds = out / "predictions.jsonl"
    if earlier is not None and not preds.exists():
        take_earlier(Path(earlier), out, model=model, adapter=adapter, tasks_file=Path(tasks_file), tasks=tasks,
                     settings=settings)
    skip = done_ids(preds)
    keep_settings(out, settings, resuming=bool(skip))  # before the model loads: other settings stop at once
    by_id = {t["id"]: t for t in tasks}
    todo = [t for t in tasks if t["id"] not in skip]
    peak: dict[str, Any] = {}
    if todo:  # a rerun with every episode stored only judges them again: no model to load
        spec = eval_workers.Rollout(model, adapter, dtype, dec, batch_size, agent=agent, search=search, env=env, url=url)
        workers = min(workers, len(todo))
        stop_by = deadline.from_env()
        for n, record in enumerate(eval_workers.play(spec, todo, workers, peak), 1):
            task = by_id[record["id"]]
            record["declared_tools"] = [t["name"] for t in task["tools"]]
            record["verdict"] = judge.judge(task, record)
            append_line(preds, record)
            if deadline.passed(stop_by) and n < len(todo):  # the episodes under way are rolled again on resume
                raise deadline.Stopped(f"{out}: {len(skip) + n} of {len(tasks)} episodes rolled out by "
                                       f"{deadline.show(stop_by)}; evaluating again resumes after them")
        if workers > 1:
            peak["workers"] = workers
    records = rejudge(preds, by_id)
    if judge_name == "tooleval":
        from slmlib import tooleval
        tooleval.rejudge(records, by_id, model=judge_model)
    previous = read_json(out / "metrics.json") if skip and (out / "metrics.json").is_file() else {}
    metrics = {"mode": "episode", "model": model, "adapter": adapter, "tasks": str(tasks_file),
               "tasks_sha256": sha256_file(Path(tasks_file)), "judge": judge_name,
               **settings, **judge.metrics(records), **rollout_peak(previous, peak),
               **({"taken_from": previous["taken_from"]} if "taken_from" in previous else {})}
    if env == "cfb":  # ComplexFuncBench's own success and call accuracy, beside our verdicts
        from slmlib.envs import cfb
        metrics |= cfb.metrics([cfb.verdict(by_id[r["id"]], r) for r in records if by_id[r["id"]].get("source") == "complexfuncbench"])
    if judge_name == "offline" and env != "http":  # offline, the floors cost a second; a live server is not ours to load
        metrics["floors"] = floors.floors(tasks, envs.make(env, url), max_steps)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_run(profile, run_path: str | Path, evals_from: str | Path | None = None) -> dict[str, dict[str, dict]]:
    """The fine-tuned model of a run and the profile's baselines on every test set the run prepared,
    with every decoding the profile asks for, and the fine-tuned model in each of ``eval.variants`` (in
    :func:`plays`' order). With ``evals_from`` (an earlier run), each evaluation that run made of the same model,
    tasks and settings is taken instead of rolled out again (:func:`take_earlier`: the untuned baselines).

    Writes ``<run>/eval/<model label>/<task set>/`` for the profile's own settings,
    ``<run>/eval/<model label>+<decoding>/<task set>/`` for each other decoding and
    ``<run>/eval/<model label><variant suffix>/<task set>/`` for each variant; returns their metrics by
    label and task set.
    """
    run = Path(run_path)
    task_files = {f.stem.removeprefix("test_"): f for f in sorted(run.glob("data/test_*.jsonl"))}
    results: dict[str, dict[str, dict]] = {}
    for label, model, adapter, overrides, task_sets in plays(profile, run, sorted(task_files)):
        for task_set in task_sets:
            results.setdefault(label, {})[task_set] = evaluate(
                model, task_files[task_set], run / "eval" / label / task_set, adapter=adapter,
                earlier=Path(evals_from) / "eval" / label / task_set if evals_from else None,
                **profile_settings(profile, **overrides))
    return results


def plays(profile, run: Path, task_sets: list[str]) -> list[tuple[str, str, str | None, dict[str, Any], list[str]]]:
    """What :func:`evaluate_run` evaluates, in order: ``(label, model, adapter, settings that differ, task sets)``.

    Every model under the profile's decoding, then each variant, then the other decodings: a long run cut short
    has first what its targets compare (the fine-tuned model against the untuned ones, its protocol and search),
    the format-versus-competence table's other half last."""
    e = profile.eval
    trained = run / "train" / "model"
    contenders = [(trained_label(profile), *model_and_adapter(profile, trained))] if trained.is_dir() else []
    baselines = [(name, name, None) for name in e.baselines]

    def settings(label: str, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` as :func:`evaluate` takes it; an untuned model learned no argument order and keeps the schema's."""
        given = dict(given)
        order = given.pop("argument_order", e.argument_order)
        return given | (order_from(run, order) if label == trained_label(profile) else {})

    out, *others = [[(label + ("" if d == e.decoding else f"+{d}"), model, adapter, settings(label, {"decoding": d}), task_sets)
                     for label, model, adapter in contenders + baselines] for d in e.all_decodings()]
    for i, v in enumerate(e.variants):
        unknown = sorted(set(v.task_sets) - set(task_sets))
        if unknown:
            raise ConfigError(f"eval.variants[{i}].task_sets names {unknown[0]!r}; this run's test sets: {', '.join(task_sets)}")
        out += [(label + e.variant_suffix(v), model, adapter, settings(label, v.settings()), v.task_sets or task_sets)
                for label, model, adapter in contenders + (baselines if v.baselines else [])]
    return out + [play for decoded in others for play in decoded]


def order_from(run: Path, order: str) -> dict[str, str]:
    """:func:`evaluate`'s ``argument_order_from`` for a model ``run`` trained, under ``eval.argument_order``: its
    training file for ``as_trained``."""
    return {"argument_order_from": str(run / "data" / "train.jsonl")} if order == "as_trained" else {}


def trained_label(profile) -> str:
    """The fine-tuned model's name in a run's ``eval/`` and its tables."""
    return f"{Path(profile.model.name).name}-sft"


def model_and_adapter(profile, folder: str | Path) -> tuple[str, str | None]:
    """What :func:`evaluate` loads for a trained folder: the model itself, or the base model and that LoRA adapter."""
    return (profile.model.name, str(folder)) if (Path(folder) / "adapter_config.json").is_file() else (str(folder), None)


def profile_settings(profile, **overrides: Any) -> dict[str, Any]:
    """:func:`evaluate`'s settings as the profile's ``eval`` section gives them (the models' dtype from ``model.dtype``),
    those in ``overrides`` (a variant's ``agent``, ``env``, ``temperature`` or ``decoding``, :func:`plays`'
    ``argument_order_from``) replaced."""
    e = profile.eval
    return dict(max_steps=e.max_steps, batch_size=e.batch_size, temperature=e.temperature, max_new_tokens=e.max_new_tokens,
                dtype=profile.model.dtype, seed=profile.seed, key_guard=e.key_guard, decoding=e.decoding, agent=e.agent, search=e.search,
                env=e.env, workers=e.workers, lookup_tokens=e.lookup_tokens, fit_window=e.fit_window) | overrides
