"""Saving and loading: trainable weights (gathered under ZeRO-3), resumable checkpoints, results.

Every write goes to a temporary name first and is renamed into place, so a crash never leaves
a half-written file where a finished one is expected.
"""
import glob
import json
import math
import os
import shutil

import torch
from safetensors.torch import load_file, save_file


def atomic_write_text(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def finite(obj):
    """obj with every nan or infinite float replaced by None: JSON has no NaN (json.dumps would
    write a bare NaN that other readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def atomic_save_tensors(path, tensors):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def trainable_names(model):
    """Names of the parameters to train and save. Call before accelerator.prepare."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def gathered(params):
    """Context that makes ZeRO-3 partitioned parameters whole on every rank (a collective)."""
    import contextlib

    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def save_trainable(accelerator, model, names, path):
    """Write the parameters named in `names` to a safetensors file.

    Every rank must call this (under ZeRO-3 the gather is a collective); the main process writes.
    """
    params = dict(accelerator.unwrap_model(model, keep_torch_compile=False).named_parameters())
    state = {}
    for name in names:  # one tensor at a time: a full fine-tune never holds two copies of the model
        with gathered([params[name]]):
            if accelerator.is_main_process:
                state[name] = params[name].detach().cpu().clone().contiguous()
    if accelerator.is_main_process:
        atomic_save_tensors(path, state)
    accelerator.wait_for_everyone()


def save_model_folder(accelerator, model, tokenizer, path, tensors=None):
    """A standard transformers model folder (model.safetensors, config.json with the task's label
    names, the tokenizer) that AutoModelForSequenceClassification.from_pretrained and
    pipeline("text-classification") open. `tensors`: (name, parameters to gather, value) triples,
    value() computed while those are gathered; by default every parameter as it is. Every rank
    calls this: under ZeRO-3 each is gathered in turn (a collective, one weight in memory at a
    time); the main process writes."""
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    if tensors is None:
        tensors = [(name, [p], p.detach) for name, p in plain.named_parameters()]
    state = {}
    for name, params, value in tensors:
        with gathered(params):
            if accelerator.is_main_process:
                state[name] = value().detach().cpu().clone()
    if accelerator.is_main_process:
        atomic_save_tensors(os.path.join(path, "model.safetensors"), state)
        plain.config.save_pretrained(path)
        tokenizer.save_pretrained(path)
    accelerator.wait_for_everyone()


def load_trainable(model, path):
    """Load a trainable.safetensors into a plain (not distributed) model; returns the names loaded."""
    state = load_file(path)
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"{path} holds tensors this model does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return list(state)


def save_checkpoint(accelerator, output_dir, step, extra, files=None):
    """A resumable checkpoint (model, optimizer, scheduler, RNG, and `extra` such as the step)
    at OUTPUT_DIR/checkpoints/step_N, written under a temporary name and renamed when complete.
    `files` {name: path}: files to keep as they are now (hard-linked: no copy until they change)."""
    final = os.path.join(output_dir, "checkpoints", f"step_{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        for name, path in (files or {}).items():
            try:
                os.link(path, os.path.join(tmp, name))  # the file is replaced, never rewritten, so this is a snapshot
            except OSError:
                shutil.copyfile(path, os.path.join(tmp, name))
        atomic_write_json(os.path.join(tmp, "trainer_state.json"), extra)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(output_dir, which):
    """Resolve --resume_from_checkpoint: a folder, or 'latest' in OUTPUT_DIR/checkpoints."""
    if which == "latest":
        found = glob.glob(os.path.join(output_dir, "checkpoints", "step_*[0-9]"))
        return max(found, key=lambda p: int(p.rsplit("_", 1)[1])) if found else None
    return which if os.path.exists(os.path.join(which, "trainer_state.json")) else None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_checkpoint(accelerator, path):
    accelerator.load_state(path)
    return read_json(os.path.join(path, "trainer_state.json"))
