"""``python -m slmlib data fetch NAME``: download a GitHub-hosted source at its pinned commit.

Only where the machine is online; offline machines read the sources from a data root.
"""
from __future__ import annotations

import io
import tarfile
import urllib.request
from pathlib import Path

from slmlib.data import ORIGINS

ARCHIVE = "https://codeload.github.com/{repo}/tar.gz/{commit}"


def fetch(folder: str, root: str | Path, timeout: float = 120) -> Path:
    """Unpack the pinned paths of ``folder``'s repository into ``root/folder``; returns that folder."""
    if folder not in ORIGINS:
        raise ValueError(f"unknown source folder {folder!r}; known: {', '.join(ORIGINS)}")
    repo, commit, paths = ORIGINS[folder]
    url = ARCHIVE.format(repo=repo, commit=commit)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            blob = resp.read()
    except OSError as e:
        raise ConnectionError(f"could not download {repo}@{commit[:7]} ({e}); this needs the network") from e
    target = Path(root) / folder
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            inner = m.name.split("/", 1)[1] if "/" in m.name else ""
            if m.isfile() and any(inner == p or inner.startswith(p.rstrip("/") + "/") for p in paths):
                dest = target / inner.removeprefix("api-bank/")  # API-Bank lives one folder down in its repository
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    (target / "SOURCE.txt").write_text(f"origin: GitHub {repo}\ncommit: {commit}\npaths: {', '.join(paths)}\n")
    return target
