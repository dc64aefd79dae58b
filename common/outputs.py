"""The output folder a run owns: a lock while the run runs, and a manifest of what it writes.

A run names everything it will write in OUTPUT_DIR before it writes anything (`manifest.json`),
so that `--overwrite_output_dir` removes exactly what an earlier run wrote there and nothing
else, and a run never writes over a file it did not make.
"""
import os
import re
import socket

from common.checkpoint import atomic_write_json, read_json, remove, steps
from common.errors import UsageError

MANIFEST = "manifest.json"
LOCK = ".lock"


def same_path(a, b):
    """Whether two paths name the same place (trailing slashes, `..` and links resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


def inside(path, folder):
    """Whether `path` is `folder` or lies under it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def in_checkpoint(path):
    """Whether `path` lies in a checkpoint folder of a run (OUTPUT_DIR/checkpoints/step_N)."""
    path = os.path.realpath(path)
    while os.path.dirname(path) != path:
        parent = os.path.dirname(path)
        if os.path.basename(parent) == "checkpoints" and re.fullmatch(r"step_\d+(\.tmp-\w+)?", os.path.basename(path)):
            return True
        path = parent
    return False


def writable(path):
    """Why `path` cannot become a folder this process writes to ('' when it can), without making
    anything: it is a file, lies under a file, or its nearest existing folder is read-only."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file"
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return ""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def take_lock(output_dir, run_id):
    """OUTPUT_DIR/.lock with this process's pid, host and run id, created exclusively (of two runs
    starting at once, one gets it). A lock whose process is gone, or that does not hold a pid
    (a file left by something else), is taken over; a live process's lock is a UsageError."""
    lock = os.path.join(output_dir, LOCK)
    me, host = os.getpid(), socket.gethostname()
    for _ in range(2):
        try:
            with open(lock, "x") as f:
                f.write(f"{me} {host} {run_id}\n")
            return lock
        except FileExistsError:
            fields = open(lock, errors="replace").read().split()
            pid = int(fields[0]) if fields and fields[0].isdigit() else None
            theirs = fields[1] if len(fields) > 1 else ""
            if pid is not None and theirs == host and pid != me and alive(pid):
                raise UsageError(f"another run (pid {pid}) is writing to {output_dir}: wait for it to end, "
                                 "or pass another --output_dir") from None
            os.remove(lock)
    raise UsageError(f"cannot take {lock}: another run keeps taking it; pass another --output_dir")


def claim(output_dir, outputs, run_id, overwrite=False, resuming_here=False):
    """Main process: take OUTPUT_DIR for a run that writes `outputs` (names relative to it) and
    record them in the manifest before anything is written. Refused, with one line, when the
    folder holds an earlier run's results or checkpoints (unless `overwrite`, which first removes
    the paths the earlier run's manifest names, or `resuming_here`: the same run continues), or
    when one of `outputs` exists and no run made it. Returns the lock's path."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --output_dir {output_dir} ({e.strerror}); pass a folder you can write to")
    lock = take_lock(output_dir, run_id)
    try:
        manifest = os.path.join(output_dir, MANIFEST)
        earlier = read_json(manifest)["outputs"] if os.path.isfile(manifest) else None
        results = os.path.join(output_dir, "results.json")
        saved = [*steps(output_dir)[:1], *[p for p in (results, os.path.join(output_dir, "trainable.safetensors"))
                                          if os.path.exists(p)]]
        if resuming_here:
            outputs = sorted(set(outputs) | set(earlier or []))
        elif saved and not overwrite:
            what = "checkpoints" if steps(output_dir) else "results"
            raise UsageError(f"{output_dir} holds another run's {what} ({saved[0]}); resume it with "
                             "--resume_from_checkpoint latest, or pass --overwrite_output_dir or another --output_dir")
        elif saved and earlier is None:
            raise UsageError(f"{output_dir} holds {saved[0]} but no {MANIFEST}: no run of these scripts wrote it, "
                             "so --overwrite_output_dir cannot tell what to remove; move it away, or pass another "
                             "--output_dir")
        if earlier is not None and not resuming_here:  # (a run that saved nothing is removed without a flag)
            for name in earlier:  # what the earlier run wrote, and nothing a user put beside it
                if name not in (LOCK, MANIFEST):
                    remove(os.path.join(output_dir, name))
        for name in outputs:
            path = os.path.join(output_dir, name)
            if not resuming_here and name not in (LOCK, MANIFEST) and os.path.lexists(path):
                raise UsageError(f"{path} exists and no run wrote it; move it away, or pass another --output_dir")
        atomic_write_json(manifest, {"run_id": run_id, "outputs": sorted(set(outputs) | {LOCK, MANIFEST})})
    except BaseException:
        os.remove(lock)
        raise
    return lock
