"""The output folder a run owns: every file written to a temporary file beside it, renamed into place when complete
(never half a file, never through a link); `manifest.json` names what a run writes, before it does; `.lock` its pid."""

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile

from common.errors import UsageError

os.umask(UMASK := os.umask(0))  # (reading the umask sets it: set it back)
MANIFEST, LOCK = "manifest.json", ".lock"


@contextlib.contextmanager
def replacing(path):
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
        remove(tmp)  # (if it is still there)


def atomic_write_text(path, text):
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def finite(obj):
    """obj with every nan or infinite float as None: JSON has no NaN (json.dumps writes a bare NaN others refuse)."""
    return json.loads(json.dumps(obj), parse_constant=lambda nan_or_infinity: None)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def remove(path):
    if os.path.islink(path) or os.path.isfile(path):  # a link is removed, not followed
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def steps(output_dir):
    found = glob.glob(os.path.join(output_dir, "checkpoints", "step_*"))
    found = [p for p in found if re.fullmatch(r"step_\d+", os.path.basename(p)) and os.path.isdir(p)]
    return sorted(found, key=lambda p: (int(p.rsplit("_", 1)[1]), p), reverse=True)  # newest first


def same_path(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def inside(path, folder):
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def in_checkpoint(path):
    """Whether `path` lies in a checkpoint folder of a run (OUTPUT_DIR/checkpoints/step_N, or its temporary folder)."""
    return re.search(r"/checkpoints/step_\d+(\.tmp-\w+)?(/|$)", os.path.realpath(path)) is not None


def owner(path):
    """The output folder of a run whose manifest names `path` (or a folder above it), or None."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    while folder != os.path.dirname(folder):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no manifest, or not a run's
            if os.path.relpath(path, folder).split(os.sep)[0] in read_json(f"{folder}/{MANIFEST}")["outputs"]:
                return folder
        folder = os.path.dirname(folder)


def why_not_writable(path):
    """Why `path` cannot become a folder this process writes to ('' when it can), without making anything."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file"
    return "" if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"


def started(pid):
    """When process `pid` started ('' without /proc): with the pid, it tells a run from a later process of that pid."""
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]
    return ""


def alive(pid, start=""):
    try:
        with contextlib.suppress(PermissionError):  # (someone else's process: it runs)
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not start or started(pid) in ("", start)  # and it is the process that started then (when known)


def take_lock(output_dir, run_id):
    """OUTPUT_DIR/.lock with this process's pid, host, run id and start time, created exclusively (of two runs, one
    gets it); one whose process is gone (or whose pid names another process now), or holding no pid, is taken over."""
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
                pid, theirs, _, start = (open(lock, errors="replace").read().split() + [""] * 4)[:4]
            except FileNotFoundError:  # (another run took it over just now: try again)
                continue
            if pid.isascii() and pid.isdecimal() and int(pid) != me and (theirs != host or alive(int(pid), start)):
                where = "" if theirs == host else f" on {theirs}; if it is not running there, remove {lock}"
                message = f"another run (pid {pid}{where}) is writing to {output_dir}: wait for it to end, "
                raise UsageError(message + "or pass another --output_dir") from None
            with contextlib.suppress(FileNotFoundError):  # taken over by renaming: of two runs at once, one does
                os.rename(lock, f"{lock}.stale-{me}")
                os.remove(f"{lock}.stale-{me}")
    raise UsageError(f"cannot take {lock}: another run keeps taking it; pass another --output_dir")


def manifest_entries(output_dir):
    """The paths an earlier run's manifest names (None: none), refused if one leaves the folder (or via a link)."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        raise UsageError(f"{path} is not a file (a folder or a link): no run wrote it; move it away")
    try:
        names = read_json(path)["outputs"]
        assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UsageError(f"{path} is not a run's manifest (no list of outputs); move it away") from None
    for name in names:
        outside = os.path.isabs(name) or ".." in name.split("/") or os.path.normpath(name or ".") == "."
        if outside or not inside(os.path.dirname(os.path.join(output_dir, name)), output_dir):
            message = f"{path} names '{name}', outside {output_dir}: a run never writes there, so nothing of it is "
            raise UsageError(message + "removed; move the folder's manifest away if you trust the rest")
    return names


def claim(output_dir, outputs, run_id, overwrite=False, resuming_here=False, reads=()):
    """Main process: lock OUTPUT_DIR for a run writing `outputs`, refused over another run's results or checkpoints
    (unless `overwrite`, or `resuming_here`), an output no run made, or earlier ones holding a run or what it `reads`.
    Removes nothing: returns take_over's inputs."""
    paths = [os.path.join(output_dir, name) for name in outputs if name]
    for path in filter(os.path.islink, paths):  # it would take the run's writes (and removals) elsewhere
        raise UsageError(f"{path} is a link ({os.readlink(path)}): a run writes in its own folder; remove the link")
    real = os.path.realpath(output_dir)  # (a path named through a link on the way is named as it is reached)
    outputs = [os.path.relpath(os.path.realpath(p), real) for p in paths if inside(p, output_dir)]
    tops = [name.split(os.sep)[0] for name in outputs]  # (a method's folder named as OUTPUT_DIR or in the run's own)
    if clash := [n for n, top in zip(outputs, tops) if top in (".", LOCK, MANIFEST) or tops.count(top) > 1]:
        path = os.path.normpath(os.path.join(output_dir, max(clash, key=len)))  # (the deepest: the one you named)
        raise UsageError(f"{path} is the output folder or one of the run's own outputs; pass a folder of its own")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to --output_dir {output_dir} ({e.strerror}); pass a folder you can write to")
    lock = take_lock(output_dir, run_id)
    try:
        earlier = manifest_entries(output_dir)
        ours = {*(earlier or []), LOCK, MANIFEST}
        foreign = [f"{output_dir}/{n}" for n in outputs if n not in ours and os.path.lexists(f"{output_dir}/{n}")]
        if resuming_here:  # (the same run goes on: its files stay; nobody else's may stand in its way)
            if foreign:
                raise UsageError(f"{foreign[0]} exists and no run wrote it; move it away")
            return lock, [], sorted(set(outputs) | set(earlier or []))
        results = [os.path.join(output_dir, f) for f in ("results.json", "trainable.safetensors")]
        saved = steps(output_dir)[:1] + [p for p in results if os.path.exists(p)]
        if saved and not overwrite:
            what = "checkpoints" if steps(output_dir) else "results"
            message = f"{output_dir} holds another run's {what} ({saved[0]}); resume it with --resume_from_checkpoint "
            raise UsageError(message + "latest, or pass --overwrite_output_dir or another --output_dir")
        if saved and earlier is None:
            message = f"{output_dir} holds {saved[0]} but no {MANIFEST}: no run of these scripts wrote it, so "
            message += "--overwrite_output_dir cannot tell what to remove; move it away, or pass another --output_dir"
            raise UsageError(message)
        if foreign:
            raise UsageError(f"{foreign[0]} exists and no run wrote it; move it away, or pass another --output_dir")
        gone = [os.path.join(output_dir, name) for name in earlier or [] if name not in (LOCK, MANIFEST)]
        held = [p for p in reads if any(inside(p, g) for g in gone)]  # (a model merged there; below: another run)
        if held := held + [d for g in gone for d, _, files in os.walk(g) if MANIFEST in files]:
            raise UsageError(f"{held[0]} lies in an earlier run's output, which this run removes; move it out first")
    except BaseException:
        os.remove(lock)
        raise
    return lock, [n for n in earlier or [] if n not in (LOCK, MANIFEST)], outputs  # (one that saved nothing goes too)


def take_over(output_dir, earlier, outputs, run_id):
    """Main process: remove the earlier run's paths (nothing a user put beside them), then record `outputs`."""
    for name in earlier:
        remove(os.path.join(output_dir, name))
    atomic_write_json(f"{output_dir}/{MANIFEST}", {"run_id": run_id, "outputs": sorted({*outputs, LOCK, MANIFEST})})
