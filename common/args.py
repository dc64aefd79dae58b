"""The flags every script shares, and their checks: plain argparse, no file touched, nothing heavy
imported (a script parses its flags before it imports torch, so --help answers at once)."""

import argparse
import os

from common.errors import fail
from common.outputs import writable
from common.tasks import TASKS, get_task


def base_parser(doc):
    """The flags every script shares, in the style of transformers' run_glue_no_trainer.py; the
    first line of the script's docstring `doc` describes it.

    Gradient accumulation is not here on purpose: it comes from the accelerate config
    (`gradient_accumulation_steps` in the yaml, or `accelerate launch
    --gradient_accumulation_steps N`).
    """
    # --max_train_sample is a typo, not --max_train_samples
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    p.add_argument("--model_name_or_path", default="gpt2", help="hub id or local model directory")
    p.add_argument(
        "--data_dir",
        default=None,
        help="a folder in GLUE's TSV layout (DIR/RTE/train.tsv, dev.tsv); default: the hub",
    )
    p.add_argument("--output_dir", default=None, help="default: runs/<script>-<task>")
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="reuse an output dir holding another run",
    )
    p.add_argument("--learning_rate", type=float, default=2e-5)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument(
        "--adam_epsilon",
        type=float,
        default=1e-8,
        help="AdamW's eps (the original experiments: 1e-6)",
    )
    p.add_argument("--num_train_epochs", type=int, default=3)
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--per_device_eval_batch_size", type=int, default=32)
    p.add_argument(
        "--lr_scheduler_type",
        default="linear",
        choices=[
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
        ],
    )
    p.add_argument("--num_warmup_steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=42, help="0 to 2**32 - 1")
    p.add_argument("--max_length", type=int, default=128, help="tokens per example (truncated)")
    p.add_argument(
        "--group_by_length",
        action="store_true",
        help="batch rows of similar lengths together (less padding; each row still once per epoch)",
    )
    p.add_argument(
        "--pad_to_multiple_of",
        type=int,
        default=None,
        help="pad each batch to a multiple of N tokens (default: 8 on a GPU, 1 on CPU)",
    )
    p.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="first N training rows (MNLI 10%%: --task mnli --max_train_samples 40000)",
    )
    p.add_argument(
        "--max_eval_samples", type=int, default=None, help="first N rows of each eval split"
    )
    p.add_argument(
        "--eval_steps",
        type=int,
        default=None,
        help="evaluate every N optimizer steps; default each epoch",
    )
    p.add_argument(
        "--validation_size",
        type=int,
        default=None,
        help="hold out N training rows (drawn with --seed) as the validation set: best/ and early "
        "stopping follow it, and the eval split becomes the test set",
    )
    p.add_argument(
        "--validation_dev_half",
        action="store_true",
        help="for small tasks: a fixed half of the eval split is the validation set, the other "
        "the test set",
    )
    p.add_argument(
        "--early_stopping_patience",
        type=int,
        default=None,
        help="stop after K evaluations without a gain of the main metric (on the validation set "
        "when there is one)",
    )
    p.add_argument(
        "--checkpointing_steps",
        default=None,
        help="save a resumable checkpoint every N optimizer steps, or 'epoch'",
    )
    p.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="a checkpoint folder (OUTPUT_DIR/checkpoints/step_N), or 'latest'",
    )
    p.add_argument(
        "--do_predict",
        action="store_true",
        help="write GLUE submission files for the test split(s) when they have been provided",
    )
    p.add_argument(
        "--torch_compile",
        action="store_true",
        help="compile the model with torch.compile (inductor): faster steps after a slow first one",
    )
    p.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="start a new classification head when the model's has another number of outputs",
    )
    p.add_argument(
        "--logging_steps",
        type=int,
        default=10,
        help="show the mean training loss every N steps (a host sync; a nan or infinite loss stops "
        "run there)",
    )
    p.add_argument("--with_tracking", action="store_true", help="log metrics with --report_to")
    p.add_argument(
        "--report_to", default="tensorboard", help="tensorboard (works offline), wandb, all, ..."
    )
    return p


def check_args(args, script):
    """Refuse bad flag values with one line each, before any work is done."""
    get_task(args.task)
    if args.max_length < 8:
        fail(f"--max_length {args.max_length} is too short; use at least 8 tokens (default 128)")
    if args.learning_rate <= 0:
        fail(f"--learning_rate must be positive, got {args.learning_rate}")
    for name in (
        "num_train_epochs",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "max_train_steps",
        "max_train_samples",
        "max_eval_samples",
        "eval_steps",
        "validation_size",
        "early_stopping_patience",
        "logging_steps",
        "pad_to_multiple_of",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if args.validation_size is not None and args.validation_dev_half:
        fail(
            "--validation_size and --validation_dev_half both choose the validation set; "
            "pass one of them"
        )
    if args.adam_epsilon <= 0:
        fail(f"--adam_epsilon must be positive, got {args.adam_epsilon}")
    every = args.checkpointing_steps
    if every not in (None, "epoch") and not (str(every).isdigit() and int(every) >= 1):
        fail(
            f"--checkpointing_steps takes a number of steps (at least 1) or 'epoch', got '{every}'"
        )
    if not 0 <= args.seed < 2**32:
        fail(f"--seed must be from 0 to 2**32 - 1 (numpy's range), got {args.seed}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        fail(
            f"--data_dir {args.data_dir} is not a folder; point it at GLUE's TSV layout "
            "(DIR/RTE/train.tsv)"
        )
    args.output_dir = args.output_dir or os.path.join("runs", f"{script}-{args.task}")
    why = writable(args.output_dir)
    if why:
        fail(
            f"cannot write to --output_dir {args.output_dir} ({why}); "
            "pass a folder you can write to"
        )
    return args
