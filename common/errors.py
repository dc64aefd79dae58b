"""Errors a user can fix: one line `error: ...` on stderr, exit status 2, no traceback.

Method code (layers, builders) raises ordinary exceptions such as ValueError, so it can be copied
into any program. Only argument checking and a script's main() turn them into the one-line
error, and only `run_main` ends the process.
"""
import contextlib
import logging
import os
import signal
import sys


class UsageError(Exception):
    """Bad input or settings; the message says what to do."""


class Terminated(BaseException):
    """SIGTERM (a scheduler stopping the job, `kill`), raised where the program is, like Ctrl-C."""


def fail(message):
    """Refuse bad input with a one-line error (argument checking and main() only)."""
    raise UsageError(message)


@contextlib.contextmanager
def usage_errors():
    """Inside: a ValueError (a builder refusing a setting for this model) becomes a one-line error."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from None


def agree(accelerator, error):
    """Every rank's `error` (a message, or None), shared: if any rank has one, every rank raises the
    first as a UsageError, so that all of them leave the same way (a collective: every rank calls it)."""
    from accelerate.utils import gather_object

    messages = gather_object([error]) if accelerator.num_processes > 1 else [error]
    first = next((m for m in messages if m), None)
    if first:
        raise UsageError(first)


# What an interrupted run says about its last checkpoint; the run (common/run.py) keeps it current.
NO_CHECKPOINT = "no checkpoint was written (--checkpointing_steps N saves them)"
resume_note = NO_CHECKPOINT


def _terminate(signum, frame):
    raise Terminated()


def run_main(main):
    """Run a script's main() as a command. A UsageError prints its one line and exits 2; Ctrl-C
    and SIGTERM print one line saying where the last checkpoint is and exit 130 and 143, without
    a traceback. Under a distributed launch only the first process prints, the process group is
    destroyed on every way out, and the process then leaves without the interpreter's teardown:
    that teardown frees gloo's C++ objects (still held by DDP or DeepSpeed) while Python is half
    gone, which now and then aborted a finished run with SIGABRT ('terminate called without an
    active exception': 4 of 137 launches in one CI run). Everything is written and closed by then."""
    signal.signal(signal.SIGTERM, _terminate)
    code, message = 0, None
    try:
        main()
    except UsageError as e:
        code, message = 2, f"error: {e}"
    except KeyboardInterrupt:
        code, message = 130, f"interrupted: {resume_note}"
    except Terminated:
        code, message = 143, f"terminated: {resume_note}"
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if message and os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
