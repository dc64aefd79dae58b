import os

import pytest

from bench.tiny import FIXTURES, make_tiny_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DeepSpeed compiles one small op on first use (~70 s): compile it once for the whole suite.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(ROOT, ".cache", "torch_extensions"))
# The tests never reach the hub: the scripts' hub path fails at once instead of retrying for a minute.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REAL_GLUE = os.path.abspath(os.environ.get("GLUE_DIR", os.path.join(ROOT, "..", "shared", "glue")))


@pytest.fixture(scope="session")
def glue_dir():
    """GLUE's file formats with a few made-up rows per task (tests/data/glue): always there."""
    return FIXTURES


@pytest.fixture(scope="session")
def real_glue():
    """The real GLUE TSV files (../shared/glue, or $GLUE_DIR). Under CI=true they must be there."""
    if not os.path.isfile(os.path.join(REAL_GLUE, "RTE", "dev.tsv")):
        message = (
            f"the real GLUE files are not at {REAL_GLUE}: set GLUE_DIR to a folder in GLUE's TSV layout "
            "(GLUE's files from gluebenchmark.com, unpacked; or ../shared/glue beside the repository)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)  # a newcomer's clone: these tests need data the repository cannot ship
    return REAL_GLUE


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    return make_tiny_gpt2(str(tmp_path_factory.mktemp("tiny_gpt2")))
