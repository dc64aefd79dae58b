import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(__file__))
# DeepSpeed compiles one small op on first use (~70 s): compile it once for the whole suite.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".cache", "torch_extensions"))

from tiny import GLUE_DIR, make_tiny_gpt2  # noqa: E402


@pytest.fixture(scope="session")
def glue_dir():
    """The real GLUE TSV files (../shared/glue, or $GLUE_DIR). Missing data is a failure, not a skip."""
    if not os.path.isfile(os.path.join(GLUE_DIR, "RTE", "dev.tsv")):
        pytest.fail(f"GLUE data not found at {GLUE_DIR}; set GLUE_DIR or place ../shared/glue beside the repo")
    return os.path.abspath(GLUE_DIR)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, glue_dir):
    return make_tiny_gpt2(str(tmp_path_factory.mktemp("tiny_gpt2")))
