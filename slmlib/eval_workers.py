"""Episodes rolled out (or gold trajectories predicted step by step) by several worker processes, each with its own
model and its share of the cores.

One episode at a time is bound by memory traffic and per-call overhead more than by arithmetic, so on a
CPU two one-thread processes finish more episodes per hour than one two-thread process (measured with
``bench workers``). Tasks are handed out one at a time as workers free up (a search's tasks differ
tenfold in cost), and every record comes back to the parent, the only writer of ``predictions.jsonl``.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import pickle
import queue
import traceback
from typing import Any, Iterable, Iterator

from slmlib import agents, envs, memory, rollout
from slmlib.config import SearchConfig


@dataclasses.dataclass(frozen=True)
class Work(abc.ABC):
    """What a process needs to evaluate: the model to load and how to decode; ``records`` says what it does."""
    model: str
    adapter: str | None
    dtype: str
    dec: rollout.Decoding
    batch_size: int

    @abc.abstractmethod
    def records(self, mdl, tok, dec: rollout.Decoding, tasks: Iterable[dict]) -> Iterator[dict]:
        """One record per task, in the order the tasks end."""

    def play(self, tasks: Iterable[dict], peak: dict[str, Any]) -> Iterator[dict]:
        """Each task's record as it ends; ``peak`` gets the memory peak of the model and its work."""
        from slmlib.evaluate import context_window, load_model
        fresh = memory.reset_peak()
        mdl, tok = load_model(self.model, self.adapter, self.dtype)
        yield from self.records(mdl, tok, dataclasses.replace(self.dec, max_context=context_window(mdl)), tasks)
        peak |= memory.peak(fresh)


@dataclasses.dataclass(frozen=True)
class Rollout(Work):
    """Episodes: the model played by an agent in an environment."""
    agent: str
    search: SearchConfig
    env: str
    url: str | None

    def records(self, mdl, tok, dec, tasks):
        return agents.run(self.agent, rollout.model_policy(mdl, tok, dec), tasks, envs.make(self.env, self.url),
                          dec, self.batch_size, rollout.reuses_prefix(mdl, dec, self.batch_size), self.search)


@dataclasses.dataclass(frozen=True)
class TeacherForced(Work):
    """Step mode: each gold trajectory's next steps predicted with the gold history given."""

    def records(self, mdl, tok, dec, tasks):
        from slmlib.evaluate import step_records
        return step_records(mdl, tok, tasks, dec, self.batch_size)


def threads_each(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


def _work(spec: Work, threads: int, todo: Any, done: Any) -> None:
    """A worker: its tasks from ``todo`` until a None, each record into ``done``, then its peak memory."""
    import torch
    torch.set_num_threads(threads)
    try:
        peak: dict[str, Any] = {}
        for record in spec.play(iter(todo.get, None), peak):  # a task taken only when this worker has room for it
            done.put(("record", record))
        done.put(("done", peak))
    except BaseException as e:  # the parent raises it (a user's mistake stays one), with this worker's traceback
        try:
            pickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        done.put(("error", (e, traceback.format_exc())))


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker, as the cause of the same exception in the parent."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def play(spec: Work, tasks: list[dict], workers: int, peak: dict[str, Any]) -> Iterator[dict]:
    """Each task's record as some worker ends it; ``peak`` gets the workers' summed peak memory (they run at once).
    One worker is this process itself."""
    if workers == 1:
        yield from spec.play(tasks, peak)
        return
    import multiprocessing
    from slmlib import models
    models.resolve(spec.model)  # an embedded model built here once, not by every worker at the same time
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or CUDA state
    todo, done = ctx.Queue(), ctx.Queue()
    for item in [*tasks, *[None] * workers]:
        todo.put(item)
    threads = threads_each(workers)
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a spawned process starts with the parent's environment as it is at start()
    procs = [ctx.Process(target=_work, args=(spec, threads, todo, done), daemon=True) for _ in range(workers)]
    try:
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    peaks: list[dict[str, Any]] = []
    try:
        while len(peaks) < workers:
            try:
                kind, payload = done.get(timeout=5)
            except queue.Empty:  # a worker killed (out of memory) reports nothing: its exit code says it
                ended = [p.exitcode for p in procs if p.exitcode is not None]
                if any(ended) or len(ended) == workers:
                    raise RuntimeError(f"an evaluation worker ended without its episodes (exit codes {ended}); "
                                       "the episodes already written are kept, a rerun resumes after them") from None
                continue
            if kind == "error":
                error, trace = payload
                raise error from WorkerTraceback(trace)
            if kind == "done":
                peaks.append(payload)
            else:
                yield payload
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    peak |= {"peak_rss_gb": round(sum(p["peak_rss_gb"] for p in peaks), 3),
             "peak_rss_is_process_peak": any(p["peak_rss_is_process_peak"] for p in peaks)}
    if all("peak_gpu_gb" in p for p in peaks):
        peak["peak_gpu_gb"] = round(sum(p["peak_gpu_gb"] for p in peaks), 3)
