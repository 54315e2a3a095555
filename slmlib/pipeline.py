"""``make run``: execute the numbered notebooks of a profile, in order, with papermill.

Each notebook gets two parameters, ``PROFILE`` (the YAML file) and ``RUN_DIR``, and hands its
results to the next only through files in ``outputs/<run-id>/``. A failing notebook stops the
chain; its executed copy stays in the run folder and the error names it and the failing cell.
"""
from __future__ import annotations

from pathlib import Path

from slmlib import config, data
from slmlib.config import REPO
from slmlib.run import RunDir, new_run_id

NOTEBOOKS = REPO / "notebooks"


class NotebookFailed(RuntimeError):
    pass


def notebooks(profile: config.Profile) -> list[Path]:
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not profile.notebooks:
        return found
    by_stem = {p.stem: p for p in found}
    unknown = [s for s in profile.notebooks if s not in by_stem]
    if unknown:
        raise config.ConfigError(f"profile {profile.name}: no notebook {unknown[0]!r} (have {sorted(by_stem)})")
    return [by_stem[s] for s in profile.notebooks]


def run_profile(params: str | Path, run_id: str | None = None, overwrite: bool = False,
                output_root: str | Path = REPO / "outputs") -> Path:
    import papermill as pm

    params = Path(params).resolve()
    profile = config.load(params)  # fails on typos before anything runs
    missing = data.check_sources(profile.data.required, profile.data.optional, profile.data.root)
    run = RunDir(output_root, run_id or new_run_id(profile.name))
    chain = notebooks(profile)
    run.start(profile.to_dict(), profile.seed, overwrite=overwrite,
              extra={"profile_file": str(params), "notebooks": [p.stem for p in chain],
                     "missing_optional_sources": missing})
    for nb in chain:
        out = run.path / nb.name
        try:
            pm.execute_notebook(str(nb), str(out), parameters={"PROFILE": str(params), "RUN_DIR": str(run.path.resolve())},
                                cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            raise NotebookFailed(f"{nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                                 f"the executed notebook is {out}") from None
    run.finish()
    return run.path
