"""The output folder a run owns, and how anything is written there.

Every file is written to a new temporary file, created exclusively beside its destination (never a link or a file
someone left there), and renamed into place when complete: a crash never leaves a half-written file where a finished
one is expected, and a link at the destination is replaced, never written through. A run names everything it will write
in OUTPUT_DIR before it writes anything (`manifest.json`), so that `--overwrite_output_dir` removes exactly what an
earlier run wrote there, and a run never writes over a path it did not make. `.lock` holds the running run's pid."""

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
import socket
import tempfile

from common.errors import UsageError

UMASK = os.umask(0)
os.umask(UMASK)
MANIFEST, LOCK = "manifest.json", ".lock"


@contextlib.contextmanager
def replacing(path):
    """Yields a new, empty temporary file beside `path`, renamed to `path` when the block ends without an error."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(".tmp", f".{os.path.basename(path)}.", folder)  # suffix, start, dir
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it (mkstemp makes it private)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UsageError(f"no space left writing {path} ({e.strerror}): free some space and run again") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def finite(obj):
    """obj with every nan or infinite float replaced by None: JSON has no NaN (json.dumps would write a bare NaN that
    other readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def remove(path):
    """Remove a file, a link or a folder tree, if there is one (a link is removed, not followed)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def steps(output_dir):
    """The checkpoint folders of OUTPUT_DIR by step, newest first (temporary folders left out)."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step_*")):
        number = re.fullmatch(r"step_(\d+)", os.path.basename(path))
        if number and os.path.isdir(path):
            found.append((int(number[1]), path))
    return [path for _, path in sorted(found, reverse=True)]


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


def owner(path):
    """The output folder of a run whose manifest names `path` (or a folder above it), or None."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    while folder != os.path.dirname(folder):
        manifest = os.path.join(folder, MANIFEST)
        if os.path.isfile(manifest):
            top = os.path.relpath(path, folder).split(os.sep)[0]
            try:
                if top in read_json(manifest).get("outputs", []):
                    return folder
            except (OSError, ValueError, AttributeError):
                pass
        folder = os.path.dirname(folder)
    return None


def why_not_writable(path):
    """Why `path` cannot become a folder this process writes to ('' when it can), without making anything: it is a
    file, lies under a file, or its nearest existing folder is read-only."""
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


def started(pid):
    """When process `pid` started (clock ticks since boot, /proc's field 22), or '' where there is no /proc: with its
    pid, it tells a live run from an unrelated process that was given the same pid later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid, start=""):
    """Whether process `pid` runs, and is the one that started at `start` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return not start or not started(pid) or started(pid) == start


def take_lock(output_dir, run_id):
    """OUTPUT_DIR/.lock with this process's pid, host, run id and start time, created exclusively (of two runs starting
    at once, one gets it). A lock whose process is gone (or whose pid now names another process), or that holds no
    pid (a file left by something else), is taken over; a live process's lock is a UsageError."""
    lock = os.path.join(output_dir, LOCK)
    me, host = os.getpid(), socket.gethostname()
    if os.path.isdir(lock) or os.path.islink(lock):
        raise UsageError(f"{lock} is a folder or a link, not a run's lock; move it away")
    for _ in range(3):
        try:
            with open(lock, "x") as f:
                f.write(f"{me} {host} {run_id} {started(me)}\n")
            return lock
        except FileExistsError:
            try:
                fields = open(lock, errors="replace").read().split()
            except FileNotFoundError:  # (another run took it over just now: try again)
                continue
            pid = int(fields[0]) if fields and fields[0].isascii() and fields[0].isdecimal() else None
            theirs, start = (fields[1] if len(fields) > 1 else ""), (fields[3] if len(fields) > 3 else "")
            if pid is not None and pid != me and (theirs != host or alive(pid, start)):
                where = "" if theirs == host else f" on {theirs}; if it is not running there, remove {lock}"
                raise UsageError(
                    f"another run (pid {pid}{where}) is writing to {output_dir}: wait for it to end, "
                    "or pass another --output_dir"
                ) from None
            try:  # taken over by renaming (atomic: of two runs taking over at once, one does)
                os.rename(lock, f"{lock}.stale-{me}")
                os.remove(f"{lock}.stale-{me}")
            except FileNotFoundError:
                pass
    raise UsageError(f"cannot take {lock}: another run keeps taking it; pass another --output_dir")


def manifest_entries(output_dir):
    """The paths an earlier run's manifest names, or None when there is no manifest. A name that leaves the folder
    (an absolute path, `..`, a link on the way) is refused with one line: such a manifest is not a run's, and
    --overwrite_output_dir never follows it."""
    path = os.path.join(output_dir, MANIFEST)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UsageError(f"{path} is not a file (a folder or a link): no run wrote it; move it away")
    if not os.path.isfile(path):
        return None
    try:
        names = read_json(path)["outputs"]
        assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UsageError(f"{path} is not a run's manifest (no list of outputs); move it away") from None
    for name in names:
        parent = os.path.dirname(os.path.join(output_dir, name))
        outside = os.path.isabs(name) or ".." in name.split("/") or os.path.normpath(name or ".") == "."
        if outside or not inside(parent, output_dir):
            raise UsageError(
                f"{path} names '{name}', outside {output_dir}: a run never writes there, so nothing of it is "
                "removed; move the folder's manifest away if you trust the rest"
            )
    return names


def claim(output_dir, outputs, run_id, overwrite=False, resuming_here=False):
    """Main process: take OUTPUT_DIR for a run that writes `outputs` (names relative to it; a path outside it, or
    None, is not the folder's and is left out) and hold its lock. Nothing is removed or written yet but the lock:
    returns (the lock's path, the earlier run's paths to remove, the outputs), for take_over to act on once
    everything else the run needs has loaded. Refused, with one line, when the folder holds an earlier run's results
    or checkpoints (unless `overwrite`, or `resuming_here`: the same run continues), or when one of `outputs` exists
    and no run made it."""
    paths = [os.path.join(output_dir, name) for name in outputs if name]
    for path in paths:  # a link where the run writes would take its writes (and removals) elsewhere
        if os.path.islink(path):
            raise UsageError(
                f"{path} is a link ({os.readlink(path)}): a run writes in its own folder; remove the link"
            )
    outputs = [os.path.relpath(p, output_dir) for p in paths if inside(p, output_dir)]
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --output_dir {output_dir} ({e.strerror}); pass a folder you can write to")
    lock = take_lock(output_dir, run_id)
    try:
        earlier = manifest_entries(output_dir)
        files = ("results.json", "trainable.safetensors")
        saved = [
            *steps(output_dir)[:1],
            *[p for p in (os.path.join(output_dir, f) for f in files) if os.path.exists(p)],
        ]
        if resuming_here:  # (the same run goes on: its files stay; nobody else's may stand in its way)
            ours = {*(earlier or []), LOCK, MANIFEST}
            foreign = [n for n in outputs if n not in ours and os.path.lexists(os.path.join(output_dir, n))]
            if foreign:
                raise UsageError(f"{output_dir}/{foreign[0]} exists and no run wrote it; move it away")
            return lock, [], sorted(set(outputs) | set(earlier or []))
        if saved and not overwrite:
            what = "checkpoints" if steps(output_dir) else "results"
            raise UsageError(
                f"{output_dir} holds another run's {what} ({saved[0]}); resume it with --resume_from_checkpoint "
                "latest, or pass --overwrite_output_dir or another --output_dir"
            )
        if saved and earlier is None:
            raise UsageError(
                f"{output_dir} holds {saved[0]} but no {MANIFEST}: no run of these scripts wrote it, so "
                "--overwrite_output_dir cannot tell what to remove; move it away, or pass another --output_dir"
            )
        earlier = [n for n in earlier or [] if n not in (LOCK, MANIFEST)]  # (a run that saved nothing goes too)
        for name in outputs:
            path = os.path.join(output_dir, name)
            if name not in earlier and name not in (LOCK, MANIFEST) and os.path.lexists(path):
                raise UsageError(f"{path} exists and no run wrote it; move it away, or pass another --output_dir")
    except BaseException:
        os.remove(lock)
        raise
    return lock, earlier, outputs


def take_over(output_dir, earlier, outputs, run_id):
    """Main process: remove what the earlier run wrote (its manifest's paths, nothing a user put beside them; a link
    is removed, never followed) and record this run's `outputs` in the manifest, before it writes any of them."""
    for name in earlier:
        remove(os.path.join(output_dir, name))
    atomic_write_json(
        os.path.join(output_dir, MANIFEST), {"run_id": run_id, "outputs": sorted({*outputs, LOCK, MANIFEST})}
    )
