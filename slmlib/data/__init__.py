"""Adapters from every source to the one schema (``slmlib.schema``), and a registry of them.

GitHub-hosted sources are read from a data root (tests and CI use ``../shared/data``);
ComplexFuncBench comes from PyPI and is there on any machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from slmlib.data import apibank, complexfuncbench, glaive, stabletoolbench, toolbench, toolrl


class MissingSource(FileNotFoundError):
    pass


TOOLLLAMA_FILE = "toolbench/toolllama_G123_dfs_train.json"

# name -> (path under the data root that must exist, or None; reader(root, split))
SOURCES: dict[str, tuple[str | None, Callable[[Path, str], Iterator[dict]]]] = {
    "complexfuncbench": (None, lambda root, split: complexfuncbench.tasks(split)),
    # ToolBench's released 187,542 training rows (2 GB; ToolBench's data.zip or the Hub mirror), streamed
    "toolllama": (TOOLLLAMA_FILE, lambda root, split: toolbench.row_file_tasks(root / TOOLLLAMA_FILE)),
    "toolbench": ("toolbench", lambda root, split: toolbench.answer_dir_tasks(root / "toolbench" / "data_example" / "answer")),
    "stabletoolbench": ("stabletoolbench", lambda root, split: stabletoolbench.tasks(root)),
    "glaive": ("llamafactory-toolcall-demo", lambda root, split: glaive.tasks(root)),
    "apibank": ("apibank-train", lambda root, split: apibank.tasks(root)),
    "toolrl": ("toolrl", lambda root, split: toolrl.tasks(root)),
}

# The public repositories (and pinned commits) that ``slmlib data fetch`` downloads from, where online.
ORIGINS = {
    "toolbench": ("OpenBMB/ToolBench", "d56fdd89faf8c91fa135090b212bb9057ee5cfc2", ["data_example/answer", "data_example/instruction"]),
    "stabletoolbench": ("THUNLP-MT/StableToolBench", "aa4ed9f4737ad98bd706663f01d63623c3427812", ["solvable_queries"]),
    "llamafactory-toolcall-demo": ("hiyouga/LLaMA-Factory", "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30", ["data/glaive_toolcall_en_demo.json", "data/glaive_toolcall_zh_demo.json", "data/reason_tool_use_demo_50.jsonl"]),
    "apibank-train": ("AlibabaResearch/DAMO-ConvAI", "1d76900822d9ecfcd6e9eb0ca64a073cb892b735", ["api-bank/training-data/lv3-train.json"]),
    "toolrl": ("qiancheng0/ToolRL", "8cee13ec0ca72f0461da372a93a6fd8140dbb840", ["dataset/rlla_4k_raw/rlla_sft.json"]),
}


def available(name: str, root: str | Path) -> bool:
    path, _ = SOURCES[name]
    return path is None or (Path(root) / path).exists()


def check_sources(required: list[str], optional: list[str], root: str | Path) -> list[str]:
    """Fail on a missing required source (naming the command that fetches it); return missing optional ones."""
    unknown = [s for s in [*required, *optional] if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source {unknown[0]!r}; known: {', '.join(SOURCES)}")
    for name in required:
        if not available(name, root):
            how = (f"download {TOOLLLAMA_FILE.split('/')[-1]} from ToolBench's data.zip or the Hub mirror "
                   f"{toolbench.HUB_DATASET} into {Path(root) / 'toolbench'}" if name == "toolllama"
                   else f"fetch it where online with: python -m slmlib data fetch {SOURCES[name][0]} --root {root}")
            raise MissingSource(f"required source {name!r} is not under {root} ({how})")
    return [name for name in optional if not available(name, root)]


def load(name: str, root: str | Path, split: str = "train") -> Iterator[dict]:
    """Tasks of one source: ``split`` matters for ComplexFuncBench (train trajectories / test tasks)."""
    if not available(name, root):
        raise MissingSource(f"source {name!r} is not under {root}")
    return SOURCES[name][1](Path(root), split)
