"""StableToolBench solvable queries (765 in six groups) as tasks with ``relevant_tools``.

The query files have ToolBench's query layout, so :func:`slmlib.data.toolbench.query_to_task`
does the work; the group is the file's stem (``G1_instruction`` ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from slmlib.data.toolbench import query_file_tasks

GROUPS = ("G1_instruction", "G1_category", "G1_tool", "G2_instruction", "G2_category", "G3_instruction")
QUERY_DIR = Path("stabletoolbench/solvable_queries/test_instruction")


def query_dir(path: str | Path) -> Path:
    """Accept the data root, the StableToolBench folder or the query folder itself."""
    path = Path(path)
    for candidate in (path / QUERY_DIR, path / QUERY_DIR.relative_to("stabletoolbench"), path):
        if all((candidate / f"{g}.json").is_file() for g in GROUPS):
            return candidate
    raise FileNotFoundError(f"{path}: no StableToolBench query files ({', '.join(GROUPS)}.json) found there")


def tasks(path: str | Path, groups: tuple[str, ...] = GROUPS, on_error=None) -> Iterator[dict]:
    folder = query_dir(path)
    for group in groups:
        for task in query_file_tasks(folder / f"{group}.json", group, on_error):
            task["source"] = "stabletoolbench"
            yield task
