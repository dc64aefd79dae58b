"""The adapters of train_adapter.py in AdapterHub's format, as `adapters` 1.3 saves them: adapter_config.json,
head_config.json, pytorch_adapter.bin and pytorch_model_head.bin, for model.load_adapter(path) and then
set_active_adapters, on GPT-2 and BERT-style models. The .bin files are pickles, as AdapterHub writes them. Trained
layer norms have no place in that format: they go to layer_norms.safetensors beside it (load them with
load_state_dict(..., strict=False))."""

import json
import os
import re

import torch

from common.checkpoint import atomic_save_tensors
from common.outputs import atomic_write_text, replacing


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# AdapterHub's names (adapters 1.3): the layers' path in the model, and its name for each place an
# adapter wraps in a layer (train_adapter.py's LAYOUT). Other model types are not exported.
ADAPTERHUB = {
    "gpt2": (
        "transformer.h",
        {"attn.c_proj": "attention_adapters", "mlp.c_proj": "output_adapters", "": "output_adapters"},
    ),
    **{
        t: (
            f"{t}.encoder.layer",
            {"attention.output.dense": "attention.output", "output.dense": "output", "output.LayerNorm": "output"},
        )
        for t in ("bert", "roberta")
    },
}


def adapterhub_config(variant, reduction_factor, ln_before=False):
    """AdapterHub's configuration of our adapters: Houlsby is its DoubleSeqBnConfig, Pfeiffer its SeqBnConfig, with
    every field as adapters 1.3 writes it."""
    houlsby = variant == "houlsby"
    return {
        "adapter_residual_before_ln": False,
        "cross_adapter": False,
        "dropout": 0.0,
        "factorized_phm_W": True,
        "factorized_phm_rule": False,
        "hypercomplex_nonlinearity": "glorot-uniform",
        "init_weights": "bert",
        "init_weights_seed": None,
        "inv_adapter": None,
        "inv_adapter_reduction_factor": None,
        "is_parallel": False,
        "learn_phm": True,
        "leave_out": [],
        "ln_after": False,
        "ln_before": ln_before,
        "mh_adapter": houlsby,
        "non_linearity": "swish" if houlsby else "relu",
        "original_ln_after": True,
        "original_ln_before": not houlsby,
        "output_adapter": True,
        "phm_bias": True,
        "phm_c_init": "normal",
        "phm_dim": 4,
        "phm_init_range": 0.0001,
        "phm_layer": False,
        "phm_rank": 1,
        "reduction_factor": reduction_factor,
        "residual_before_ln": True,
        "scaling": 1.0,
        "shared_W_phm": False,
        "shared_phm_rule": True,
        "stochastic_depth": 0.0,
        "use_gating": False,
    }


def class_name(model):
    """The model's class name; FSDP2 gives a sharded model a class of its own, FSDP<name>, that derives from it."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule)).__name__


def export(path, trained, head, model, variant, m, base_model, name="glue"):
    """`trained` the trained tensors (ours: LAYERS.i.PLACE.adapter.down.weight ...), `model` the transformers model
    (its type, sizes and labels). Returns how many tensors went to layer_norms.safetensors (0: the export is the whole
    trained state)."""
    layers, places = ADAPTERHUB[model.config.model_type]
    ours = re.compile(rf"{re.escape(layers)}\.(\d+)\.(?:(.*)\.)?adapter\.(norm|down|up)\.(weight|bias)$")
    normed = any(ours.match(k) and ours.match(k)[3] == "norm" for k in trained)  # ln_before
    # AdapterHub's adapter_down is Sequential([LayerNorm (with ln_before), Linear, activation]);
    # with ln_before it also holds the LayerNorm as adapter_norm_before.
    theirs = {
        "norm": ["adapter_norm_before", "adapter_down.0"],
        "up": ["adapter_up"],
        "down": ["adapter_down.1" if normed else "adapter_down.0"],
    }
    state = {}
    norms = {}
    for key, tensor in trained.items():
        found = ours.match(key)
        if found:
            layer, place, part, kind = found.groups()
            for module in theirs[part]:
                state[f"{layers}.{layer}.{places[place or '']}.adapters.{name}.{module}.{kind}"] = tensor
        elif key not in head:
            norms[key] = tensor
    d = model.config.hidden_size
    about = {
        "hidden_size": d,
        "model_class": class_name(model),
        "model_name": base_model,
        "model_type": model.config.model_type,
        "version": "adapters.1.3.0",
    }
    write_json(
        os.path.join(path, "adapter_config.json"),
        {"config": adapterhub_config(variant, d / m, normed), "name": name, **about},
    )
    labels = {"label2id": model.config.label2id, "num_labels": model.config.num_labels}
    write_json(os.path.join(path, "head_config.json"), {"config": None, "name": None, **labels, **about})
    for file, tensors in (("pytorch_adapter.bin", state), ("pytorch_model_head.bin", head)):
        with replacing(os.path.join(path, file)) as tmp:
            torch.save(tensors, tmp)
    if norms:
        atomic_save_tensors(os.path.join(path, "layer_norms.safetensors"), norms)
    return len(norms)
