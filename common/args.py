"""The flags every script shares, and their checks: plain argparse, nothing heavy imported (--help answers at once); a
hub model id checked in seconds (a socket: no answer puts the run offline, HF_HUB_OFFLINE=1); paths made absolute."""

import argparse
import datetime
import math
import os
import re
import socket
import urllib.parse

from common.errors import fail
from common.outputs import same_path, why_not_writable
from common.tasks import TASKS, get_task

SCHEDULES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]


class Parser(argparse.ArgumentParser):
    """argparse, plus `--config FILE`: a YAML (or JSON) file of flags, `learning_rate: 1e-3`; the command line wins."""

    def parse_known_args(self, args=None, namespace=None):
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        path = pre.parse_known_args(args)[0].config
        self.script_defaults = {a.dest: a.default for a in self._actions}  # (before a config file's replace them)
        if path:
            self.set_defaults(**self.read_config(path))
        return super().parse_known_args(args, namespace)

    def read_config(self, path):
        """The flags of a config file, each typed and checked as on the command line (typed), or a one-line error."""
        import yaml

        class Loader(yaml.SafeLoader):  # refuses a key written twice (YAML keeps the last, silently)
            def construct_mapping(self, node, deep=False):
                keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
                if twice := sorted({k for k in keys if keys.count(k) > 1}):
                    fail(f"--config {path} sets {', '.join(twice)} twice; keep one")
                return super().construct_mapping(node, deep)

        try:
            with open(path) as f:
                values = yaml.load(f, Loader=Loader) or {}
        except (OSError, yaml.YAMLError, ValueError, RecursionError) as e:  # (ValueError: a 5,000-digit number)
            fail(f"cannot read --config {path} ({type(e).__name__}); pass a YAML file of flags")
        if not isinstance(values, dict):
            fail(f"--config {path} must hold flags as `name: value` lines")
        actions = {a.dest: a for a in self._actions}
        if any(not isinstance(k, str) for k in values):
            fail(f"--config {path}: every flag's name must be text, got {sorted(map(repr, values))[0]}")
        if "config" in values:
            fail(f"--config {path} names another config file; a config file holds flags, not files of flags")
        if unknown := sorted(set(values) - set(actions)):
            fail(f"--config {path} names flags this script does not have: {', '.join(unknown)}")
        return {name: typed(path, actions[name], value) for name, value in values.items()}


def typed(path, action, value):
    """A config file's `value` for the flag of `action`, as the command line would give it: a switch takes true or
    false, a number a number (YAML reads 1e-3 as text), a flag whose default is none may be null."""
    name, switch = action.dest, action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction)
    required, action.required = action.required, False  # (--task in a file: the command line need not repeat it)
    if value is None and (action.default is None or required):
        return value
    ok = isinstance(value, bool) if switch else not isinstance(value, (bool, list, dict)) and value is not None
    if ok and not switch and action.type is None:  # a path, a name, a count: text (not YAML's dates or floats)
        if isinstance(value, datetime.date):
            fail(f"--config {path}: {name} takes text, and YAML reads this as a date; write it in quotes: '{value}'")
        ok, value = isinstance(value, (str, int)), str(value)
    elif ok and not switch:
        try:
            value = action.type(value) if isinstance(value, str) or action.type is float else value
            ok = isinstance(value, action.type)
        except (ValueError, OverflowError):
            ok = False
    if not ok:
        kind = "true or false" if switch else {int: "a whole number", float: "a number"}.get(action.type, "text")
        fail(f"--config {path}: {name} takes {kind}, got {value!r}")
    if action.choices is not None and value not in action.choices:
        fail(f"--config {path}: {name} must be one of {', '.join(map(str, action.choices))}")
    return value


def base_parser(doc):
    """The flags every script shares, as transformers' run_glue_no_trainer.py; `doc`'s first line describes the script.
    No gradient accumulation flag: it comes from the accelerate config (gradient_accumulation_steps: N)."""
    summary = doc.strip().splitlines()[0]  # (allow_abbrev=False: --max_train_sample is a typo, not an abbreviation)
    p = Parser(description=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add = p.add_argument
    add("--task", default=None, help=f"the GLUE task: {', '.join(TASKS)}; or your own data, the next flags")
    add("--train_file", default=None, help="your own data: a .csv, .tsv or .jsonl file with text and label columns")
    add("--validation_file", default=None, help="your own data: scored every evaluation, picks best/")
    add("--test_file", default=None, help="your own data: labelled by --do_predict")
    add("--text_columns", default=None, help="your own data: a or a,b; none: sentence, or sentence1,sentence2")
    add("--label_column", default="label", help="your own data: strings or whole numbers, or scores (a regression)")
    add("--config", default=None, help="a YAML file of flags (the command line wins)")
    add("--model_name_or_path", default="gpt2", help="a hub id or a local model folder")
    add("--data_dir", default=None, help="GLUE's TSV files (DIR/RTE/train.tsv); none: the hub's")
    add("--output_dir", default=None, help="none: runs/<script>-<task>")
    add("--overwrite_output_dir", action="store_true", help="remove what an earlier run wrote")
    add("--learning_rate", type=float, default=2e-5, help="AdamW's rate (the head's, with a method's)")
    add("--weight_decay", type=float, default=0.0, help="AdamW's, on matrices only")
    add("--adam_epsilon", type=float, default=1e-8, help="AdamW's eps (the original experiments: 1e-6)")
    add("--base_dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the frozen weights'")
    add("--gradient_checkpointing", action="store_true", help="recompute activations in backward: less memory")
    add("--max_grad_norm", type=float, default=1.0, help="clip the gradients' norm to this; 0: no clipping")
    add("--num_train_epochs", type=int, default=3, help="passes over the training rows")
    add("--max_train_steps", type=int, default=None, help="optimizer steps (overrides the epochs)")
    add("--per_device_train_batch_size", type=int, default=8, help="rows a batch, per process")
    add("--per_device_eval_batch_size", type=int, default=32, help="rows a batch, per process")
    add("--lr_scheduler_type", default="linear", choices=SCHEDULES, help="the rate's schedule")
    add("--num_warmup_steps", type=int, default=0, help="steps of the schedule's warmup")
    add("--seed", type=int, default=42, help="0 to 2**32 - 1")
    add("--max_length", type=int, default=128, help="tokens per row (truncated)")
    add("--group_by_length", action="store_true", help="batches of rows of similar lengths")
    add("--pad_to_multiple_of", type=int, default=None, help="none: 8 on a GPU, 1 on CPU")
    add("--max_train_samples", type=int, default=None, help="the first N training rows")
    add("--max_eval_samples", type=int, default=None, help="the first N rows of each eval split")
    add("--eval_steps", type=int, default=None, help="evaluate every N steps; none: every epoch")
    add("--validation_size", type=int, default=None, help="N training rows held out to validate")
    add("--validation_dev_half", action="store_true", help="half of dev validates, half tests")
    add("--early_stopping_patience", type=int, default=None, help="evaluations without a gain")
    add("--checkpointing_steps", default=None, help="a resumable checkpoint every N steps, or epoch")
    add("--checkpoints_total_limit", type=int, default=None, help="keep the newest N checkpoints; none: all")
    add("--resume_from_checkpoint", default=None, help="OUTPUT_DIR/checkpoints/step_N, or latest")
    add("--do_predict", action="store_true", help="GLUE submission files for the test split")
    add("--torch_compile", action="store_true", help="compile the model (inductor)")
    add("--ignore_mismatched_sizes", action="store_true", help="a new head of the task's size")
    add("--logging_steps", type=int, default=10, help="log the training loss every N steps")
    add("--ddp_timeout", type=int, default=1800, help="seconds a rank waits for the others before the job fails")
    add("--with_tracking", action="store_true", help="log to --report_to")
    add("--report_to", default="tensorboard", help="tensorboard (offline), wandb, all, ...")
    return p


RULES = {  # what a numeric flag may be (nan and inf are refused wherever a number is)
    "positive": (lambda v: math.isfinite(v) and v > 0, "positive"),
    "non-negative": (lambda v: math.isfinite(v) and v >= 0, "0 or more"),
    "at least 1": (lambda v: v >= 1, "at least 1"),
    "fraction": (lambda v: 0 <= v < 1, "from 0 up to (not including) 1"),
}


def require(parser, args, rule, *names):
    """Each flag of `names` that is set must be what RULES[rule] says: else one line that names its default."""
    ok, want = RULES[rule]
    for name in names:
        value = getattr(args, name)
        if value is not None and not ok(value):
            default = getattr(parser, "script_defaults", {}).get(name, parser.get_default(name))
            hint = "leave it out" if default is None else f"the default is {default}"
            fail(f"--{name} must be {want}, got {value}; {hint}")


def hub_or_offline(name, timeout=3.0):
    """The hub model `name`, reachable: a Hub silent for `timeout` seconds puts this process offline (HF_HUB_OFFLINE=1:
    the cache serves) and a model not cached is refused now; behind a proxy or already offline, libraries decide."""
    if os.path.isabs(name) or name.startswith((".", "~")):
        fail(f"--model_name_or_path {name}: no such folder; pass a model folder or a hub id")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE")):
        return
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # (not a valid hub id)
        cached = None
    if not isinstance(cached, str):
        why = "you are offline (the Hugging Face Hub does not answer) and it is not in your cache"
        fail(f"cannot load model '{name}': {why}; pass a local model directory as --model_name_or_path")


def check_args(parser, argv, script):
    """The command line `argv` (None: sys.argv), parsed; a bad value is refused with one line before any work."""
    args = parser.parse_args(argv)
    if (args.task is None) == (args.train_file is None):
        fail("pass --task (a GLUE task), or --train_file and --validation_file (your own data)")
    if args.task:
        get_task(args.task)
        if args.validation_file or args.test_file or args.text_columns:
            fail("--task reads GLUE's files: drop --train_file, --validation_file, --test_file and --text_columns")
    elif not args.validation_file:
        fail("--train_file goes with --validation_file (the rows that score the run and pick best/)")
    texts = args.text_columns.split(",") if args.text_columns else []
    if args.text_columns is not None and not 1 <= len(texts) <= 2:
        fail(f"--text_columns names one column or two (a pair), got {len(texts)}: {args.text_columns}")
    if len(set(texts)) < len(texts) or {args.label_column, "label", "idx", "index"} & set(texts):
        message = f"names a column twice, the label's ({args.label_column}), or label, idx or index (the run's own)"
        fail(f"--text_columns {args.text_columns} {message}: name another column")
    if args.train_file and args.data_dir is not None:
        fail("--data_dir holds GLUE's files: with --train_file (your own data) drop it")
    for path in (args.train_file, args.validation_file, args.test_file):
        if path and not os.path.isfile(path):
            fail(f"no file {path}; pass your data's .csv, .tsv or .jsonl file")
    if args.max_length < 8:
        fail(f"--max_length {args.max_length} is too short; use at least 8 tokens (default 128)")
    require(parser, args, "positive", "learning_rate", "adam_epsilon")
    require(parser, args, "non-negative", "weight_decay", "max_grad_norm", "num_warmup_steps")
    sizes = "num_train_epochs max_train_steps max_train_samples max_eval_samples per_device_train_batch_size"
    sizes += " per_device_eval_batch_size eval_steps validation_size early_stopping_patience logging_steps"
    require(parser, args, "at least 1", *sizes.split(), "ddp_timeout", "pad_to_multiple_of", "checkpoints_total_limit")
    if args.ddp_timeout > 10**6 or (args.pad_to_multiple_of or 1) > args.max_length:
        fail("--ddp_timeout is at most 1000000 seconds, and --pad_to_multiple_of at most --max_length")
    if args.validation_size is not None and args.validation_dev_half:
        fail("--validation_size and --validation_dev_half both choose the validation set; pass one of them")
    wanted = {"bfloat16": "bf16", "float16": "fp16"}.get(args.base_dtype)  # the autocast the frozen weights need
    if wanted and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != wanted:
        how = f"launch with accelerate launch --mixed_precision {wanted}, or drop --base_dtype"
        fail(f"--base_dtype {args.base_dtype} computes under mixed precision {wanted}: {how}")
    if wanted == "fp16" and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true":
        import torch  # (only here: --help stays instant)

        if not torch.cuda.is_available():
            fail("--base_dtype float16: accelerate runs fp16 as fp32 without a GPU; use bfloat16 under bf16 here")
    every = args.checkpointing_steps
    if every not in (None, "epoch") and not (re.fullmatch(r"[0-9]+", str(every)) and int(every) >= 1):
        fail(f"--checkpointing_steps takes a number of steps (at least 1) or 'epoch', got '{every}'")
    if not 0 <= args.seed < 2**32:
        fail(f"--seed must be from 0 to 2**32 - 1 (numpy's range), got {args.seed}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        fail(f"--data_dir {args.data_dir} is not a folder; point it at GLUE's TSV layout")
    if os.path.isdir(args.model_name_or_path):  # one name for one folder, whatever the working folder
        args.model_name_or_path = os.path.abspath(args.model_name_or_path)
    else:  # a hub id: no network is found out now, in seconds, not after a minute of retries and a DeepSpeed build
        hub_or_offline(args.model_name_or_path)
    args.output_dir = args.output_dir or os.path.join("runs", f"{script}-{args.task or 'files'}")
    for flag, path in vars(args).items():  # the model's, and IDPG's encoder's: the run's files would change it
        if flag.endswith("_name_or_path") and path and os.path.isdir(path) and same_path(path, args.output_dir):
            fail(f"--output_dir {args.output_dir} is the model's folder (--{flag}); pass another")
    if why := why_not_writable(args.output_dir):
        fail(f"cannot write to --output_dir {args.output_dir} ({why}); pass a folder you can write to")
    return args
