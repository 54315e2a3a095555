"""Peak memory of one stage of a long-lived process (a notebook kernel evaluates several models).

``ru_maxrss`` only ever grows, so a stage's own peak needs the high-water mark reset first:
Linux does that with ``5`` written to ``/proc/self/clear_refs``; elsewhere the process peak is
reported and flagged as such.
"""
from __future__ import annotations

import glob
import os
import resource
from pathlib import Path

TCMALLOC_GLOB = "/usr/lib/*/libtcmalloc_minimal.so.4"  # Debian's libtcmalloc-minimal4; the Makefile preloads it too


def tcmalloc() -> str | None:
    """The tcmalloc library to preload, where installed. glibc's malloc hands every tensor over 32 MB back to the
    kernel when it is freed and faults it in again at the next step; tcmalloc keeps such memory for reuse."""
    found = sorted(glob.glob(TCMALLOC_GLOB))
    return found[0] if found else None


def allocator() -> str:
    """``tcmalloc`` when this process runs with it preloaded, else ``glibc``."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"


def reset_peak() -> bool:
    """Start a new peak; False when only the process-wide peak can be read."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    status = Path("/proc/self/status")
    line = next((line for line in status.read_text().splitlines() if line.startswith(field + ":")), None) if status.is_file() else None
    return int(line.split()[1]) if line else None


def rss_now() -> dict[str, float]:
    """This process's resident memory now and its peak so far, in GB (``ru_maxrss`` where there is no /proc)."""
    peak_kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_gb": round((_status_kb("VmRSS") or peak_kb) / 1e6, 3), "peak_rss_gb": round(peak_kb / 1e6, 3)}


def peak(since_reset: bool) -> dict[str, float | bool]:
    """``peak_rss_gb`` (and ``peak_gpu_gb`` on a GPU) since :func:`reset_peak`."""
    import torch
    kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, float | bool] = {"peak_rss_gb": round(kb / 1e6, 3), "peak_rss_is_process_peak": not since_reset}
    if torch.cuda.is_available():
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return out
