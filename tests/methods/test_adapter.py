"""train_adapter.py: the starting state, the parameter counts, and the script in this process and
under every launch config (single and ZeRO-3 in the default suite, the others with -m slow).
(Equality with AdapterHub at the same weights: tests/test_references.py.)"""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from bench import tiny
from common.models import freeze_backbone
from predict import load_trainable
from tests.helpers import (
    check_load_trained,
    check_ok,
    eval_batches,
    evaluations,
    launch,
    logits_of,
    results,
    run_in_process,
    saved_eval_logits,
)
from train_adapter import add_adapters, parse_args

IDS = torch.tensor([[5, 17, 42, 9, 3, 8], [7, 8, 9, 10, 11, 12]])


def test_default_clipping_by_variant(tmp_path, monkeypatch):
    """Houlsby trains unclipped by default (clipped at 1.0 SmolLM2 predicted one class), Pfeiffer clipped at 1.0,
    both at 1e-3; a value on the command line wins over both."""
    monkeypatch.chdir(tmp_path)
    houlsby, pfeiffer = parse_args(["--task", "sst2"]), parse_args(["--task", "sst2", "--variant", "pfeiffer"])
    assert (houlsby.max_grad_norm, houlsby.learning_rate) == (0.0, 1e-3)
    assert (pfeiffer.max_grad_norm, pfeiffer.learning_rate) == (1.0, 1e-3)
    assert parse_args(["--task", "sst2", "--max_grad_norm", "0.5"]).max_grad_norm == 0.5
    assert parse_args(["--task", "sst2", "--variant", "pfeiffer", "--max_grad_norm", "0"]).max_grad_norm == 0.0


def test_help_says_how_the_variant_picks_the_clipping(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert (
        "--max_grad_norm MAX_GRAD_NORM clip the gradients' norm to this; 0: no clipping; none: 0 for houlsby, 1.0"
        in text
    )


def tiny_model(kind):
    return tiny.gpt2(d=64) if kind == "gpt2" else tiny.bert(d=64)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_fresh_adapter_is_near_identity_and_zero_up_is_exact(kind, variant):
    base, model = tiny_model(kind), tiny_model(kind)
    add_adapters(model, variant, 4, train_layer_norms=False)
    with torch.no_grad():
        ref, fresh = base(input_ids=IDS).logits, model(input_ids=IDS).logits
        assert (fresh - ref).abs().max() < 1e-3
        for name, p in model.named_parameters():
            if ".adapter.up." in name:
                p.zero_()
        assert torch.equal(model(input_ids=IDS).logits, ref)


def test_counts_follow_the_formula():
    """Per adapter 2 d m + m + d; Houlsby has 2 per layer and trains the layer norms (2 d each)."""
    d, m, layers = 64, 4, 2
    for variant, per_layer in (("houlsby", 2), ("pfeiffer", 1)):
        model = tiny_model("gpt2")
        freeze_backbone(model)
        add_adapters(model, variant, m, train_layer_norms=variant == "houlsby")
        adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
        norms = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".ln_" in n)
        assert adapters == layers * per_layer * (2 * d * m + m + d)
        # ln_1, ln_2 per layer, ln_f
        assert norms == (layers * 2 * 2 * d + 2 * d if variant == "houlsby" else 0)


def test_unknown_model_type_is_a_clear_error():
    model = tiny_model("gpt2")
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="no adapter layout for model type 'mystery'"):
        add_adapters(model, "houlsby", 4)


def adapter_args(tiny_gpt2, glue_dir, out, variant):
    return [
        "--task",
        "sst2",
        "--model_name_or_path",
        tiny_gpt2,
        "--data_dir",
        glue_dir,
        "--output_dir",
        out,
        "--max_train_samples",
        "96",
        "--max_eval_samples",
        "32",
        "--num_train_epochs",
        "3",
        "--eval_steps",
        "4",
        "--learning_rate",
        "5e-3",
        "--variant",
        variant,
        "--reduction_factor",
        "4",
    ]


def check_adapter_run(out, variant, tiny_gpt2, glue_dir, atol):
    res = results(out)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    saved = load_file(out / "trainable.safetensors")
    norms = [n for n in saved if ".ln_" in n]
    assert all(".adapter." in n or n.startswith("score.") or n in norms for n in saved)
    assert bool(norms) == (variant == "houlsby")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    model.config.pad_token_id = 0
    freeze_backbone(model)
    add_adapters(model, variant, 8, train_layer_norms=variant == "houlsby", ln_before=None)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapter." in n}
    load_trainable(model, out / "trainable.safetensors")
    assert all(not torch.equal(saved[n], start[n]) for n in start)  # every adapter tensor trained
    ours = logits_of(model.eval(), eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=atol, rtol=0)
    check_load_trained(out, tiny_gpt2, glue_dir, atol)


@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_train_adapter_in_process(variant, tiny_gpt2, glue_dir, tmp_path):
    run_in_process("train_adapter.py", adapter_args(tiny_gpt2, glue_dir, tmp_path / "out", variant))
    check_adapter_run(tmp_path / "out", variant, tiny_gpt2, glue_dir, 1e-5)


SLOW = pytest.mark.slow
RUNS = [("single", "houlsby"), ("zero3", "pfeiffer")] + [
    pytest.param(c, v, marks=SLOW)
    for c, v in [
        ("ddp", "houlsby"),
        ("bf16", "houlsby"),
        ("zero1", "houlsby"),
        ("zero2", "houlsby"),
        ("zero3", "houlsby"),
        ("zero3_bf16", "houlsby"),
        ("single", "pfeiffer"),
        ("zero3_bf16", "pfeiffer"),
    ]
]


@pytest.mark.parametrize("config,variant", RUNS)
def test_train_adapter_under_every_config(config, variant, tiny_gpt2, glue_dir, tmp_path):
    check_ok(launch("train_adapter.py", config, adapter_args(tiny_gpt2, glue_dir, str(tmp_path / "out"), variant)))
    check_adapter_run(tmp_path / "out", variant, tiny_gpt2, glue_dir, 5e-2 if "bf16" in config else 1e-5)
