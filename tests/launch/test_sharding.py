"""ZeRO-3 and FSDP2 really split the weights in the tests' runs (a tiny model could stay whole on
every rank and make every sharded test vacuous), whatever folder the launch starts from."""

import json
import math

import pytest

from tests.helpers import check_ok, launch


def probe(config, model_dir, tmp_path, *extra):
    args = ["--task", "sst2", "--model_name_or_path", model_dir, "--output_dir", str(tmp_path), *extra]
    proc = launch("tests/launch/shard_probe.py", config, args, cwd=tmp_path)
    check_ok(proc)
    found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert found["world"] == 2
    matrices = {n: f for n, f in found["params"].items() if f["full"] >= 32 * 32}
    assert len(matrices) >= 8  # embeddings, attention and MLP weights of both layers
    return found, matrices


def test_zero3_really_partitions_the_weights_from_any_folder(tiny_gpt2, tmp_path):
    """Launched from another folder than the repository: the yaml's relative path to its
    DeepSpeed JSON is found all the same."""
    found, matrices = probe("zero3", tiny_gpt2, tmp_path, "--ddp_timeout", "1234")
    assert found["timeout_s"] == 1234  # --ddp_timeout reaches DeepSpeed's process group
    for name, f in matrices.items():
        assert f["local"] <= math.ceil(f["full"] / 2), name  # each rank holds half
        assert f["shape"] == [0], name  # not readable outside a forward pass


@pytest.mark.slow
def test_fsdp_shards_every_block_on_the_cpu(tiny_gpt2, tmp_path):
    """accelerate sets FSDP up only on GPUs; on the CPU common.loop.fsdp_over_gloo makes the same
    fully_shard calls over gloo: each block its own group, as are the input embedding and the
    final norm (accelerate's layout), the rest (the head) in the root."""
    found, matrices = probe("fsdp", tiny_gpt2, tmp_path)
    assert found["distributed_type"] == "DistributedType.FSDP"
    assert found["sharded_modules"] == [
        "",
        "transformer.wte",
        "transformer.h.0",
        "transformer.h.1",
        "transformer.ln_f",
    ]
    for name, f in matrices.items():
        rows = f["full"] // math.prod(f["shape"][1:])
        assert f["shape"][0] == math.ceil(rows / 2), name  # half the rows on each rank


@pytest.mark.slow
def test_ddp_timeout_reaches_the_process_group(tiny_gpt2, tmp_path):
    found, _ = probe("ddp", tiny_gpt2, tmp_path, "--ddp_timeout", "4321")
    assert found["timeout_s"] == 4321
    found, _ = probe("ddp", tiny_gpt2, tmp_path)
    assert found["timeout_s"] == 1800  # the default, as the transformers Trainer's
