"""Trainable weights (gathered under ZeRO-3, FSDP2) and checkpoints, complete or absent; a resume checks each file."""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile

from safetensors.torch import save_file

from common.errors import UsageError, first_line
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
    """Yields `params` whole on every rank, in order (a collective every rank enters): ZeRO-3's partitions gathered
    (DeepSpeed's GatheredParameters), FSDP2's shards (DTensors) assembled; otherwise the parameters themselves."""
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

    return param.to_local() if isinstance(param, DTensor) else getattr(param, "ds_tensor", param)


def save_trainable(accelerator, model, names, path, run_args=None):
    """Write the parameters `names`, gathered one at a time (every rank calls it), to a safetensors file with the run's
    args.json (`run_args`) in its metadata: predict.py refuses one edited since. The main process gets the tensors."""
    params, state = dict(accelerator.unwrap_model(model, keep_torch_compile=False).named_parameters()), {}
    for name in names:
        with whole([params[name]]) as (tensor,):
            if accelerator.is_main_process:
                state[name] = tensor.detach().cpu().clone().contiguous()
    if accelerator.is_main_process:
        atomic_save_tensors(path, state, {"args.json": run_args} if run_args else None)
    accelerator.wait_for_everyone()
    return state


def head_of(trained, heads, inside=""):
    """The head's tensors among `trained` (`heads`: its modules, "score"), named as in the model `inside` a wrapper."""
    return {n[len(inside) :]: t for n, t in trained.items() if any(n.startswith(f"{inside}{h}.") for h in heads)}


def transformers_folder(path, state, config, tokenizer):
    """A transformers model folder (from_pretrained, pipeline) of the tensors `state`, each file renamed into it."""
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
        atomic_save_tensors(f"{tmp}/model.safetensors", state)
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(path, name))


def save_checkpoint(accelerator, run_dir, state, best_path, total_limit=None):
    """Every rank: a checkpoint at OUTPUT_DIR/checkpoints/step_N of the prepared objects, the loop's `state`, the run's
    identity and `best_path` (hard-linked: it is replaced, never rewritten); the oldest past `total_limit` go after."""
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
            files = [os.path.join(d, f) for d, _, names in os.walk(tmp) for f in names]
            listing = {os.path.relpath(f, tmp): [os.path.getsize(f), digest(f)] for f in files}
            atomic_write_json(os.path.join(tmp, "trainer_state.json"), {**saved, "files": listing})  # (written last)
            remove(final)
            os.replace(tmp, final)
            state.last_checkpoint = final  # (at once: a Ctrl-C from now on names it)
            kept = [p for p in steps(run_dir.path) if not run_dir.resume_from or not same_path(p, run_dir.resume_from)]
            for old in kept[total_limit:] if total_limit else []:  # newest first: the oldest go
                remove(old)
    except BaseException as e:  # (Ctrl-C and SIGTERM too: no temporary folder is left)
        if accelerator.is_main_process:
            remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk: which, and what is left
            message = f"no space left writing {final} (its partial files removed): free some space; "
            raise UsageError(message + state.note())
        raise
    accelerator.wait_for_everyone()
    state.last_checkpoint = final


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def why_incomplete(path):
    """Why the checkpoint folder `path` cannot be resumed ('' when it is complete: every file it lists, unchanged)."""
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


# Flags that change how a run is done, not what it computes; every other flag is part of the run's identity.
OPERATIONAL = """output_dir overwrite_output_dir resume_from_checkpoint checkpointing_steps with_tracking report_to
do_predict per_device_eval_batch_size data_dir merge_and_save logging_steps no_cache torch_compile pad_to_multiple_of
config ddp_timeout gradient_checkpointing checkpoints_total_limit""".split()


def run_identity(flags, method, accelerator):
    """What a resume must match: the script, the flags that change results and the launch (states and data order)."""
    launch = {k: getattr(accelerator, k) for k in ("num_processes", "gradient_accumulation_steps")}
    launch.update({k: str(getattr(accelerator, k)) for k in ("mixed_precision", "distributed_type")})
    chosen = {k: v for k, v in sorted(flags.items()) if k not in OPERATIONAL}
    models = {k: model_fingerprint(v) for k, v in chosen.items() if k.endswith("_name_or_path") and os.path.isdir(v)}
    return {"method": method, **launch, **chosen, "models": models}


def model_fingerprint(folder, blocks=16, block=1 << 16):
    """Each file's name, size and `blocks` blocks spread over it: weights trained further or replaced change it."""
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


def as_flags(identity, keys):
    return " ".join(f"train_{identity.get(k)}.py" if k == "method" else f"--{k} {identity.get(k)}" for k in keys)


def check_resume(accelerator, output_dir, which, identity):
    """The checkpoint --resume_from_checkpoint names ('latest': the newest complete one), if written like this run."""
    path = os.path.normpath(which) if which != "latest" and os.path.isdir(os.path.normpath(which)) else None
    if path and (why := why_incomplete(path)):
        raise UsageError(f"{path} cannot be resumed: {why}; pass an earlier checkpoint, or 'latest'")
    for candidate in steps(output_dir) if which == "latest" else []:  # newest first
        if not (why := why_incomplete(candidate)):
            path = candidate
            break
        accelerator.print(f"skipping {candidate}: {why}")
    if path is None:
        raise UsageError(f"no checkpoint at '{which}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'")
    saved = read_json(os.path.join(path, "trainer_state.json")).get("identity", {})
    if changed := [k for k, v in identity["models"].items() if saved.get("models", {}).get(k, v) != v]:
        message = f"the model folder {identity[changed[0]]} changed since {path} was written (its files' fingerprint "
        raise UsageError(message + "differs): resume with the model it trained from, or start a new run")
    if saved != identity:
        keys = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        message = f"{path} was written by a run with {as_flags(saved, keys)}; this run has {as_flags(identity, keys)}"
        raise UsageError(message + ": resume with the same flags, or start a new run in another --output_dir")
    return path


def load_checkpoint(accelerator, path, state):
    """Restore the prepared objects and the loop's `state` from the checkpoint at `path`, or a one-line error."""
    try:
        accelerator.load_state(path)
        state.load_state_dict(read_json(os.path.join(path, "trainer_state.json")), accelerator)
    except Exception as e:  # a corrupt pickle or tensor file, an edited state: what torch and DeepSpeed raise varies
        message = f"cannot resume from {path} ({type(e).__name__}: {first_line(e)}): pass an earlier checkpoint, "
        raise UsageError(message + "or start over with --overwrite_output_dir") from None
    state.last_checkpoint = path
    accelerator.print(f"resumed from {path} at step {state.step}")
