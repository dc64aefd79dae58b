"""Tiny offline models for the tests: a byte-level BPE tokenizer trained on GLUE text (GPT-2
style: eos, no pad token) and a 2-layer GPT-2 with random weights, saved as a model directory
so that the scripts' real from_pretrained path runs."""
import os

GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "glue"))


def glue_sentences(limit=4000):
    lines = []
    for name in ("SST-2/train.tsv", "RTE/train.tsv", "MRPC/train.tsv", "CoLA/train.tsv"):
        with open(os.path.join(GLUE_DIR, name), encoding="utf-8-sig") as f:
            lines += f.read().splitlines()[: limit // 4]
    return lines


def make_gpt2_tokenizer(path, vocab_size=1024):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(glue_sentences(), vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    tok.save_pretrained(path)
    return tok


def make_tiny_gpt2(path, n_layer=2, n_embd=32, n_head=2, dropout=0.1):
    """A random 2-layer GPT-2 body (no head: from_pretrained adds and seeds the classifier)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    tok = make_gpt2_tokenizer(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2Model(config).save_pretrained(path)
    return path
