"""The model as common.models loads it: GPT-2's one-kernel GELU gives the same logits."""

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification


def test_gpt2_gelu_in_one_kernel_gives_the_same_logits():
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=100,
        n_positions=64,
        pad_token_id=0,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    assert config.activation_function == "gelu_new"
    slow = GPT2ForSequenceClassification(config).eval()
    config.activation_function = "gelu_pytorch_tanh"  # what common.models.load_model asks for
    fast = GPT2ForSequenceClassification(config).eval()
    fast.load_state_dict(slow.state_dict())
    ids = torch.randint(1, 100, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, slow(input_ids=ids).logits, atol=1e-6, rtol=0)
