"""What the speed work must not change: length-grouped batches still cover every row once an
epoch; the token counts in results.json; GPT-2's one-kernel GELU gives the same logits;
--torch_compile gives the eager model's logits. (How fast: bench/speed.py, bench/gpu.py.)"""
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2ForSequenceClassification

from common.data import Collator, LengthGroupedSampler
from launch_utils import results, run_in_process, saved_eval_logits


def test_length_grouped_batches_cover_every_row_once_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (1000,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    pads = {}
    for name, orders in (("grouped", [list(sampler)]), ("random", [torch.randperm(1000, generator=g).tolist()])):
        order = orders[0]
        assert sorted(order) == list(range(1000))  # every row exactly once
        batches = [order[i:i + 8] for i in range(0, 1000, 8)]
        padded = sum(8 * max(lengths[j] for j in b) for b in batches)
        pads[name] = 1 - sum(lengths) / padded
    assert pads["grouped"] < 0.05 < 0.3 < pads["random"], pads
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(1000))  # a new order each epoch


def test_collator_pads_to_a_multiple():
    rows = [{"input_ids": [1] * n, "attention_mask": [1] * n, "label": 0, "idx": i} for i, n in enumerate((3, 9))]
    batch = Collator(0, "right", pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum() == 12


def test_results_count_real_and_padded_tokens(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process("train_full.py", ["--task", "sst2", "--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir,
                                     "--output_dir", out, "--max_train_samples", "32", "--num_train_epochs", "1",
                                     "--per_device_train_batch_size", "8", "--group_by_length",
                                     "--pad_to_multiple_of", "8"])
    res = results(out)
    assert 0 < res["train_tokens"] <= res["train_padded_tokens"]
    assert res["train_padded_tokens"] % 8 == 0 and res["train_tokens_per_s"] > 0
    assert res["train_tokens_per_s"] == pytest.approx(res["train_tokens"] / res["train_runtime_s"])


def test_gpt2_gelu_in_one_kernel_gives_the_same_logits():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=64, pad_token_id=0,
                        resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    assert config.activation_function == "gelu_new"
    slow = GPT2ForSequenceClassification(config).eval()
    config.activation_function = "gelu_pytorch_tanh"  # what common.launch.load_model asks for
    fast = GPT2ForSequenceClassification(config).eval()
    fast.load_state_dict(slow.state_dict())
    ids = torch.randint(1, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, slow(input_ids=ids).logits, atol=1e-6, rtol=0)


@pytest.mark.slow  # compiling takes a minute or two on CPU
@pytest.mark.parametrize("script,flags", [("train_full.py", []), ("train_lora.py", ["--lora_r", "4"])])
def test_torch_compile_gives_the_eager_logits(script, flags, tiny_gpt2, glue_dir, tmp_path):
    """At (nearly) the same weights: a learning rate of 1e-12 leaves them where they start, so the
    compiled and the eager run evaluate the same model (their dropout masks differ: inductor draws
    its own)."""
    for name, extra in (("eager", []), ("compiled", ["--torch_compile"])):
        run_in_process(script, ["--task", "sst2", "--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir,
                                "--output_dir", tmp_path / name, "--max_train_samples", "16", "--max_train_steps", "2",
                                "--learning_rate", "1e-12", *flags, *extra])
    torch.testing.assert_close(saved_eval_logits(tmp_path / "compiled", "sst2"),
                               saved_eval_logits(tmp_path / "eager", "sst2"), atol=1e-5, rtol=0)
    saved = [load_file(tmp_path / name / "trainable.safetensors") for name in ("eager", "compiled")]
    assert saved[0].keys() == saved[1].keys()  # the plain names, not the compiled module's _orig_mod.*
