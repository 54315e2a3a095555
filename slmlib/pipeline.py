"""``make run``: execute the numbered notebooks of a profile, in order, with papermill.

Each notebook gets two parameters, ``PROFILE`` (the YAML file) and ``RUN_DIR``, and hands its
results to the next only through files in ``outputs/<run-id>/``. A failing notebook stops the
chain; its executed copy stays in the run folder and the error names it and the failing cell.
``resume`` continues an interrupted run from its first notebook that did not finish; inside it,
training restarts from its last checkpoint and evaluation skips the tasks already rolled out.
``rerun_from`` re-executes a run, finished or not, from a named notebook on: after a change to
the judge or the analysis, ``03_evaluation`` judges the stored episodes again without rolling
them out, and the later notebooks redraw from them.
"""
from __future__ import annotations

import logging
from itertools import takewhile
from pathlib import Path

import nbformat

from slmlib import adopt, config, data, deadline
from slmlib.config import REPO
from slmlib.run import CannotResume, RunDir, new_run_id

NOTEBOOKS = REPO / "notebooks"
log = logging.getLogger(__name__)


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


def notebook_seconds(path: Path) -> float | None:
    """Wall time papermill recorded for an executed notebook."""
    return nbformat.read(path, as_version=4).metadata.get("papermill", {}).get("duration")


def executed(path: Path) -> bool:
    """Whether papermill ran this notebook to its end without an error. A killed run leaves no end time; one
    interrupted (Ctrl-C) gets an end time and no exception, and only its cells show it: the interrupted one holds
    the error, the ones after it never ran."""
    if not path.is_file():
        return False
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]  # an empty cell is never executed
    ran = all(c.get("execution_count") is not None for c in code)
    failed = any(o.output_type == "error" for c in code for o in c.get("outputs", []))
    return meta.get("end_time") is not None and not meta.get("exception") and ran and not failed


def run_profile(params: str | Path, run_id: str | None = None, overwrite: bool = False,
                output_root: str | Path = REPO / "outputs", resume: bool = False,
                rerun_from: str | None = None, trained_from: str | Path | None = None,
                evals_from: str | Path | None = None) -> Path:
    """Execute a profile's notebooks into ``<output_root>/<run_id>``; ``resume`` continues that unfinished run,
    ``rerun_from`` re-executes that run from the named notebook on; a new run with ``trained_from`` takes that
    run's identical training instead of training (:mod:`slmlib.adopt`); a run, new or resumed, with ``evals_from``
    takes that run's or results export's identical evaluations (:func:`slmlib.evaluate.take_earlier`), recorded in its
    manifest."""
    import papermill as pm

    resume = resume or rerun_from is not None
    if resume and (run_id is None or overwrite or trained_from is not None):
        raise ValueError("resume continues one named run with the training it began with: give its run id, "
                         "and no overwrite or training to take")
    params = Path(params).resolve()
    profile = config.load(params)  # fails on typos before anything runs
    missing = data.check_sources(profile.data.required, profile.data.optional, profile.data.root)
    run = RunDir(output_root, run_id or new_run_id(profile.name))
    if evals_from is not None:
        evals_from = Path(evals_from).resolve()
        why = ("this run itself" if evals_from == run.path.resolve()  # a run, or a results export that carries its evaluations
               else None if any((evals_from / f).is_file() for f in ("run_manifest.json", "metrics.json"))
               else "neither a run_manifest.json nor an export's metrics.json there")
        if why:
            raise CannotResume(f"{evals_from}: no other run or export to take evaluations from ({why})")
    chain = notebooks(profile)
    defaults = config.Profile(profile.name).to_dict()  # for options added after a resumed run started
    stems = [p.stem for p in chain]
    # the notebooks at the head of the chain that ran to their end; the first one that did not is where a resume starts
    done = len(list(takewhile(lambda s: executed(run.path / f"{s}.ipynb"), stems))) if resume else 0
    if rerun_from is not None:
        if rerun_from not in stems:
            raise ValueError(f"no notebook {rerun_from!r} in this profile's chain {stems}")
        start = stems.index(rerun_from)
        if done < start:
            raise CannotResume(f"{run.path}: {stems[done]} has not run to its end; resume the run instead")
        replaced = {s: notebook_seconds(run.path / f"{s}.ipynb") for s in stems[start:] if executed(run.path / f"{s}.ipynb")}
        run.resume(profile.to_dict(), rerun=True, defaults=defaults, rerun_from=rerun_from, replaced_seconds=replaced)
    elif resume:
        start = done
        run.resume(profile.to_dict(), defaults=defaults)
    else:
        start = 0
        adopted = {"trained_from": str(adopt.check(trained_from, profile.to_dict(), defaults))} if trained_from else {}
        run.start(profile.to_dict(), profile.seed, overwrite=overwrite,
                  extra={"profile_file": str(params), "notebooks": stems,
                         "missing_optional_sources": missing, **adopted})
    if evals_from is not None:
        run.update_manifest(evals_from=str(evals_from))
    if start:
        log.info("kept %s: already ran to their end", ", ".join(stems[:start]))
    stop_by = deadline.from_env()  # the kernels inherit it: training and evaluation stop by it too
    resume_with = f"resume with: make run PROFILE={profile.name} RESUME={run.path.name}"
    for nb in chain[start:]:  # every notebook after the first rerun reads its fresh outputs, so it reruns too
        if deadline.passed(stop_by):
            raise deadline.Stopped(f"{run.path.name}: the time to stop by ({deadline.show(stop_by)}) came before "
                                   f"{nb.stem}; {resume_with}")
        out = run.path / nb.name
        try:
            pm.execute_notebook(str(nb), str(out), parameters={"PROFILE": str(params), "RUN_DIR": str(run.path.resolve())},
                                cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            if e.ename == deadline.Stopped.__name__:
                raise deadline.Stopped(f"{run.path.name}: {nb.stem}: {e.evalue}; {resume_with}") from None
            raise NotebookFailed(f"{nb.name} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                                 f"the executed notebook is {out}") from None
    run.finish()
    return run.path
