"""Saving and loading: trainable weights (gathered under ZeRO-3), resumable checkpoints, results.

Every write goes to a new temporary file, created exclusively beside its destination (never a
link or a file someone left there), and is renamed into place when complete: a crash never
leaves a half-written file where a finished one is expected, and a link at the destination is
replaced, never written through.
"""
import contextlib
import glob
import json
import math
import os
import re
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file

from common.errors import UsageError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def replacing(path):
    """Yields the name of a new, empty temporary file beside `path`; when the block ends without
    an error it is renamed to `path` (else removed)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)


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
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)


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
    if accelerator.is_main_process:  # each file written beside, then renamed into the folder
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"))
            plain.config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(path, name))
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


def save_checkpoint(accelerator, output_dir, step, state, tag, files=None):
    """A resumable checkpoint (model, optimizer, scheduler, RNG, and `state` such as the step) at
    OUTPUT_DIR/checkpoints/step_N. Every rank calls this. All ranks write into a new folder named
    with `tag` (the run's id, the same on every rank); only when every rank is done does the main
    process list the files with their sizes in trainer_state.json (written last) and rename the
    folder into place. `files` {name: path}: files to keep as they are now (hard-linked: they are
    replaced, never rewritten, so the link is a snapshot)."""
    final = os.path.join(output_dir, "checkpoints", f"step_{step}")
    tmp = f"{final}.tmp-{tag}"
    if accelerator.is_main_process:
        remove(tmp)  # an earlier try of this run that died while saving
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()  # every rank's files are written (DeepSpeed: each rank its shards)
    if accelerator.is_main_process:
        for name, path in (files or {}).items():
            try:
                os.link(path, os.path.join(tmp, name))
            except OSError:
                shutil.copyfile(path, os.path.join(tmp, name))
        atomic_write_json(os.path.join(tmp, "trainer_state.json"), {**state, "files": listing(tmp)})
        remove(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def remove(path):
    """Remove a file, a link or a folder tree, if there is one (a link is removed, not followed)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def listing(folder):
    """{relative path: size in bytes} of every file under `folder`."""
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
            for d, _, names in os.walk(folder) for f in names}


def damage(path):
    """Why the checkpoint folder `path` cannot be resumed ('' when it is complete): no
    trainer_state.json (never finished), or a file it lists missing or of another size."""
    try:
        written = read_json(os.path.join(path, "trainer_state.json"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it has no readable trainer_state.json (its run stopped while saving it)"
    for name, size in written.items():
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != size:
            return f"{name} has {os.path.getsize(full):,} bytes, written with {size:,}"
    return ""


def steps(output_dir):
    """The checkpoint folders of OUTPUT_DIR by step, newest first (temporary folders left out)."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step_*")):
        number = re.fullmatch(r"step_(\d+)", os.path.basename(path))
        if number and os.path.isdir(path):
            found.append((int(number[1]), path))
    return [path for _, path in sorted(found, reverse=True)]


def find_checkpoint(output_dir, which):
    """Resolve --resume_from_checkpoint: a checkpoint folder, or 'latest', the newest complete one
    in OUTPUT_DIR/checkpoints (incomplete ones are skipped, each with a line saying why). Returns
    (path or None, the lines)."""
    if which != "latest":
        path = os.path.normpath(which)
        if not os.path.isdir(path):
            return None, []
        why = damage(path)
        if why:
            raise UsageError(f"{path} cannot be resumed: {why}; pass an earlier checkpoint, or 'latest'")
        return path, []
    skipped = []
    for path in steps(output_dir):
        why = damage(path)
        if not why:
            return path, skipped
        skipped.append(f"skipping {path}: {why}")
    return None, skipped


def read_json(path):
    with open(path) as f:
        return json.load(f)


def load_checkpoint(accelerator, path):
    """Restore the prepared objects from a checkpoint folder; returns its trainer_state.json. A
    file that cannot be read (damaged after it was written) is a one-line error."""
    try:
        accelerator.load_state(path)
    except Exception as e:  # a corrupt pickle or tensor file: what torch and DeepSpeed raise varies
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UsageError(f"cannot resume from {path} ({type(e).__name__}: {first}): pass an earlier checkpoint, "
                         "or start over with --overwrite_output_dir") from None
    return read_json(os.path.join(path, "trainer_state.json"))
