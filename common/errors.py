"""A user's error: one line `error: ...`, exit 2, no traceback; builders raise ValueError, only `run_main` exits."""

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
    def __init__(self, code, message):  # (BaseException keeps both in args: it pickles, as a gather may need)
        self.code, self.message = code, message


def fail(message):
    raise UsageError(message)


def first_line(error, limit=160):
    return (str(error).strip().splitlines() or [""])[0][:limit]


@contextlib.contextmanager
def usage_errors():
    """Inside: a ValueError (a builder refusing a setting for this model) becomes one line."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from None


def raise_on_every_rank(accelerator, error):
    """A collective: if any rank has an `error` (a message, or None), every rank raises the first: all leave alike."""
    from accelerate.utils import gather_object

    if first := next(filter(None, gather_object([error]) if accelerator.num_processes > 1 else [error]), None):
        raise UsageError(first)


def stop_on_signals(note):
    """From now on, Ctrl-C and SIGTERM raise Stopped where the program is, `note()` naming the last checkpoint."""

    def handler(signum, frame):
        word, code = ("interrupted", 130) if signum == signal.SIGINT else ("terminated", 143)
        raise Stopped(code, f"{word}: {note()}")

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def print_once(code, message):
    """Print a run's last line once per launch: the first process of this machine to end prints it; one the launcher
    stopped after another's error stays silent and leaves with that error's status; a restarted group speaks again."""
    if distributed := int(os.environ.get("WORLD_SIZE", "1")) > 1:
        launch = [os.getppid(), *map(os.getenv, ("MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))]
        said = os.path.join(tempfile.gettempdir(), "peft-scripts-" + "-".join(map(str, launch)) + ".said")
        try:
            open(said, "x").write(str(code))  # (of the processes of one launch, one creates it)
        except FileExistsError:
            return 2 if open(said).read().strip() == "2" and code in (130, 143) else code  # (stopped after an error)
    print(("\n" if distributed else "") + message, file=sys.stderr, flush=True)  # (another rank's bar: half a line)
    return code


def parse_command_line(parse_args):
    """The flags, parsed before a script's heavy imports: --help answers at once; a bad flag is one line, exit 2."""
    try:
        return parse_args()
    except UsageError as e:
        sys.exit(print_once(2, f"error: {e}"))


def run_main(main):
    """Run main() as a command: a UsageError is one line, exit 2; Ctrl-C and SIGTERM say where the last checkpoint is
    (exit 130, 143). Distributed: the line is printed once, the process group destroyed on every way out."""
    handlers = stop_on_signals(lambda: NO_CHECKPOINT)  # until a run says where its checkpoints are
    code, message = 0, None
    try:
        main()
    except UsageError as e:
        code, message = 2, f"error: {e}"
    except Stopped as e:
        code, message = e.code, e.message
    except KeyboardInterrupt:  # a Ctrl-C that came before stop_on_signals
        code, message = 130, f"interrupted: {NO_CHECKPOINT}"
    except RuntimeError as e:  # (torch.distributed's DistBackendError too)
        if "timed out" not in str(e).lower() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise
        code, message = 2, f"error: a collective waited longer than --ddp_timeout for another rank ({first_line(e)}): "
        message += "raise it if a rank is still busy (tokenizing, saving), or see the error another rank printed"
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
        code = print_once(code, ("\n" if bars else "") + message)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter teardown: it frees gloo's objects half-way and can abort a run (SIGABRT)
    sys.exit(code)
