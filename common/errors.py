import sys


def fail(message):
    """Stop with a one-line error that says what to do, and exit status 2 (no traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
