"""The learning curve: snapshots of the model during training, each evaluated on the same tasks.

With ``train.snapshots: N`` the training keeps the weights (or the LoRA adapter) at N evenly spaced
optimizer steps before the last in ``train/snapshots/step-<S>/``, listed with the supervised tokens
seen by then in ``train/snapshots/index.json``; the final model is the curve's last point. Each point
gets teacher-forced next-step accuracy by call position (``evaluate --mode step``) on one of the run's
task sets, and ``eval.curve_episodes`` of them, evenly spread and the final one included, an episode
pass rate as well, on the first ``eval.curve_limit`` tasks where set (every point is an evaluation of its
own). Results go to ``eval/curve/`` and ``eval/curve/curve.json``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from transformers import TrainerCallback

from slmlib.run import atomic_write_json, read_json

PAPER_ROWS = 187_542  # the paper's training rows: ToolBench's toolllama_G123_dfs_train.json, one epoch


def snapshot_steps(total_steps: int, n: int) -> list[int]:
    """``n`` evenly spaced optimizer steps before ``total_steps`` (which the final model stands for)."""
    return sorted({round(total_steps * k / (n + 1)) for k in range(1, n + 1)} - {0, total_steps})


def rows_per_step(args) -> int:
    """Training rows in one optimizer step of these ``TrainingArguments``, every process together."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def supervised_tokens_seen(step: int, rows_per_step: int, learned_per_row: float) -> int:
    """An estimate: the rows of ``step`` optimizer steps times the mean learned tokens of a row (exact at an epoch's end)."""
    return round(step * rows_per_step * learned_per_row)


class Snapshots(TrainerCallback):
    """Saves the model at :func:`snapshot_steps` of the planned run; a resumed run keeps those already written."""

    def __init__(self, folder: Path, n: int, learned_per_row: float, tokenizer):
        self.folder, self.n, self.learned_per_row, self.tokenizer = folder, n, learned_per_row, tokenizer
        self.steps: list[int] = []

    def on_train_begin(self, args, state, control, **kw):
        self.steps = snapshot_steps(state.max_steps, self.n)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step not in self.steps or not state.is_world_process_zero:
            return
        final = self.folder / f"step-{state.global_step}"
        if final.is_dir():
            return
        partial = self.folder / f".step-{state.global_step}.partial"  # renamed when whole: a killed save leaves no snapshot
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        self.tokenizer.save_pretrained(partial)
        partial.rename(final)
        index = self.folder / "index.json"
        points = [p for p in (read_json(index) if index.is_file() else []) if p["step"] != state.global_step]
        points.append({"step": state.global_step, "path": final.name,
                       "supervised_tokens_seen": supervised_tokens_seen(state.global_step, rows_per_step(args), self.learned_per_row)})
        atomic_write_json(index, sorted(points, key=lambda p: p["step"]))


def points(train_dir: str | Path) -> list[dict]:
    """Every curve point of a finished training, the final model last: ``step``, ``model`` folder, tokens seen."""
    train_dir = Path(train_dir)
    summary = read_json(train_dir / "train_summary.json")
    index = train_dir / "snapshots" / "index.json"
    snaps = [{**p, "model": str(train_dir / "snapshots" / p["path"])} for p in (read_json(index) if index.is_file() else [])]
    final = {"step": summary["steps"], "model": str(train_dir / "model"),
             "supervised_tokens_seen": supervised_tokens_seen(summary["steps"], summary["rows_per_step"],
                                                              summary["supervised_tokens"] / summary["n_rows"])}
    return [*snaps, final]


def episode_points(n_points: int, k: int) -> list[int]:
    """Indices of ``k`` of ``n_points`` points spread evenly, the last (the final model) always among them."""
    k = min(k, n_points)
    if k <= 1:
        return [n_points - 1] if k == 1 else []
    return sorted({round(i * (n_points - 1) / (k - 1)) for i in range(k)})


def paper_budget(data_root: str | Path, tokenizer) -> float | None:
    """The paper's budget in supervised tokens, estimated: its 187,542 rows times the mean learned tokens of a
    ToolLLaMA row (the last assistant turn) in ToolBench's example answers, with this tokenizer; None without them."""
    from slmlib import train
    from slmlib.data import toolbench
    folder = Path(data_root) / "toolbench" / "data_example" / "answer"
    if not folder.is_dir():
        return None
    rows, _ = train.encode_rows(toolbench.answer_dir_tasks(folder), tokenizer, "last", 1 << 30)
    return PAPER_ROWS * train.learned_tokens(rows) / len(rows) if rows else None


def evaluate_curve(profile, run_path: str | Path) -> dict | None:
    """Every curve point on the profile's ``eval.curve_set`` (step mode), a few also as episodes; None without
    snapshots. Each point's results are kept, so a rerun goes on from the first one missing; the final model's
    episodes are those of the run's own evaluation when it has them."""
    from slmlib import evaluate, models
    run = Path(run_path)
    train_dir, task_file = run / "train", run / "data" / f"test_{profile.eval.curve_set}.jsonl"
    if not (train_dir / "snapshots" / "index.json").is_file():
        return None
    if not task_file.is_file():
        raise FileNotFoundError(f"eval.curve_set {profile.eval.curve_set!r}: the run has no {task_file}")
    pts = points(train_dir)
    with_episodes = set(episode_points(len(pts), profile.eval.curve_episodes))
    out = run / "eval" / "curve"
    settings = evaluate.profile_settings(profile) | evaluate.order_from(run, profile.eval.argument_order)
    rows = []
    for i, p in enumerate(pts):
        model, adapter = evaluate.model_and_adapter(profile, p["model"])
        step_dir = out / f"step-{p['step']}" / "step"
        step = read_json(step_dir / "metrics.json") if (step_dir / "metrics.json").is_file() else evaluate.evaluate(
            model, task_file, step_dir, adapter=adapter, mode="step", limit=profile.eval.curve_limit, **settings)
        row = {"step": p["step"], "supervised_tokens_seen": p["supervised_tokens_seen"],
               "step_call_match_rate": step["step_call_match_rate"],
               **{f"call_match_at_{k}": v["step_call_match_rate"] for k, v in step["by_position"].items()}}
        if i in with_episodes:
            final = i == len(pts) - 1
            episodes = (run / "eval" / evaluate.trained_label(profile) / profile.eval.curve_set
                        if final and profile.eval.curve_limit < 0 else out / f"step-{p['step']}" / "episode")
            row["pass_rate"] = evaluate.evaluate(model, task_file, episodes, adapter=adapter, limit=profile.eval.curve_limit,
                                                 **settings)["pass_rate"]
        rows.append(row)
    curve = {"task_set": profile.eval.curve_set, "tasks": str(task_file.relative_to(run)), "limit": profile.eval.curve_limit,
             "paper_supervised_tokens": paper_budget(profile.data.root, models.load_tokenizer(profile.model.name)),
             "points": rows}
    atomic_write_json(out / "curve.json", curve)
    return curve
