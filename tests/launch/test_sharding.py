"""ZeRO-3 really splits the weights in the tests' runs (a tiny model could stay whole on every
rank and make every ZeRO-3 test vacuous), whatever folder the launch starts from."""

import json
import math

from tests.helpers import check_ok, launch


def test_zero3_really_partitions_the_weights_from_any_folder(tiny_gpt2, tmp_path):
    """Launched from another folder than the repository: the yaml's relative path to its
    DeepSpeed JSON is found all the same."""
    args = ["--task", "sst2", "--model_name_or_path", tiny_gpt2, "--output_dir", str(tmp_path)]
    proc = launch("tests/launch/zero3_probe.py", "zero3", args, cwd=tmp_path)
    check_ok(proc)
    probe = json.loads(
        next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:]
    )
    assert probe["world"] == 2
    matrices = {n: f for n, f in probe["params"].items() if f["full"] >= 32 * 32}
    assert len(matrices) >= 8  # embeddings, attention and MLP weights of both layers
    for name, f in matrices.items():
        assert f["shape"] == [0], name  # not readable outside a forward pass
        assert f["local"] <= math.ceil(f["full"] / 2), name  # each rank holds half
