import json

import nbformat
import pytest

from slmlib import pipeline
from slmlib.run import RunExists, read_json

from conftest import REPO


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    return pipeline.run_profile(REPO / "params" / "smoke.yaml", run_id="smoke-test", output_root=root)


@pytest.mark.notebooks
def test_smoke_run_executes_every_notebook(smoke_run):
    manifest = read_json(smoke_run / "run_manifest.json")
    assert manifest["finished_at"] and manifest["params"]["model"]["name"] == "tiny-opt"
    assert manifest["notebooks"] == [p.stem for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    for stem in manifest["notebooks"]:
        nb = nbformat.read(smoke_run / f"{stem}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.notebooks
def test_data_exploration_metrics(smoke_run):
    m = json.loads((smoke_run / "metrics.json").read_text())["data"]
    assert 10 <= m["n_train"] <= 80 and m["test_sets"] == {"complexfuncbench": 8, "stabletoolbench": 24}
    assert m["tokens_after"] > 0 and m["missing_optional_sources"] == []
    assert (smoke_run / "token_lengths.png").stat().st_size > 10_000
    assert (smoke_run / "data" / "train.jsonl").is_file()


@pytest.mark.notebooks
def test_finished_run_is_not_overwritten(smoke_run):
    with pytest.raises(RunExists):
        pipeline.run_profile(REPO / "params" / "smoke.yaml", run_id=smoke_run.name, output_root=smoke_run.parent)


def test_source_notebooks_are_committed_without_outputs():
    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "PROFILE" in tagged[0].source and "RUN_DIR" in tagged[0].source
