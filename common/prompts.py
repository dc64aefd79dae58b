"""What the methods that put trained vectors before a frozen model's input share (prompt tuning, IDPG, prefix tuning):
packing rows to the left, running the model on [prompt][tokens], their own parameters apart from the model's, and a
sharded wrapper made whole outside a forward."""

import contextlib

import torch

from common.data import positions


def pack_left(input_ids, attention_mask, token_type_ids=None):
    """Every row of a batch left-padded (pads first), whatever the collator did: the last position is then the last
    real token (where a decoder's classifier pools, given embeddings, not ids)."""
    order = attention_mask.argsort(dim=-1, stable=True)
    token_type_ids = None if token_type_ids is None else token_type_ids.gather(1, order)
    return input_ids.gather(1, order), attention_mask.gather(1, order), token_type_ids


def run_with_prompt(model, prompt, input_ids, attention_mask, token_type_ids=None, labels=None):
    """`model` run on [prompt][token embeddings] of left-packed rows (common.data.pack_left): the `prompt` vectors
    (batch x t x d) get mask 1 and positions 0..t-1, the tokens follow. Given embeddings rather than ids, a decoder's
    classifier cannot find the padding and reads the last position: after packing, that is each row's last real token.
    """
    embeds = model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
    batch, t = prompt.shape[:2]
    mask = torch.cat([attention_mask.new_ones(batch, t), attention_mask], 1)
    extra = {"position_ids": positions(mask)}
    if token_type_ids is not None:
        extra["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, t), token_type_ids], 1)
    inputs = torch.cat([prompt.to(embeds.dtype), embeds], 1)
    return model(inputs_embeds=inputs, attention_mask=mask, labels=labels, **extra)


def split_params(model, inner):
    """The parameters of `model` outside its submodule `inner` (a wrapper's own: a prompt, a generator) and those
    inside it (the wrapped model's: its trainable head)."""
    inside = {id(p) for p in inner.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in inside], [p for p in params if id(p) in inside]


@contextlib.contextmanager
def unsharded(module):
    """Context in which an FSDP2-sharded module's own parameters (not those of its sharded blocks, which gather
    themselves when called) are whole on every rank (a collective), to call it outside the model's forward; for any
    other module it does nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
