"""Trainable weights (gathered under ZeRO-3 and FSDP2) and resumable checkpoints.

A checkpoint is complete or absent: every rank writes into a temporary folder, and only when all are done does the main
process list the files with their sizes and rename the folder into place; a resume refuses a folder whose files do not
match that list."""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file

from common.errors import UsageError
from common.outputs import UMASK, atomic_write_json, read_json, remove, replacing, same_path, steps


def atomic_save_tensors(path, tensors, metadata=None):
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata)
        os.chmod(tmp, 0o666 & ~UMASK)  # (safetensors makes its file private; every other file is as open() makes it)


def trainable_names(model):
    """Names of the parameters to train and save. Call before accelerator.prepare."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def whole(params):
    """Context in which `params` are whole on every rank (a collective every rank enters): ZeRO-3's partitions are
    gathered (DeepSpeed's GatheredParameters) and FSDP2's shards (DTensors) assembled. Yields the whole tensors, in
    order; without ZeRO-3 or FSDP2 the parameters themselves."""
    from torch.distributed.tensor import DTensor

    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        yield [p.full_tensor() if isinstance(p, DTensor) else p for p in params]


def local_part(param):
    """This rank's part of a parameter: its ZeRO-3 partition, its FSDP2 shard, or all of it."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return param.to_local()
    return getattr(param, "ds_tensor", param)


def gather_tensors(accelerator, model, names):
    """{name: tensor on the CPU} of the parameters named in `names`, on the main process ({} on the others). Every rank
    must call this (under ZeRO-3 and FSDP2 the gather is a collective); one tensor is gathered at a time, so a full
    fine-tune never holds two copies of the model."""
    params = dict(accelerator.unwrap_model(model, keep_torch_compile=False).named_parameters())
    state = {}
    for name in names:
        with whole([params[name]]) as (tensor,):
            if accelerator.is_main_process:
                state[name] = tensor.detach().cpu().clone().contiguous()
    return state


def save_trainable(accelerator, model, names, path, run_args=None):
    """Write the parameters named in `names` to a safetensors file, with the text of the run's args.json (`run_args`)
    in its metadata: predict.py refuses an args.json edited since; returns them (main process: the tensors, others:
    {}). Every rank must call this; the main process writes."""
    state = gather_tensors(accelerator, model, names)
    if accelerator.is_main_process:
        atomic_save_tensors(path, state, {"args.json": run_args} if run_args else None)
    accelerator.wait_for_everyone()
    return state


def head_of(trained, heads, inside=""):
    """The classification head's tensors among `trained`, named as in the transformers model: `heads` are its module
    names ("score"), `inside` the wrapper's attribute that holds the model ("model.")."""
    head = {}
    for name, tensor in trained.items():
        if name.startswith(inside) and name[len(inside) :].split(".")[0] in heads:
            head[name[len(inside) :]] = tensor
    return head


def transformers_folder(path, state, config, tokenizer):
    """A standard transformers model folder (from_pretrained, pipeline) of the tensors `state`; each file is written
    beside, then renamed into it."""
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/model.safetensors")
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(path, name))


def load_trainable(model, path, strict=False):
    """Load a trainable.safetensors into a plain (not distributed) model: each tensor must be one of the model's
    parameters (`strict`: exactly its trainable ones, none missing), of its shape and finite; a UsageError names the
    first that does not fit. Returns the names."""
    try:
        state = load_file(path)
    except Exception as e:  # missing, empty, cut short: what safetensors raises varies
        raise UsageError(f"cannot read {path} ({type(e).__name__}): the run did not finish writing it") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or not strict}
    unknown, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state)) if strict else []
    if unknown or missing:
        which = f"holds {unknown[0]}, which it does not" if unknown else f"lacks {missing[0]}, which it"
        raise UsageError(f"{path} {which} train in the rebuilt model: it is another run's, or the base model changed")
    for name, tensor in state.items():
        if tensor.shape != params[name].shape:
            shapes = f"{tuple(tensor.shape)}, the model's {tuple(params[name].shape)}"
            raise UsageError(f"{path}: {name} has the shape {shapes}: it is another run's, or the base model changed")
        if not tensor.isfinite().all():
            raise UsageError(f"{path}: {name} holds nan or infinite values; use an earlier checkpoint's")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return list(state)


def save_checkpoint(accelerator, run_dir, state, best_path, total_limit=None):
    """A resumable checkpoint at OUTPUT_DIR/checkpoints/step_N: the prepared objects (model, optimizer, scheduler,
    random states), the loop's `state` (TrainState), the run's identity (`run_dir`: loop.OutputDir) and the best
    weights so far (`best_path`, hard-linked: it is replaced, never rewritten, so the link is a snapshot). Every rank
    calls this. All ranks write into a new folder named with the run's id; only when every rank is done does the main
    process list the files with their sizes in trainer_state.json (written last) and rename the folder into place; a
    run stopped while saving (Ctrl-C, SIGTERM) leaves no temporary folder. Then, with `total_limit`, the oldest
    checkpoints beyond it are removed (never the one this run resumed from). Sets state.last_checkpoint."""
    final = os.path.join(run_dir.path, "checkpoints", f"step_{state.step}")
    tmp = f"{final}.tmp-{run_dir.run_id}"
    saved = state.state_dict(accelerator)  # (a collective; a nan loss stops here)
    saved.update(identity=run_dir.identity, data=run_dir.data, run_id=run_dir.run_id)
    try:
        if accelerator.is_main_process:
            remove(tmp)  # an earlier try of this run that died while saving
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()  # every rank's files are written (DeepSpeed: each its shards)
        if accelerator.is_main_process:
            if state.best:
                try:
                    os.link(best_path, os.path.join(tmp, "best.safetensors"))
                except OSError:
                    shutil.copyfile(best_path, os.path.join(tmp, "best.safetensors"))
            atomic_write_json(os.path.join(tmp, "trainer_state.json"), {**saved, "files": listing(tmp)})
            remove(final)
            os.replace(tmp, final)
            state.last_checkpoint = final  # (at once: a Ctrl-C from now on names it)
            kept = [p for p in steps(run_dir.path) if not run_dir.resume_from or not same_path(p, run_dir.resume_from)]
            for old in kept[total_limit:] if total_limit else []:  # newest first: the oldest go
                remove(old)
    except BaseException as e:
        if accelerator.is_main_process:
            remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk: which, and what is left
            raise UsageError(
                f"no space left writing {final} (its partial files removed): free some space; {state.note()}"
            )
        raise
    accelerator.wait_for_everyone()
    state.last_checkpoint = final


def digest(path):
    """A file's SHA-256, read in 16 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def listing(folder):
    """{relative path: [size in bytes, SHA-256]} of every file under `folder`."""
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return {os.path.relpath(f, folder): [os.path.getsize(f), digest(f)] for f in files}


def why_incomplete(path):
    """Why the checkpoint folder `path` cannot be resumed ('' when it is complete): no trainer_state.json (never
    finished), or a file it lists missing, of another size or with other bytes (its SHA-256)."""
    try:
        written = read_json(os.path.join(path, "trainer_state.json"))["files"]
        written = {name: (int(size), str(sha)) for name, (size, sha) in written.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return "it has no readable trainer_state.json (its run stopped while saving it)"
    if not any(name.startswith("random_states") for name in written):  # (every save writes them)
        return "its trainer_state.json lists no random states: it was not written by a run's save"
    for name, (size, sha) in written.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file):,} bytes, written with {size:,}"
        if digest(file) != sha:
            return f"{name} holds other bytes than it was written with (its SHA-256 differs)"
    return ""


def find_checkpoint(output_dir, which):
    """Resolve --resume_from_checkpoint: a checkpoint folder, or 'latest', the newest complete one in
    OUTPUT_DIR/checkpoints (incomplete ones are skipped, each with a line saying why). Returns (path or None, the
    lines)."""
    if which != "latest":
        path = os.path.normpath(which)
        if not os.path.isdir(path):
            return None, []
        why = why_incomplete(path)
        if why:
            raise UsageError(f"{path} cannot be resumed: {why}; pass an earlier checkpoint, or 'latest'")
        return path, []
    skipped = []
    for path in steps(output_dir):
        why = why_incomplete(path)
        if not why:
            return path, skipped
        skipped.append(f"skipping {path}: {why}")
    return None, skipped


# Flags that change how a run is done, not what it computes: every other flag is part of the
# run's identity, which a checkpoint records and a resume must match.
OPERATIONAL = set(
    "output_dir overwrite_output_dir resume_from_checkpoint checkpointing_steps with_tracking report_to do_predict "
    "per_device_eval_batch_size data_dir merge_and_save logging_steps no_cache torch_compile pad_to_multiple_of "
    "config ddp_timeout gradient_checkpointing checkpoints_total_limit".split()
)


def run_identity(flags, method, accelerator):
    """What a checkpoint must have been written with to be resumed: the script, every flag that changes the result, and
    the launch settings that shape the saved states and the data order (num_processes, gradient_accumulation_steps and
    mixed_precision are accelerate launch's flags)."""
    launch = {
        "num_processes": accelerator.num_processes,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "mixed_precision": str(accelerator.mixed_precision),
        "distributed_type": str(accelerator.distributed_type),
    }
    chosen = {k: v for k, v in sorted(flags.items()) if k not in OPERATIONAL}
    models = {k: model_fingerprint(v) for k, v in chosen.items() if k.endswith("_name_or_path") and os.path.isdir(v)}
    return {"method": method, **launch, **chosen, "models": models}


def model_fingerprint(folder, blocks=16, block=1 << 16):
    """A cheap fingerprint of a model folder (not of a hub id): each file's name and size and `blocks` blocks of
    `block` bytes spread over it (its start holds safetensors' header). Weights trained further or another model saved
    in the same folder change it; reading a megabyte a file, not the file, it takes milliseconds for gigabytes
    (bench/fingerprint.py). A model card (.md) may change."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name.endswith(".md") or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        h.update(f"{name} {size}\n".encode())
        with open(path, "rb") as f:
            for i in range(blocks):
                f.seek(size * i // blocks)
                h.update(f.read(block))
    return h.hexdigest()[:16]


def differences(saved, ours):
    """The flags in which two identities differ, as `--name value` pairs, theirs and ours."""

    def show(who, key):
        return f"train_{who.get(key)}.py" if key == "method" else f"--{key} {who.get(key)}"

    keys = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    return " ".join(show(saved, k) for k in keys), " ".join(show(ours, k) for k in keys)


def check_resume(accelerator, output_dir, which, identity):
    """The checkpoint --resume_from_checkpoint `which` names, complete and written with the same `identity`
    (run_identity); a UsageError that says what to do otherwise."""
    path, skipped = find_checkpoint(output_dir, which)
    for line in skipped:
        accelerator.print(line)
    if path is None:
        raise UsageError(f"no checkpoint at '{which}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'")
    saved = read_json(os.path.join(path, "trainer_state.json")).get("identity", {})
    changed = [k for k, v in identity["models"].items() if saved.get("models", {}).get(k, v) != v]
    if changed:
        raise UsageError(
            f"the model folder {identity[changed[0]]} changed since {path} was written (its files' fingerprint "
            "differs): resume with the model it trained from, or start a new run"
        )
    if saved != identity:
        theirs, ours = differences(saved, identity)
        raise UsageError(
            f"{path} was written by a run with {theirs}; this run has {ours}: resume with the "
            "same flags, or start a new run in another --output_dir"
        )
    return path


def load_checkpoint(accelerator, path, state):
    """Restore the prepared objects and the loop's `state` (TrainState) from the checkpoint at `path`. A file that
    cannot be read (damaged after it was written) is a one-line error; nothing of the output folder changes (its best
    weights come back in OutputDir.take)."""
    try:
        accelerator.load_state(path)
        state.load_state_dict(read_json(os.path.join(path, "trainer_state.json")), accelerator)
    except Exception as e:  # a corrupt pickle or tensor file, an edited state: what torch and DeepSpeed raise varies
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UsageError(
            f"cannot resume from {path} ({type(e).__name__}: {first}): pass an earlier checkpoint, "
            "or start over with --overwrite_output_dir"
        ) from None
    state.last_checkpoint = path
    accelerator.print(f"resumed from {path} at step {state.step}")
