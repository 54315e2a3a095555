import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("SLMLIB_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert DATA_ROOT.is_dir(), f"the shared data folder is expected at {DATA_ROOT}"
    return DATA_ROOT


@pytest.fixture(scope="session")
def tiny():
    from slmlib import models
    return models.load("tiny-opt")


@pytest.fixture(scope="session")
def smol_tokenizer():
    from slmlib import models
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke profile's whole pipeline, run once for every test that reads an executed run."""
    from slmlib import pipeline
    return pipeline.run_profile(REPO / "params" / "smoke.yaml", run_id="smoke-test", output_root=tmp_path_factory.mktemp("outputs"))
