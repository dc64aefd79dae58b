"""train_prefix.py: equal to peft's prefix tuning, refused where it cannot work, and the script in
this process and under every launch config (single and ZeRO-3 in the default suite, the others
with -m slow)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from bench import tiny
from predict import load_trainable
from tests.helpers import (
    check_load_trained,
    check_ok,
    eval_batches,
    evaluations,
    launch,
    logits_of,
    matrix,
    results,
    run_in_process,
    saved_eval_logits,
)
from train_prefix import PrefixTuning, check_supported, is_encoder, parse_args, prefix_text_ids

# Equality with peft's prefix tuning: tests/test_references.py (peft 0.21 refuses prefix tuning beside
# transformers 5.2x, whose models take `cache` rather than `past_key_values`; the reference runs 0.17.1 on 4.57).


def test_padding_does_not_change_a_row():
    model = PrefixTuning(tiny.gpt2(), 4).eval()
    model.embedding.data.normal_()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        one = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3], position_ids=positions[:1, :3]).logits
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=0)


def test_models_without_a_cache_are_refused_up_front():
    distilbert = DistilBertForSequenceClassification(
        DistilBertConfig(n_layers=1, dim=32, n_heads=2, hidden_dim=64, vocab_size=100)
    )
    with pytest.raises(ValueError, match="'distilbert' is not one"):
        check_supported(distilbert)
    check_supported(tiny.gpt2())  # GPT-2, BERT and Llama: fine
    check_supported(tiny.bert())
    check_supported(tiny.llama())


@pytest.mark.parametrize("make", [tiny.gpt2, tiny.llama])
def test_text_init_is_reading_the_text_first(make):
    """--prefix_init text: at the start, the prefix is exactly the model's keys and values for the
    text, so a row reads as the text followed by the row (rotary positions included: the row's
    positions come after the prefix's)."""
    text = [17, 23, 5, 42]
    model = PrefixTuning(make(), 4, hidden=16, text_ids=text).train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(5)[None]).logits
        assert model.model.training  # the pairs were computed in eval mode, and the mode restored
        read = model.model.eval()(input_ids=torch.tensor([text + [5, 6, 7, 8, 9]])).logits
    torch.testing.assert_close(ours, read, atol=1e-5, rtol=0)
    # the learned change starts at zero
    assert all(p.abs().sum() == 0 for p in model.mlp[-1].parameters())


def test_text_init_ids_and_encoders():
    class Tok:  # a stand-in tokenizer: one id per word, its length
        def __call__(self, text):
            return {"input_ids": [len(w) for w in text.split()]}

    assert prefix_text_ids(Tok(), "a bb ccc", 7) == [1, 2, 3, 1, 2, 3, 1]  # repeated as often as p needs
    with pytest.raises(ValueError, match="--prefix_init random"):
        prefix_text_ids(Tok(), "", 4)
    assert is_encoder(tiny.bert()) and not is_encoder(tiny.gpt2()) and not is_encoder(tiny.llama())


def test_bert_rows_do_not_depend_on_padding():
    model = PrefixTuning(tiny.bert(layers=1), 4).eval()
    model.embedding.data.normal_()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits
        one = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
        base = model.model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=0)
    assert (one - base).abs().max() > 1e-3  # the prefix is read


PREFIX_TEXT = parse_args(["--task", "sst2"]).prefix_init_text


def prefix_args(tiny_gpt2, glue_dir, out):
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
        "2e-2",
        "--num_prefix",
        "4",
        "--prefix_hidden",
        "16",
    ]


def check_prefix_run(out, tiny_gpt2, glue_dir, bf16):
    res = results(out)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    saved = load_file(out / "trainable.safetensors")
    assert {n.split(".")[0] for n in saved} == {"embedding", "mlp", "model"}  # the MLP is kept for resuming
    assert all(n.startswith(("embedding", "mlp.", "model.score.")) for n in saved)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    model.config.pad_token_id = 0
    # the script's default
    text_ids = prefix_text_ids(AutoTokenizer.from_pretrained(tiny_gpt2), PREFIX_TEXT, 4)
    model = PrefixTuning(model, 4, hidden=16, text_ids=text_ids).eval()
    load_trainable(model, out / "trainable.safetensors")
    ours = logits_of(model, eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=5e-2 if bf16 else 1e-5, rtol=0)
    check_load_trained(out, tiny_gpt2, glue_dir, 5e-2 if bf16 else 1e-5)
    # The computed pairs alone (what inference needs) are the MLP's output.
    with torch.no_grad():
        torch.testing.assert_close(
            load_file(out / "prefix.safetensors")["prefix"].float(),
            model.prefix().float(),
            atol=1e-2 if bf16 else 1e-6,
            rtol=0,
        )


def test_train_prefix_in_process(tiny_gpt2, glue_dir, tmp_path):
    run_in_process("train_prefix.py", prefix_args(tiny_gpt2, glue_dir, tmp_path / "out"))
    check_prefix_run(tmp_path / "out", tiny_gpt2, glue_dir, bf16=False)


@pytest.mark.parametrize("config", matrix(["single", "ddp", "bf16", "zero1", "zero2", "zero3", "zero3_bf16"]))
def test_train_prefix_under_every_config(config, tiny_gpt2, glue_dir, tmp_path):
    check_ok(launch("train_prefix.py", config, prefix_args(tiny_gpt2, glue_dir, str(tmp_path / "out"))))
    check_prefix_run(tmp_path / "out", tiny_gpt2, glue_dir, bf16="bf16" in config)
