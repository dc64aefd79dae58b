"""train_prefix.py: equal to peft's prefix tuning, refused where it cannot work, and under every config."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, GPT2Config
from transformers import DistilBertConfig, DistilBertForSequenceClassification, GPT2ForSequenceClassification

from common.checkpoint import load_trainable
from launch_utils import check_ok, eval_batches, launch, logits_of, results, saved_eval_logits
from train_prefix import PrefixTuning, check_supported


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, pad_token_id=0, num_labels=2,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2ForSequenceClassification(cfg).eval()


# Equality with peft's prefix tuning: tests/test_references.py (peft 0.21 refuses prefix tuning beside
# transformers 5.2x, whose models take `cache` rather than `past_key_values`; the reference runs 0.17.1 on 4.57).


def test_padding_does_not_change_a_row():
    model = PrefixTuning(tiny(), 4).eval()
    model.embedding.data.normal_()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        one = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3], position_ids=positions[:1, :3]).logits
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=0)


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                                    intermediate_size=64, vocab_size=100, hidden_dropout_prob=0,
                                                    attention_probs_dropout_prob=0)).eval()


def test_models_without_a_cache_are_refused_up_front(capsys):
    distilbert = DistilBertForSequenceClassification(DistilBertConfig(n_layers=1, dim=32, n_heads=2, hidden_dim=64,
                                                                      vocab_size=100))
    with pytest.raises(SystemExit):
        check_supported(distilbert)
    assert "'distilbert' is not one" in capsys.readouterr().err
    check_supported(tiny())  # GPT-2 and BERT: fine
    check_supported(tiny_bert())


def test_bert_rows_do_not_depend_on_padding():
    model = PrefixTuning(tiny_bert(), 4).eval()
    model.embedding.data.normal_()
    ids = torch.tensor([[5, 6, 7, 0, 0], [9, 10, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask).logits
        one = model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
        base = model.model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3]).logits
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=0)
    assert (one - base).abs().max() > 1e-3  # the prefix is read


@pytest.mark.parametrize("config", ["single", "ddp", "bf16", "zero1", "zero2", "zero3", "zero3_bf16"])
def test_train_prefix_under_every_config(config, tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    check_ok(launch("train_prefix.py", config, [
        "--task", "sst2", "--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir, "--output_dir", str(out),
        "--max_train_samples", "128", "--max_eval_samples", "64", "--num_train_epochs", "3", "--eval_steps", "4",
        "--learning_rate", "2e-2", "--num_prefix", "4", "--prefix_hidden", "16"]))
    res = results(out)
    losses = [h["train_loss"] for h in res["log_history"]]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    saved = load_file(out / "trainable.safetensors")
    assert {n.split(".")[0] for n in saved} == {"embedding", "mlp", "model"}  # the MLP is kept for resuming
    assert all(n.startswith(("embedding", "mlp.", "model.score.")) for n in saved)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    model.config.pad_token_id = 0
    model = PrefixTuning(model, 4, hidden=16).eval()
    load_trainable(model, out / "trainable.safetensors")
    atol = 5e-2 if "bf16" in config else 1e-5
    ours = logits_of(model, eval_batches(tiny_gpt2, glue_dir, "sst2", 64))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=atol, rtol=0)
    # The computed pairs alone (what inference needs) are the MLP's output.
    with torch.no_grad():
        torch.testing.assert_close(load_file(out / "prefix.safetensors")["prefix"].float(), model.prefix().float(),
                                   atol=1e-2 if "bf16" in config else 1e-6, rtol=0)
