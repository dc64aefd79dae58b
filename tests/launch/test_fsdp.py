"""Every script and variant of the support table under FSDP2 (accelerate_configs/fsdp.yaml), in
fp32 and bf16, on 2 CPU processes: the cell trains as bench/results/support.json records, saves
only the trainable weights, whole; a run resumed from its middle checkpoint, whose first event is then an evaluation,
ends bitwise equal;
and predict.load_run rebuilds the model from the folder alone, to the run's eval logits."""

import pytest

from bench.support import ROWS, run_cell
from tests.helpers import check_load_trained, check_same_run
from tests.launch.test_matrix import recorded

CELLS = [(row, config) for row in ROWS for config in ("fsdp", "fsdp_bf16")]


@pytest.mark.slow
@pytest.mark.parametrize("row,config", CELLS)
def test_fsdp_cell_trains_resumes_bitwise_and_reloads(row, config, tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    saving = ["--checkpointing_steps", "2", "--eval_steps", "3"]  # resumed at 2: step 3, then an evaluation
    outcome = run_cell(row, config, tiny_gpt2, glue_dir, str(whole), saving)
    assert outcome == {"ok": True, "steps": 4}, outcome  # 64 rows, batch 8, 2 processes
    assert recorded()[f"{row}/{config}"]["ok"], "rerun python bench/support.py"
    middle = str(whole / "checkpoints" / "step_2")
    again = run_cell(row, config, tiny_gpt2, glue_dir, str(resumed), [*saving, "--resume_from_checkpoint", middle])
    assert again == outcome, again
    a, saved = check_same_run(whole, resumed)
    assert sum(t.numel() for t in saved.values()) == a["trainable_params"]  # whole, and nothing else
    check_load_trained(whole, tiny_gpt2, glue_dir, 5e-2 if "bf16" in config else 1e-5)
