"""GPT-2 classifies from the last real token whatever the padding side and batch makeup."""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.data import Collator, load_glue, tokenize


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
