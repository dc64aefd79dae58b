"""Tiny models for the tests and for bench/support.py, in one place.

- `gpt2()`, `bert()`, `llama()`: random 2-layer sequence classifiers in memory (eval mode,
  no dropout, vocabulary 100, pad id 0) for the method tests.
- `make_tiny_gpt2(path)`: a model folder for the scripts' real from_pretrained path: a byte-level
  BPE tokenizer trained on the GLUE fixtures (GPT-2 style: eos, no pad token) and a random
  2-layer GPT-2 body (from_pretrained adds and seeds the classification head).
- `make_tiny_bert(path)`: the same with a 2-layer BERT body (and the same tokenizer).
"""

import os

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a few made-up rows per task, in GLUE's formats
FIXTURES = os.path.join(ROOT, "tests", "data", "glue")


def gpt2(seed=0, labels=2, d=32, layers=2):
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(
        GPT2Config(
            n_layer=layers,
            n_embd=d,
            n_head=2,
            vocab_size=100,
            n_positions=64,
            pad_token_id=0,
            num_labels=labels,
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
        )
    ).eval()


def bert(seed=0, labels=2, d=32, layers=2):
    torch.manual_seed(seed)
    return BertForSequenceClassification(
        BertConfig(
            num_hidden_layers=layers,
            hidden_size=d,
            num_attention_heads=2,
            intermediate_size=2 * d,
            vocab_size=100,
            max_position_embeddings=64,
            num_labels=labels,
            hidden_dropout_prob=0,
            attention_probs_dropout_prob=0,
        )
    ).eval()


def llama(seed=0, labels=2, d=32, layers=2):
    """Llama architecture as SmolLM2 has it: grouped key/value heads (4 query, 2 key/value), rotary positions."""
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(
        LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=d,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * d,
            vocab_size=100,
            max_position_embeddings=64,
            pad_token_id=0,
            num_labels=labels,
        )
    ).eval()


# The fixtures the tiny tokenizer is trained on: a fixed list, so that a task's fixture added later changes no
# token id (and no test's numbers).
TOKENIZER_TASKS = ("CoLA", "MNLI", "MRPC", "QNLI", "RTE", "SST-2", "STS-B")


def fixture_sentences():
    """Every text of the GLUE fixtures of TOKENIZER_TASKS, one per line (tabs and all)."""
    lines = []
    for task in TOKENIZER_TASKS:
        for name in sorted(os.listdir(os.path.join(FIXTURES, task))):
            with open(os.path.join(FIXTURES, task, name), encoding="utf-8-sig") as f:
                lines += f.read().splitlines()
    return lines


def make_gpt2_tokenizer(path, vocab_size=1024):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(fixture_sentences(), vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tok.save_pretrained(path)
    return tok


def make_tiny_gpt2(path, n_layer=2, n_embd=32, n_head=2, dropout=0.1):
    """A model folder: the fixture-trained tokenizer and a random GPT-2 body (dropout on, as GPT-2's)."""
    from transformers import GPT2Model

    tok = make_gpt2_tokenizer(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2Model(config).save_pretrained(path)
    return path


def make_tiny_llama(path, dtype=torch.bfloat16):
    """A model folder: the fixture-trained tokenizer and a random 2-layer Llama body (SmolLM2's shape: grouped
    key/value heads, rotary positions) saved in `dtype`, as hub decoders ship."""
    from transformers import LlamaModel

    tok = make_gpt2_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaModel(config).to(dtype).save_pretrained(path)
    return path


def make_tiny_bert(path):
    """A model folder: the fixture-trained tokenizer and a random 2-layer BERT body."""
    from transformers import BertConfig, BertModel

    tok = make_gpt2_tokenizer(path)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
    ).save_pretrained(path)
    return path
