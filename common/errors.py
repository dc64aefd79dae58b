"""Errors a user can fix: one line `error: ...` on stderr, exit status 2, no traceback. Method code (layers, builders)
raises ordinary exceptions such as ValueError, so it can be copied into any program; only argument checking and a
script's main() turn them into the one-line error, and only `run_main` ends the process."""

import contextlib
import logging
import os
import signal
import sys
import tempfile

NO_CHECKPOINT = "no checkpoint was written (--checkpointing_steps N saves them)"


class UsageError(Exception):
    """Bad input or settings; the message says what to do."""


class Stopped(BaseException):
    """Ctrl-C or SIGTERM, raised where the program is; `message` says where the last checkpoint is."""

    def __init__(self, code, message):
        super().__init__(code, message)  # (both in args: it pickles, as a distributed gather may need)
        self.code, self.message = code, message


def fail(message):
    """Refuse bad input with a one-line error (argument checking and main() only)."""
    raise UsageError(message)


@contextlib.contextmanager
def usage_errors():
    """Inside: a ValueError (a builder refusing a setting for this model) becomes one line."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from None


def raise_on_every_rank(accelerator, error):
    """Every rank's `error` (a message, or None), shared: if any rank has one, every rank raises the first as a
    UsageError, so that all of them leave the same way (a collective: every rank calls it)."""
    from accelerate.utils import gather_object

    messages = gather_object([error]) if accelerator.num_processes > 1 else [error]
    first = next((m for m in messages if m), None)
    if first:
        raise UsageError(first)


def stop_on_signals(note):
    """From now on, Ctrl-C and SIGTERM raise Stopped with `note()`, the line about the last checkpoint, at the point
    the program is (call it from the main thread). Returns the handlers it replaced."""

    def handler(signum, frame):
        word, code = ("interrupted", 130) if signum == signal.SIGINT else ("terminated", 143)
        raise Stopped(code, f"{word}: {note()}")

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def print_once(code, message):
    """Print a run's final line, once per launch: under a distributed launch the first process of this machine to end
    prints it (whichever rank failed first is heard), and a process stopped after another's error (the launcher
    terminates the others) stays silent and leaves with that error's status. Returns the exit status."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        launch = [os.getppid(), *(os.environ.get(k, "") for k in ("MASTER_PORT", "TORCHELASTIC_RUN_ID"))]
        launch.append(os.environ.get("TORCHELASTIC_RESTART_COUNT", ""))  # (a restarted group speaks again)
        said = os.path.join(tempfile.gettempdir(), "peft-scripts-" + "-".join(map(str, launch)) + ".said")
        try:
            with open(said, "x") as f:
                f.write(str(code))
        except FileExistsError:
            earlier = open(said).read().strip()
            return 2 if earlier == "2" and code in (130, 143) else code
    if message:  # (under a distributed launch another rank's progress bar may be half a line: a line of its own)
        print(("\n" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "") + message, file=sys.stderr, flush=True)
    return code


def parse_command_line(parse_args):
    """The flags of the command line, parsed before a script's heavy imports (torch and transformers take seconds):
    --help answers at once, and a bad flag prints its one line and exits 2."""
    try:
        return parse_args()
    except UsageError as e:
        sys.exit(print_once(2, f"error: {e}"))


def outcome(main):
    """(exit status, the line to print or None) of running main()."""
    try:
        main()
    except UsageError as e:
        return 2, f"error: {e}"
    except Stopped as e:
        return e.code, e.message
    except KeyboardInterrupt:  # a Ctrl-C that came before stop_on_signals
        return 130, f"interrupted: {NO_CHECKPOINT}"
    except RuntimeError as e:  # (torch.distributed's DistBackendError too)
        if "timed out" not in str(e).lower() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return 2, (
            f"error: a collective waited longer than --ddp_timeout for another rank ({first}): raise --ddp_timeout "
            "if a rank is still busy (tokenizing, saving), or see the error another rank printed"
        )
    return 0, None


def run_main(main):
    """Run a script's main() as a command: a UsageError prints its one line and exits 2; Ctrl-C and SIGTERM print one
    line saying where the last checkpoint is and exit 130 and 143. Under a distributed launch the line is printed once
    (print_once), the process group is destroyed on every way out, and the process leaves without the interpreter's
    teardown, which frees gloo's C++ objects (still held by DDP or DeepSpeed) while Python is half gone and can abort a
    finished run with SIGABRT ('terminate called without an active exception'). Everything is written by then."""
    handlers = stop_on_signals(lambda: NO_CHECKPOINT)  # until a run says where its checkpoints are
    try:
        code, message = outcome(main)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if message:  # open progress bars are closed, and the message starts a line of its own
        from tqdm import tqdm

        bars = list(getattr(tqdm, "_instances", ()))
        for bar in bars:
            bar.close()
        print(end="\n" if bars else "", file=sys.stderr, flush=True)
    code = print_once(code, message) if message else code
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
