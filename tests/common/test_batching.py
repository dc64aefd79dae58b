"""Batches: GPT-2 classifies from the last real token whatever the padding side and batch makeup;
length-grouped batches still cover every row once an epoch; padding to a multiple."""

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.data import Collator, LengthGroupedSampler, load_glue, tokenize


def test_logits_same_for_left_right_padding_and_one_at_a_time(glue_dir, tiny_gpt2):
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=3).eval()
    model.config.pad_token_id = tok.eos_token_id
    ds = tokenize(load_glue("rte", glue_dir)["validation"].select(range(6)), "rte", tok, max_length=200)
    rows = [ds[i] for i in range(6)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the batch really needs padding

    def logits(rows, side):
        batch = Collator(tok.eos_token_id, side)(rows)
        batch.pop("idx"), batch.pop("labels")
        with torch.no_grad():
            return model(**batch).logits

    right, left = logits(rows, "right"), logits(rows, "left")
    single = torch.cat([logits([r], "right") for r in rows])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, right, atol=1e-5, rtol=0)
    # Without our position ids, left padding shifts the positions and changes the logits:
    batch = Collator(tok.eos_token_id, "left", positions=False)(rows)
    batch.pop("idx"), batch.pop("labels")
    with torch.no_grad():
        assert (model(**batch).logits - right).abs().max() > 1e-4


def test_length_grouped_batches_cover_every_row_once_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (1000,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    pads = {}
    for name, orders in (("grouped", [list(sampler)]), ("random", [torch.randperm(1000, generator=g).tolist()])):
        order = orders[0]
        assert sorted(order) == list(range(1000))  # every row exactly once
        batches = [order[i : i + 8] for i in range(0, 1000, 8)]
        padded = sum(8 * max(lengths[j] for j in b) for b in batches)
        pads[name] = 1 - sum(lengths) / padded
    assert pads["grouped"] < 0.05 < 0.3 < pads["random"], pads
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(1000))  # a new order each epoch


def test_collator_pads_to_a_multiple():
    rows = [{"input_ids": [1] * n, "attention_mask": [1] * n, "label": 0, "idx": i} for i, n in enumerate((3, 9))]
    batch = Collator(0, "right", pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum() == 12
