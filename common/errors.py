"""Errors a user can fix: one line `error: ...` on stderr, exit status 2, no traceback.

Method code (layers, builders) raises ordinary exceptions such as ValueError, so it can be copied
into any program. Only argument checking and a script's main() turn them into the one-line
error, and only `run_main` ends the process.
"""
import contextlib
import sys


class UsageError(Exception):
    """Bad input or settings; the message says what to do."""


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


def run_main(main):
    """Run a script's main() as a command: a UsageError prints its one line and exits 2, and the
    process group is destroyed on every way out (else a gloo rank can abort at interpreter exit)."""
    code = 0
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)
