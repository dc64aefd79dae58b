"""What a GPU run needs and the CPU tests used not to see: the precision policy (a bf16 hub checkpoint trains as its
fp32 upcast; --base_dtype keeps the frozen weights in bf16), gradient clipping and its logged norm in every config,
gradient checkpointing with frozen inputs, the process group's timeout, the optimizer each config gets, DeepSpeed's
fp32 gradient accumulation, and few compiled shapes under --torch_compile."""

import json
import os
import re
import types

import pytest
import torch
from safetensors.torch import load_file

from bench.tiny import make_tiny_llama
from common.models import adamw
from tests.helpers import ROOT, args_for, check_ok, cli, launch, one_line, results, run_in_process

SCRIPTS = ["train_full.py", "train_lora.py", "train_prompt.py", "train_prefix.py", "train_adapter.py", "train_idpg.py"]
SELF = {"train_idpg.py": ["--encoder_name_or_path", "self"]}  # (the default encoder is the hub's gpt2)


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    """A tiny Llama saved in bfloat16, as hub decoders ship."""
    return make_tiny_llama(str(tmp_path_factory.mktemp("llama_bf16")))


def short(model_dir, glue_dir, out, *extra, steps=2):
    return args_for(model_dir, glue_dir, out, "--max_train_steps", str(steps), "--logging_steps", "1", *extra)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bf16_checkpoint_trains_in_fp32(script, bf16_llama, glue_dir, tmp_path):
    """transformers loads a checkpoint in its saved dtype; the trainable weights, and so AdamW's state, would be bf16.
    They train as the fp32 upcast, and results.json says so."""
    assert {t.dtype for t in load_file(os.path.join(bf16_llama, "model.safetensors")).values()} == {torch.bfloat16}
    run_in_process(script, short(bf16_llama, glue_dir, tmp_path / "out", *SELF.get(script, [])))
    saved = load_file(tmp_path / "out" / "trainable.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    precision = results(tmp_path / "out")["precision"]
    assert precision["trainable"] == ["float32"] and precision["optimizer_state"] == ["float32"]
    assert precision["frozen"] in ([], ["float32"]) and precision["mixed_precision"] == "no"


def test_base_dtype_keeps_the_frozen_weights_in_bf16(bf16_llama, glue_dir, tmp_path, monkeypatch):
    flags = short(bf16_llama, glue_dir, tmp_path / "a", "--base_dtype", "bfloat16")
    message = one_line(*cli("train_lora.py", flags))
    assert "--base_dtype bfloat16 computes under mixed precision" in message and "--mixed_precision bf16" in message
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as accelerate launch --mixed_precision bf16 sets it
    run_in_process("train_lora.py", flags)
    precision = results(tmp_path / "a")["precision"]
    assert precision == {
        "trainable": ["float32"],
        "frozen": ["bfloat16"],
        "optimizer_state": ["float32"],
        "mixed_precision": "bf16",
    }
    assert {t.dtype for t in load_file(tmp_path / "a" / "trainable.safetensors").values()} == {torch.float32}


def test_clipping_bounds_the_update_and_logs_the_norm(tiny_gpt2, glue_dir, tmp_path):
    """With a huge AdamW epsilon the first update is the gradient times lr / eps, so clipping the gradient's norm to
    1e-6 shrinks the weights' change in proportion. The norm before clipping is logged at every logging step (the
    same whatever the bound); with --max_grad_norm 0 there is no clipping and no norm."""
    start = load_file(os.path.join(tiny_gpt2, "model.safetensors"))["h.0.attn.c_attn.weight"]
    change, logs = {}, {}
    for name, clip in (("free", ["--max_grad_norm", "0"]), ("clipped", ["--max_grad_norm", "1e-6"]), ("default", [])):
        flags = short(tiny_gpt2, glue_dir, tmp_path / name, "--adam_epsilon", "1e3", "--learning_rate", "1", *clip)
        run_in_process("train_full.py", flags + ["--max_train_steps", "1"])
        after = load_file(tmp_path / name / "trainable.safetensors")["transformer.h.0.attn.c_attn.weight"]
        change[name], logs[name] = (after - start).norm().item(), results(tmp_path / name)["log_history"]
    assert "grad_norm" not in logs["free"][0]
    norm = logs["clipped"][0]["grad_norm"]
    assert norm > 1e-2 and norm == pytest.approx(logs["default"][0]["grad_norm"], rel=1e-6)
    assert change["free"] > 0 and change["clipped"] < 1e-3 * change["free"]
    assert json.load(open(tmp_path / "default" / "args.json"))["max_grad_norm"] == 1.0


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "train_prefix.py"])
def test_gradient_checkpointing_gives_the_same_run(script, tiny_gpt2, glue_dir, tmp_path):
    """Non-reentrant checkpointing with frozen inputs: the same losses, norms and trained weights (dropout is on in
    the tiny GPT-2: the recomputation replays its masks)."""
    extra = SELF.get(script, []) + (["--prompt_layers", "all"] if script == "train_idpg.py" else [])
    extra += ["--max_grad_norm", "1"]  # (prompt tuning and Houlsby clip by default not at all)
    for name, switch in (("plain", []), ("checkpointed", ["--gradient_checkpointing"])):
        run_in_process(script, short(tiny_gpt2, glue_dir, tmp_path / name, *extra, *switch, steps=3))
    a, b = results(tmp_path / "plain"), results(tmp_path / "checkpointed")
    losses = [[h.get("loss"), h.get("grad_norm")] for h in a["log_history"] if "loss" in h]
    again = [[h.get("loss"), h.get("grad_norm")] for h in b["log_history"] if "loss" in h]
    torch.testing.assert_close(torch.tensor(again), torch.tensor(losses), rtol=1e-5, atol=1e-5)
    wa, wb = (load_file(tmp_path / n / "trainable.safetensors") for n in ("plain", "checkpointed"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-5)


def test_prefix_tuning_refuses_gradient_checkpointing(tiny_gpt2, glue_dir, tmp_path):
    message = one_line(*cli("train_prefix.py", short(tiny_gpt2, glue_dir, tmp_path / "o", "--gradient_checkpointing")))
    assert "--gradient_checkpointing" in message and "cache" in message


def fake_accelerator(distributed_type="NO", offload=None):
    """What common.models.adamw reads of an Accelerator."""
    config = {"zero_optimization": {"offload_optimizer": {"device": offload}}} if offload else None
    plugin = types.SimpleNamespace(deepspeed_config=config) if config else None
    printed = []
    return types.SimpleNamespace(
        distributed_type=distributed_type, state=types.SimpleNamespace(deepspeed_plugin=plugin), print=printed.append
    ), printed


def test_adamw_is_fused_only_over_plain_cuda_tensors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    assert adamw(groups, 1e-3, 1e-8, fake_accelerator("MULTI_GPU")[0]).defaults["fused"] is True
    assert adamw(groups, 1e-3, 1e-8, fake_accelerator("FSDP")[0]).defaults["fused"] is False  # DTensors: foreach


def test_zero_offload_gets_deepspeeds_cpu_adam_or_says_why(monkeypatch):
    import deepspeed.ops.adam

    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]

    def no_build(*args, **kwargs):
        raise RuntimeError("Error building extension 'cpu_adam'\nmore")

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", no_build)
    accelerator, printed = fake_accelerator("DEEPSPEED", offload="cpu")
    optimizer = adamw(groups, 1e-3, 1e-8, accelerator)
    assert type(optimizer) is torch.optim.AdamW
    assert printed == [
        "DeepSpeed's CPU Adam did not build (RuntimeError: Error building extension 'cpu_adam'); torch's AdamW runs"
    ]


def test_deepspeed_configs_accumulate_gradients_in_fp32():
    folder = os.path.join(ROOT, "accelerate_configs")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            config = json.load(open(os.path.join(folder, name)))
            assert config["data_types"] == {"grad_accum_dtype": "fp32"}, name
        if name.endswith(".yaml") and "DEEPSPEED" in open(os.path.join(folder, name)).read():
            assert re.search(
                r"deepspeed_config_file: accelerate_configs/\w+\.json", open(os.path.join(folder, name)).read()
            )


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3", "fsdp"])
def test_grad_norm_is_the_same_in_every_config(config, tiny_gpt2, glue_dir, tmp_path):
    """The norm before clipping, logged at each logging step, is the same number under DDP, ZeRO-2, ZeRO-3 and FSDP2
    for the same seed and data (each compared with DDP's); DeepSpeed clips in its own step with --max_grad_norm."""
    flags = short(tiny_gpt2, glue_dir, tmp_path / config, "--max_grad_norm", "0.5", steps=3)
    check_ok(launch("train_full.py", config, flags))
    norms = [h["grad_norm"] for h in results(tmp_path / config)["log_history"] if "loss" in h]
    reference = tmp_path / "reference"
    check_ok(launch("train_full.py", "ddp", short(tiny_gpt2, glue_dir, reference, "--max_grad_norm", "0.5", steps=3)))
    expected = [h["grad_norm"] for h in results(reference)["log_history"] if "loss" in h]
    assert len(norms) == 3 and all(n > 0.5 for n in norms)  # (so that clipping acts at every step)
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(expected), rtol=1e-4, atol=0)


@pytest.mark.slow
def test_zero3_bf16_records_deepspeeds_precision(tiny_gpt2, glue_dir, tmp_path):
    check_ok(launch("train_lora.py", "zero3_bf16", short(tiny_gpt2, glue_dir, tmp_path / "o")))
    precision = results(tmp_path / "o")["precision"]
    assert precision["mixed_precision"] == "bf16" and precision["deepspeed_grad_accum"] == "float32"
    assert precision["optimizer_state"] == ["float32"]  # DeepSpeed's fp32 master copies and moments


@pytest.mark.slow
def test_torch_compile_meets_few_shapes(tiny_gpt2, glue_dir, tmp_path):
    """20 steps of rows of mixed lengths: every batch is padded to 16, 32, 64 or 128 tokens, and the compiled model
    meets those shapes only."""
    from torch._dynamo.utils import counters

    counters.clear()
    flags = short(tiny_gpt2, glue_dir, tmp_path / "o", "--torch_compile", "--max_train_samples", "96", steps=20)
    run_in_process("train_full.py", flags)
    res = results(tmp_path / "o")
    assert res["train_padded_tokens"] % 16 == 0
    assert counters["stats"]["unique_graphs"] <= 5, dict(counters["stats"])
