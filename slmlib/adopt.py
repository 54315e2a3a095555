"""``make run TRAINED=<run-id>``: a new run takes the finished training of an earlier one instead of training again.

Only an identical training is taken: the earlier run's manifest must hold the same ``model``, ``train`` and
``seed`` parameters (checked before any notebook runs), and its ``data/train.jsonl`` must be byte for byte the
file this run prepared (checked when ``02_fine_tuning`` adopts it). So a profile that evaluates more, or other
tasks, after the same training (``params/round-two.yaml`` after ``cpu-long``) does not spend the hours again,
and what it reports is still what its own command would have trained. The weights, snapshots and logs are
hard-linked where the file system allows (copied elsewhere); the checkpoints stay behind; the earlier run is
not changed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from slmlib.assets import sha256_file
from slmlib.run import CannotResume, atomic_write_json, param_changes, read_json

TRAINING_PARAMS = ("model", "train", "seed")


class CannotAdopt(CannotResume):
    pass


def check(source: str | Path, params: dict, defaults: dict) -> Path:
    """The earlier run's folder, once it is known to hold a finished training with these parameters."""
    source = Path(source)
    manifest = source / "run_manifest.json"
    if not manifest.is_file():
        raise CannotAdopt(f"{source}: no run to take a training from (no run_manifest.json)")
    if not (source / "train" / "train_summary.json").is_file():
        raise CannotAdopt(f"{source} has not finished its training (no train/train_summary.json); resume it first")
    stored = read_json(manifest).get("params", {})
    changed = param_changes({k: stored.get(k) for k in TRAINING_PARAMS}, {k: params[k] for k in TRAINING_PARAMS},
                            {k: defaults[k] for k in TRAINING_PARAMS})
    if changed:
        raise CannotAdopt(f"{source} trained with other parameters ({', '.join(changed)}); only an identical training "
                          "is taken")
    return source.resolve()


def adopt(source: str | Path, train_file: str | Path, out_dir: str | Path) -> dict:
    """Bring the earlier run's training into ``out_dir`` (``<run>/train``) and return its summary, which records
    where it came from; the training data must be the file this run prepared, ``train_file``."""
    source, out = Path(source), Path(out_dir)
    theirs = source / "data" / "train.jsonl"
    if not theirs.is_file() or sha256_file(theirs) != sha256_file(Path(train_file)):
        raise CannotAdopt(f"{source} trained on other data than this run's {train_file} (the files differ); "
                          "only an identical training is taken")
    if out.exists():
        raise CannotAdopt(f"{out} already holds a training of this run's own; it is not replaced")
    partial = out.with_name(f".{out.name}.adopting")
    shutil.rmtree(partial, ignore_errors=True)
    for path in sorted((source / "train").rglob("*")):
        rel = path.relative_to(source / "train")
        if path.is_dir() or rel.parts[0] == "checkpoints":
            continue  # checkpoints resume a training; this one is finished
        target = partial / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)  # nothing in a finished training is written again, so the two runs may share it
        except OSError:
            shutil.copy2(path, target)
    summary = read_json(partial / "train_summary.json") | {"model_dir": str(out / "model"), "adopted_from": str(source)}
    (partial / "train_summary.json").unlink()  # a link to the earlier run's file: replaced, not written through
    atomic_write_json(partial / "train_summary.json", summary)
    partial.rename(out)  # whole or not at all: an adoption cut short leaves only the partial folder, redone next time
    return summary
