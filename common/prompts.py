"""What the methods that put trained vectors before a frozen model's input share (prompt tuning, IDPG, prefix tuning):
left-packed rows, [prompt][tokens], their own parameters apart from the model's, a sharded wrapper made whole."""

import contextlib

import torch

from common.data import positions


def pack_left(input_ids, attention_mask, token_type_ids=None):
    """Every row left-padded (pads first), whatever the collator did: the last position is then the last real token
    (where a decoder's classifier pools, given embeddings, not ids)."""
    order = attention_mask.argsort(dim=-1, stable=True)
    token_type_ids = None if token_type_ids is None else token_type_ids.gather(1, order)
    return input_ids.gather(1, order), attention_mask.gather(1, order), token_type_ids


def run_with_prompt(model, prompt, input_ids, attention_mask, token_type_ids=None, labels=None):
    """`model` run on [prompt][token embeddings] of left-packed rows (pack_left): the `prompt` vectors (batch x t x d)
    get mask 1 and positions 0..t-1, the tokens follow."""
    embeds = model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
    batch, t = prompt.shape[:2]
    mask = torch.cat([attention_mask.new_ones(batch, t), attention_mask], 1)
    extra = {"position_ids": positions(mask)}
    if token_type_ids is not None:
        extra["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, t), token_type_ids], 1)
    inputs = torch.cat([prompt.to(embeds.dtype), embeds], 1)
    return model(inputs_embeds=inputs, attention_mask=mask, labels=labels, **extra)


def split_params(model, inner):
    """The parameters of `model` outside its submodule `inner` (a wrapper's own: a prompt, a generator) and inside it
    (the wrapped model's: its trainable head)."""
    inside, params = {id(p) for p in inner.parameters()}, list(model.parameters())
    return [p for p in params if id(p) not in inside], [p for p in params if id(p) in inside]


@contextlib.contextmanager
def unsharded(module):
    """An FSDP2-sharded module's own parameters (not its sharded blocks', which gather themselves when called) whole
    on every rank (a collective), to call it outside the model's forward; any other module: nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
