"""Supervised fine-tuning with TRL's ``SFTTrainer`` on rendered trajectories.

The rows are tokenized here (``slmlib.encode``), so the loss mask is exactly the renderer's:
only assistant text is learned, either the last turn (ToolLLaMA) or every turn of a trajectory
in one sequence. Full fine-tuning or LoRA (peft). Checkpoints every ``save_steps``; the same
command run again continues from the last one. The output folder gets the model (or adapter),
its tokenizer, ``rendering.json`` (how to prompt it as it was trained) and a model card.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from slmlib import curve, deadline, encode, memory, models
from slmlib import toolbench_format as tbf
from slmlib.config import Profile, TrainConfig
from slmlib.run import RunExists, atomic_write_json, atomic_write_text, cpu_bf16_native, read_json
from slmlib.schema import FINISH, iter_jsonl

log = logging.getLogger(__name__)
RENDERING_VERSION = 1


class EmptyDataset(ValueError):
    pass


def synthetic_answer_span(task: dict, segments: list[tuple[str, bool]]) -> dict[int, tuple[int, int]]:
    """Where the last learned segment holds a Finish answer its source never wrote (``meta.synthetic_answer``:
    ComplexFuncBench records none), as :func:`encode.encode`'s ``unlearned``; empty for every other trajectory."""
    last = task["messages"][-1]
    calls = last.get("tool_calls") or []
    if not task.get("meta", {}).get("synthetic_answer") or not calls or calls[0]["function"]["name"] != FINISH:
        return {}
    answer = json.loads(calls[0]["function"]["arguments"]).get("final_answer", "")
    i = max(k for k, (_, learned) in enumerate(segments) if learned)
    written = json.dumps(answer, ensure_ascii=False)[1:-1]
    start = segments[i][0].rfind(written) if written else -1
    return {i: (start, start + len(written))} if start >= 0 else {}


def encode_rows(tasks, tokenizer, loss_on: str, max_length: int,
                synthetic_answers: str = "learned") -> tuple[list[dict], int]:
    """``{"input_ids", "labels", "length"}`` rows; rows longer than the window are dropped and counted.
    ``synthetic_answers="masked"`` keeps an answer the source never wrote as context, not loss."""
    rows, too_long = [], 0
    for task in tasks:
        segments = tbf.segments(task, loss_on)
        masked = synthetic_answer_span(task, segments) if synthetic_answers == "masked" else None
        enc = encode.encode(segments, tokenizer, unlearned=masked)
        if len(enc) > max_length:
            too_long += 1
            continue
        if enc.n_learned:
            rows.append({"input_ids": enc.input_ids, "labels": enc.labels, "length": len(enc)})
    return rows, too_long


def learned_tokens(rows: list[dict]) -> int:
    """Tokens with a label in :func:`encode_rows`' rows: what the loss learns."""
    return sum(sum(1 for x in r["labels"] if x != encode.IGNORE) for r in rows)


def per_step_rows(tasks) -> list[dict]:
    """ToolLLaMA's layout: one row per assistant step, the history up to it as context."""
    out = []
    for task in tasks:
        msgs = task["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                out.append({**task, "id": f"{task['id']}#{i}", "messages": msgs[: i + 1]})
    return out


def choose_precision(requested: str) -> tuple[str, str]:
    """The training precision and the reason for it: ``auto`` takes bf16 where the hardware computes it
    natively (a CUDA device with bf16, a CPU with AVX-512-BF16 or AMX), fp16 on a CUDA device without
    bf16, fp32 on any other CPU, where bf16 is emulated (a bf16 matmul ran 54x slower than fp32 on an AVX2
    one, 3.0x on an AVX-512 one without BF16)."""
    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported()
        where = f"CUDA {torch.cuda.get_device_name(0)} {'with' if native else 'without'} bf16"
    else:
        native = cpu_bf16_native()
        where = f"CPU {torch.backends.cpu.get_cpu_capability()} {'with native' if native else 'without native (emulated)'} bf16"
    if requested != "auto":
        return requested, f"{requested} as the profile sets; {where}"
    chosen = "bf16" if native else ("fp16" if torch.cuda.is_available() else "fp32")
    return chosen, f"{chosen} by auto: {where}"


@contextlib.contextmanager
def lm_head_positions(which: str):
    """Which positions TRL's fused LM head scores while training: ``learned`` (those with a label) or ``all``.

    TRL 1.16 scores only labelled positions on Triton devices and every position elsewhere, so that compiled tile
    shapes stay fixed; eager CPU code compiles nothing, and there the head's work is wasted on prompt, tool and
    observation tokens (a third to two thirds of a trajectory). The choice is TRL's one switch,
    ``trl.trainer.utils._use_triton``, read only there (the kernels keep their own reference); the loss is the
    same either way, and a test sees the head get only the learned rows (``tests/test_train.py``)."""
    from trl.trainer import utils as trl_utils
    if which == "all":
        yield
        return
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def sft_config(cfg: TrainConfig, output_dir: Path, seed: int, n_rows: int, **overrides):
    from trl import SFTConfig
    cpu = not torch.cuda.is_available()
    precision, _ = choose_precision(cfg.precision)
    kwargs = dict(
        output_dir=str(output_dir), seed=seed, data_seed=seed, report_to=[],
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps, per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay, optim="adamw_torch", lr_scheduler_type="linear",
        bf16=precision == "bf16", fp16=precision == "fp16" and not cpu,
        gradient_checkpointing=cfg.gradient_checkpointing, save_steps=cfg.save_steps, save_total_limit=2,
        logging_steps=cfg.logging_steps, logging_first_step=True, max_length=None,
        train_sampling_strategy="group_by_length" if n_rows > cfg.per_device_batch_size else "random",
        dataloader_num_workers=0, disable_tqdm=os.environ.get("SLMLIB_DISABLE_TQDM") == "1", use_cpu=cpu)
    return SFTConfig(**{**kwargs, **overrides})


class ThroughputLog(TrainerCallback):
    """Appends every logged step (loss, lr, supervised tokens/s, resident memory now and at its peak) to ``train_log.jsonl``.

    ``elapsed_s`` counts training time across resumes: a resumed run starts from the seconds logged up to its checkpoint
    (``before``); the steps a killed run made after its checkpoint are dropped, their time with them."""

    def __init__(self, path: Path, learned_per_row: float):
        self.path, self.learned_per_row = path, learned_per_row
        self.t0, self.step0, self.before = None, 0, 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.step0 = time.perf_counter(), state.global_step
        if self.path.is_file():  # resumed: forget steps after the checkpoint
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= state.global_step]
            self.before = logged_seconds([json.loads(line) for line in kept])
            if state.is_world_process_zero:
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return
        elapsed = time.perf_counter() - self.t0
        rows = (state.global_step - self.step0) * curve.rows_per_step(args)
        entry = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"],
                 "learning_rate": logs.get("learning_rate"), "elapsed_s": round(self.before + elapsed, 2),
                 "supervised_tokens_per_s": round(rows * self.learned_per_row / elapsed, 1) if elapsed else None,
                 **memory.rss_now()}
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")


class StopBy(TrainerCallback):
    """Ends training after the last optimizer step that fits before ``stop_by`` and checkpoints it. The next step is
    taken to last 1.5 times the slowest of the last five (a checkpoint's writing inside), so the stop comes in time."""

    def __init__(self, stop_by: float):
        self.stop_by, self.last, self.durations, self.stopped_at = stop_by, 0.0, [], None

    def on_train_begin(self, args, state, control, **kw):
        self.last = deadline.now()

    def on_step_end(self, args, state, control, **kw):
        t = deadline.now()
        self.durations = [*self.durations[-4:], t - self.last]
        self.last = t
        stop = state.global_step < state.max_steps and t + 1.5 * max(self.durations) > self.stop_by
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process stops at one step
            flag = torch.tensor([float(stop)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step


def logged_seconds(entries: list[dict]) -> float:
    """The training seconds a log holds: its last ``elapsed_s``, plus the last of every stretch before a drop (logs of
    this project before ``elapsed_s`` counted across resumes started it from 0 at each resume)."""
    total = last = 0.0
    for e in entries:
        if e["elapsed_s"] < last:
            total += last
        last = e["elapsed_s"]
    return total + last


def apply_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise ValueError(f"lora_targets {missing} are not modules of {model.config.model_type} "
                         f"(linear layers there include: {sorted(n for n in names if 'proj' in n or n.startswith('fc'))})")
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                            target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes ``trainer_state.json`` last, so a run killed while writing a
    checkpoint leaves one without it (or with it cut short): resuming skips that one for the one before."""
    def complete(ckpt: Path) -> bool:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return True
        except (OSError, ValueError):
            return False
    ckpts = sorted((p for p in folder.glob("checkpoint-*") if complete(p)), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def model_card(profile: Profile, summary: dict) -> str:
    cfg = profile.train
    load = ("from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(PATH)"
            if cfg.method == "lora" else "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(PATH)")
    return f"""# {profile.model.name} fine-tuned for ToolBench-style tool calling

Trained by `slmlib train` (profile `{profile.name}`), {cfg.method} fine-tuning with TRL's `SFTTrainer`.

| | |
|---|---|
| base model | `{profile.model.name}` |
| training rows | {summary['n_rows']} ({summary['dropped_too_long']} over the window dropped) |
| supervised tokens | {summary['supervised_tokens']} |
| optimizer steps | {summary['steps']} |
| final training loss | {summary['final_loss']:.4f} |
| wall time | {summary['train_seconds']:.0f} s on {summary['device']}{f" ({summary['train_seconds_before_resume']:.0f} s of it before the last resume)" if summary['resumed_from'] else ""} |
| precision | {summary.get('precision_reason', profile.train.precision)} |

Parameters: `{json.dumps(asdict(cfg))}`

Prompt format: ToolBench's ReAct text in ToolLLaMA's template (`rendering.json` says which); the
next step is generated after `\\nAssistant: ` and parsed by `slmlib.toolbench_format.parse_step`.

```python
{load}
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
"""


def train(profile: Profile, train_file: str | Path, out_dir: str | Path, overwrite: bool = False,
          reuse: bool = False, adopt_from: str | Path | None = None, stop_by: float | None = None) -> dict:
    """Fine-tune per ``profile.train`` on a task file; returns the summary also written to ``train_summary.json``.

    A finished training in ``out_dir`` is an error, unless ``reuse`` (a resumed pipeline run, whose
    parameters were checked against its manifest) returns its summary as it is. ``adopt_from`` takes an
    earlier run's identical training instead of training (:mod:`slmlib.adopt`). ``stop_by`` (default: the
    time in ``SLMLIB_STOP_BY``, :mod:`slmlib.deadline`) ends it early with a checkpoint, raising ``Stopped``.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    out = Path(out_dir)
    summary_path = out / "train_summary.json"
    if summary_path.is_file() and not overwrite:
        if reuse:
            log.info("%s already trained; reusing it", out)
            return read_json(summary_path)
        raise RunExists(f"{out} holds a finished training run; pass overwrite to train again")
    if adopt_from is not None:
        from slmlib import adopt
        return adopt.adopt(adopt_from, train_file, out)
    stop_by = deadline.from_env() if stop_by is None else stop_by
    if deadline.passed(stop_by):
        raise deadline.Stopped(f"{out}: not trained, the time to stop by ({deadline.show(stop_by)}) has passed")
    cfg = profile.train
    set_seed(profile.seed)
    model, tokenizer = models.load(profile.model.name, dtype="float32")
    rows, too_long = encode_rows(iter_jsonl(train_file), tokenizer, cfg.loss_on, profile.data.max_length,
                                 cfg.synthetic_answers)
    if not rows:
        raise EmptyDataset(f"{train_file}: no trajectory with a learned token fits the {profile.data.max_length}-token window")
    learned = learned_tokens(rows)
    if cfg.method == "lora":
        model = apply_lora(model, cfg)
    ckpt_dir = out / "checkpoints"
    precision, why = choose_precision(cfg.precision)
    log.info("training precision: %s", why)
    args = sft_config(cfg, ckpt_dir, profile.seed, len(rows))
    throughput = ThroughputLog(out / "train_log.jsonl", learned / len(rows))
    callbacks = [throughput] + ([curve.Snapshots(out / "snapshots", cfg.snapshots, learned / len(rows), tokenizer)]
                                if cfg.snapshots > 0 else [])
    stop = StopBy(stop_by) if stop_by is not None else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=callbacks + ([stop] if stop else []))
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    with lm_head_positions(cfg.lm_head):
        result = trainer.train(resume_from_checkpoint=resume)
    if stop and stop.stopped_at is not None:
        raise deadline.Stopped(f"training stopped at step {stop.stopped_at} of {trainer.state.max_steps} to end by "
                               f"{deadline.show(stop_by)}; {ckpt_dir}/checkpoint-{stop.stopped_at} saved, training "
                               "again resumes from it")
    seconds = throughput.before + time.perf_counter() - t0  # every stretch of a resumed run together
    if not trainer.is_world_process_zero():
        return {}
    model_dir = out / "model"
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    atomic_write_json(model_dir / "rendering.json", {
        "format": "toolbench-react", "version": RENDERING_VERSION, "template": "toolllama",
        "loss_on": cfg.loss_on, "max_length": profile.data.max_length,
        "max_observation_chars": profile.data.max_observation_chars, "base_model": profile.model.name,
        "method": cfg.method})
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rows_per_step = curve.rows_per_step(args)
    summary = {"n_rows": len(rows), "dropped_too_long": too_long, "supervised_tokens": learned,
               "tokens": sum(r["length"] for r in rows), "steps": trainer.state.global_step,
               "rows_per_step": rows_per_step,
               "final_loss": losses[-1] if losses else math.nan, "train_loss": result.training_loss,
               "train_seconds": seconds, "train_seconds_before_resume": throughput.before,
               "resumed_from": resume, "world_size": trainer.args.world_size,
               "supervised_tokens_per_s": trainer.state.global_step * rows_per_step * throughput.learned_per_row
               / seconds if seconds else None,
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "precision": precision, "precision_reason": why, "allocator": memory.allocator(), "model_dir": str(model_dir),
               # the process that trained: a notebook kernel of its own, or the CLI (a reuse keeps this record)
               **memory.peak(since_reset=False)}
    atomic_write_text(model_dir / "README.md", model_card(profile, summary))
    atomic_write_json(summary_path, summary)
    return summary
