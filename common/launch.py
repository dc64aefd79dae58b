"""Launch helpers shared by every train_*.py: the common flags, the Accelerator, the model and
tokenizer, the data loaders, and evaluation. Each script adds its own method flags and loop;
common/run.py keeps the bookkeeping between its steps."""
import argparse
import os

import torch

from common.data import TASKS, Collator, LengthGroupedSampler, get_task, hold_out, load_glue, tokenize
from common.errors import UsageError, agree, fail
from common.metrics import glue_metrics
from common.outputs import writable

HELD_OUT = "heldout"  # the validation set's name among the eval loaders (--validation_size, --validation_dev_half)
DEV_HALF_SEED = 0  # --validation_dev_half: the same halves for every run, whatever its --seed


def base_parser(description):
    """The flags every script shares, in the style of transformers' run_glue_no_trainer.py.

    Gradient accumulation is not here on purpose: it comes from the accelerate config
    (`gradient_accumulation_steps` in the yaml or `accelerate launch --gradient_accumulation_steps N`).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)  # --max_train_sample is a typo, not --max_train_samples
    p.add_argument("--task", required=True, help=f"GLUE task: {', '.join(TASKS)}")
    p.add_argument("--model_name_or_path", default="gpt2", help="hub id or local model directory")
    p.add_argument("--data_dir", default=None,
                   help="folder in GLUE's TSV layout (DIR/RTE/train.tsv, dev.tsv); default: the hub's nyu-mll/glue")
    p.add_argument("--output_dir", default=None, help="default: runs/<script>-<task>")
    p.add_argument("--overwrite_output_dir", action="store_true", help="reuse an output dir holding another run")
    p.add_argument("--learning_rate", type=float, default=2e-5)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW's eps (the original experiments: 1e-6)")
    p.add_argument("--num_train_epochs", type=int, default=3)
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--per_device_eval_batch_size", type=int, default=32)
    p.add_argument("--lr_scheduler_type", default="linear",
                   choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                            "constant_with_warmup"])
    p.add_argument("--num_warmup_steps", type=int, default=0)
    p.add_argument("--seed", type=int, default=42, help="0 to 2**32 - 1")
    p.add_argument("--max_length", type=int, default=128, help="tokens per example (truncated)")
    p.add_argument("--group_by_length", action="store_true",
                   help="batch rows of similar lengths together (less padding; each row still once per epoch)")
    p.add_argument("--pad_to_multiple_of", type=int, default=None,
                   help="pad each batch to a multiple of N tokens (default: 8 on a GPU, 1 on CPU)")
    p.add_argument("--max_train_samples", type=int, default=None,
                   help="first N training rows (MNLI 10%%: --task mnli --max_train_samples 40000)")
    p.add_argument("--max_eval_samples", type=int, default=None, help="first N rows of each eval split")
    p.add_argument("--eval_steps", type=int, default=None, help="evaluate every N optimizer steps; default each epoch")
    p.add_argument("--validation_size", type=int, default=None,
                   help="hold out N training rows (drawn with --seed) as the validation set: best/ and early "
                        "stopping follow it, and the eval split becomes the test set")
    p.add_argument("--validation_dev_half", action="store_true",
                   help="for small tasks: a fixed half of the eval split is the validation set, the other half "
                        "the test set")
    p.add_argument("--early_stopping_patience", type=int, default=None,
                   help="stop after K evaluations without a gain of the main metric (on the validation set "
                        "when there is one)")
    p.add_argument("--checkpointing_steps", default=None,
                   help="save a resumable checkpoint every N optimizer steps, or 'epoch'")
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="a checkpoint folder (OUTPUT_DIR/checkpoints/step_N), or 'latest'")
    p.add_argument("--do_predict", action="store_true",
                   help="write GLUE submission files for the test split(s) when they have been provided")
    p.add_argument("--torch_compile", action="store_true",
                   help="compile the model with torch.compile (inductor): faster steps after a slow first one")
    p.add_argument("--ignore_mismatched_sizes", action="store_true",
                   help="start a new classification head when the model's has another number of outputs")
    p.add_argument("--logging_steps", type=int, default=10,
                   help="show the mean training loss every N steps (a host sync; a nan or infinite loss stops the "
                        "run there)")
    p.add_argument("--with_tracking", action="store_true", help="log metrics with --report_to")
    p.add_argument("--report_to", default="tensorboard", help="tensorboard (works offline), wandb, all, ...")
    return p


def check_args(args, script):
    """Refuse bad flag values with one line each, before any work is done."""
    get_task(args.task)
    if args.max_length < 8:
        fail(f"--max_length {args.max_length} is too short; use at least 8 tokens (default 128)")
    if args.learning_rate <= 0:
        fail(f"--learning_rate must be positive, got {args.learning_rate}")
    for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "max_train_steps", "max_train_samples", "max_eval_samples", "eval_steps", "validation_size",
                 "early_stopping_patience", "logging_steps", "pad_to_multiple_of"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name} must be at least 1, got {value}")
    if args.validation_size is not None and args.validation_dev_half:
        fail("--validation_size and --validation_dev_half both choose the validation set; pass one of them")
    if args.adam_epsilon <= 0:
        fail(f"--adam_epsilon must be positive, got {args.adam_epsilon}")
    every = args.checkpointing_steps
    if every not in (None, "epoch") and not (str(every).isdigit() and int(every) >= 1):
        fail(f"--checkpointing_steps takes a number of steps (at least 1) or 'epoch', got '{every}'")
    if not 0 <= args.seed < 2**32:
        fail(f"--seed must be from 0 to 2**32 - 1 (numpy's range), got {args.seed}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        fail(f"--data_dir {args.data_dir} is not a folder; point it at GLUE's TSV layout (DIR/RTE/train.tsv)")
    args.output_dir = args.output_dir or os.path.join("runs", f"{script}-{args.task}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        fail(f"--output_dir {args.output_dir} is a file; pass a folder")
    why = writable(args.output_dir)
    if why:
        fail(f"cannot write to --output_dir {args.output_dir} ({why}); pass a folder you can write to")
    return args


def make_accelerator(args):
    """An Accelerator that also works on a machine without GPUs.

    Without an accelerator device, torch.distributed needs the gloo backend, which accelerate
    does not pick for DeepSpeed, and a multi-GPU launch must be told to run DDP on the CPU.
    Both settings change nothing on a GPU machine.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

    no_device = not torch.accelerator.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    return Accelerator(
        cpu=no_device and not deepspeed,  # multi-GPU yaml on CPU: real DDP over gloo, not two lone runs
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        # The loops call train_loader.set_epoch(epoch): with a seedable sampler that reshuffles, in the
        # same order on every rank and again after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        # The loops step the scheduler once per optimizer step, under sync_gradients; accelerate's
        # default would step it once per process on every call.
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if args.torch_compile else "no",  # prepare() compiles the model
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if no_device and deepspeed else [],
    )


def load_tokenizer(name):
    """The tokenizer of a model folder or hub id; a UsageError when the folder has none that works
    (transformers then builds an empty one, or fails deep inside the backend)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError:
        raise  # no such model: load_model says so
    except Exception:  # what a broken or missing tokenizer raises varies by backend
        tokenizer = None
    if tokenizer is None or len(tokenizer) < 2 or not tokenizer("a test")["input_ids"]:
        raise UsageError(f"'{name}' has no working tokenizer (tokenizer.json, or vocab and merges files): save the "
                         "model's tokenizer into the folder (tokenizer.save_pretrained)")
    return tokenizer


def load_model(args, task, extra_positions=0):
    """Tokenizer and sequence-classification model, with a pad token set on both. `extra_positions`:
    the positions a method puts before the input (a prompt, a prefix)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(name)
        positions = getattr(config, "max_position_embeddings", None)
        if positions and args.max_length + extra_positions > positions:
            raise UsageError(f"--max_length {args.max_length}" + (f" + {extra_positions} method positions" if
                             extra_positions else "") + f" is more than the {positions} positions of '{name}'; "
                             f"use --max_length {positions - extra_positions} or less")
        tokenizer = load_tokenizer(name)
        labels = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                                "label2id": {n: i for i, n in enumerate(task.label_names)}}
        # GPT-2's gelu_new runs as about 8 elementwise kernels; gelu_pytorch_tanh is the same formula in
        # one (logits within 1e-6, tested).
        fast = {"activation_function": "gelu_pytorch_tanh"} if getattr(config, "activation_function", None) == \
            "gelu_new" else {}
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=task.num_labels, ignore_mismatched_sizes=args.ignore_mismatched_sizes, **labels, **fast)
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise UsageError(f"'{name}' has a classification head of another size than --task {args.task} needs "
                         f"({task.num_labels} outputs); pass --ignore_mismatched_sizes to start a new head") from None
    except OSError as e:
        hint = ("HF_HUB_OFFLINE=1 is set: pass a local model directory or unset it"
                if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
                else "pass a local model directory, or check the name and your network (HF_HUB_OFFLINE=1 fails fast)")
        raise UsageError(f"cannot load model '{name}' ({str(e).strip().splitlines()[0][:160]}); {hint}")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(f"the tokenizer of '{name}' has neither a pad nor an eos token; "
                             "add a pad token to it and save it")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2: pad with eos; padded positions are masked
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def load_encoder(name, tokenizer):
    """A bare model (no head) that reads the inputs for a method (IDPG's encoder); None for 'self'.
    It reads the backbone's token ids, so its tokenizer must be the backbone's `tokenizer`: the same
    vocabulary and special tokens (a vocabulary of the same size is not enough). A ValueError says
    what to pass instead."""
    from transformers import AutoModel, AutoTokenizer

    if name == "self":
        return None
    try:
        encoder = AutoModel.from_pretrained(name)
        theirs = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise ValueError(f"cannot load encoder '{name}' with its tokenizer ({str(e).splitlines()[0][:160]}); "
                         "pass a local directory or --encoder_name_or_path self") from None
    special = lambda t: {k: getattr(t, k) for k in ("bos_token", "eos_token", "unk_token")}  # noqa: E731
    if theirs.get_vocab() != tokenizer.get_vocab() or special(theirs) != special(tokenizer):
        raise ValueError(f"the encoder '{name}' has another tokenizer than the backbone (vocabulary or special "
                         "tokens differ), so it would read other tokens than the ids it is given; pick an encoder "
                         "of the backbone's family, or --encoder_name_or_path self")
    if encoder.config.vocab_size < len(tokenizer):
        raise ValueError(f"the encoder '{name}' embeds {encoder.config.vocab_size} token ids, fewer than the "
                         f"tokenizer's {len(tokenizer)}; pick another --encoder_name_or_path or 'self'")
    return encoder


def takes_position_ids(model):
    """Whether the model's forward takes position_ids (GPT-2, Llama, BERT do; DistilBERT does not)."""
    import inspect

    return "position_ids" in inspect.signature(model.forward).parameters


def load_splits(args, tokenizer):
    """The tokenized splits of the task as the flags choose them (rows kept, the validation set)."""
    raw = load_glue(args.task, args.data_dir)
    if args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(args.max_train_samples, len(raw["train"]))))
    task = TASKS[args.task]
    for split in task.eval_splits:
        if split in raw and args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
    if args.validation_size is not None:  # never trained on: gone from train before any batch is drawn
        if args.validation_size >= len(raw["train"]):
            raise UsageError(f"--validation_size {args.validation_size} leaves nothing to train on: the "
                             f"training set has {len(raw['train'])} rows; hold out fewer")
        raw["train"], raw[HELD_OUT] = hold_out(raw["train"], args.validation_size, args.seed)
    elif args.validation_dev_half:
        dev = task.eval_splits[0]
        if len(raw[dev]) < 2:
            raise UsageError(f"--validation_dev_half splits the {len(raw[dev])} dev row(s) in two halves; it needs "
                             "at least 2 (raise --max_eval_samples)")
        raw[dev], raw[HELD_OUT] = hold_out(raw[dev], len(raw[dev]) // 2, DEV_HALF_SEED)
    least = 2 if task.is_regression else 1  # a correlation needs two points
    for split in (*task.eval_splits, HELD_OUT):
        if split in raw and len(raw[split]) < least:
            name = "the validation set" if split == HELD_OUT else f"the {split} split"
            raise UsageError(f"{name} has {len(raw[split])} row(s); {args.task}'s {task.metric} needs at least "
                             f"{least} (raise --max_eval_samples or --validation_size)")
    return {s: tokenize(d, args.task, tokenizer, args.max_length) for s, d in raw.items()}


def make_dataloaders(args, accelerator, tokenizer, position_ids=True):
    """Train loader (shuffled) and one loader per eval split; test loaders when --do_predict.

    Each batch holds input_ids, attention_mask, labels, `idx` (the row's position in its file: the
    key that puts predictions back in file order, whatever the file's own index column says; not a
    model input) and, with `position_ids`, positions counted from the
    attention mask (so that left and right padding give the same logits). With --validation_size
    or --validation_dev_half the eval loaders include the validation set, named HELD_OUT."""
    from torch.utils.data import DataLoader

    error = None
    with accelerator.main_process_first():  # the hub's download once; then the others read its cache
        try:
            data = load_splits(args, tokenizer)
        except UsageError as e:  # kept, not raised here: the main process would skip the others' barrier
            error = str(e)
    agree(accelerator, error)  # every rank leaves with the same one line
    task = TASKS[args.task]
    multiple = args.pad_to_multiple_of or (8 if torch.cuda.is_available() else 1)
    collate = Collator(tokenizer.pad_token_id, tokenizer.padding_side, position_ids, multiple)
    # Loaders draw their seeds from their own generator, not from the global RNG that dropout uses:
    # a resumed run then sees the same dropout masks as an uninterrupted one. Pinned memory lets the
    # prepared loaders copy batches to the GPU without blocking (DataLoaderConfiguration(non_blocking)).
    generator = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
    pin = torch.cuda.is_available()
    order = {"shuffle": True, "generator": generator()}
    if args.group_by_length:
        order = {"sampler": LengthGroupedSampler([len(x) for x in data["train"]["input_ids"]],
                                                 args.per_device_train_batch_size, args.seed)}
    train = DataLoader(data["train"], collate_fn=collate, batch_size=args.per_device_train_batch_size,
                       pin_memory=pin, **order)
    splits = [s for s in (*task.eval_splits, HELD_OUT) if s in data] + (
        [s for s in task.test_splits if s in data] if args.do_predict else [])
    if args.do_predict and not any(s in data for s in task.test_splits):
        raise UsageError(f"--do_predict needs the unlabeled test split ({', '.join(task.test_splits)}); none was found")
    evals = {s: DataLoader(data[s], collate_fn=collate, batch_size=args.per_device_eval_batch_size,
                           generator=generator(), pin_memory=pin) for s in splits}
    return train, evals


@torch.no_grad()
def predict(model, loader, accelerator, forward=None):
    """Logits and idx of a whole split, gathered from every rank in file order (by idx), in eval mode.

    `forward(batch) -> logits` lets a method wrap the model; every rank runs the same batches.
    gather_for_metrics drops the duplicated rows that pad an uneven last batch.
    """
    forward = forward or (lambda batch: model(**batch).logits)
    was_training = model.training
    model.eval()
    all_logits, all_idx = [], []
    for batch in loader:
        idx = batch.pop("idx")
        batch.pop("labels")  # no loss needed; test rows have label -1
        logits = forward(batch).float()
        logits, idx = accelerator.gather_for_metrics((logits, idx))
        all_logits.append(logits.cpu())
        all_idx.append(idx.cpu())
    model.train(was_training)
    logits, idx = torch.cat(all_logits), torch.cat(all_idx)
    order = idx.argsort()
    return logits[order], idx[order]


def evaluate(model, loaders, accelerator, task_name, forward=None):
    """Metrics over every labeled eval split: plain keys for the first split, a suffix for the
    others (MNLI: accuracy and accuracy_mm), a `val_` prefix for the validation set (HELD_OUT).
    Also returns the logits per split."""
    task, metrics, logits = TASKS[task_name], {}, {}
    names = {split: ("", "" if i == 0 else "_mm") for i, split in enumerate(task.eval_splits)}
    for split, (prefix, suffix) in {**names, HELD_OUT: ("val_", "")}.items():
        if split not in loaders:
            continue
        logits[split], idx = predict(model, loaders[split], accelerator, forward)
        labels = in_file_order(loaders[split].dataset, idx, "label")
        preds = logits[split].squeeze(-1) if task.is_regression else logits[split].argmax(-1)
        metrics.update({prefix + k + suffix: v for k, v in glue_metrics(task_name, preds.numpy(), labels).items()})
    return metrics, logits


def in_file_order(dataset, idx, column):
    """`column` of `dataset` for the rows `idx` (sorted: as predict returns them), which must be
    every row of the dataset exactly once."""
    rows = torch.tensor(list(dataset["idx"]))  # (list first: torch.tensor turns an exception raised while
    order = rows.argsort()                      # it reads a dataset column, e.g. Ctrl-C, into a TypeError)
    if not torch.equal(rows[order], idx):
        raise RuntimeError(f"the gathered predictions are not every row of the split once ({len(idx)} for "
                           f"{len(order)} rows)")
    values = dataset[column]
    return [values[i] for i in order.tolist()]


def write_predictions(model, loaders, accelerator, args, forward=None):
    """GLUE submission files (OUTPUT_DIR/predictions/<Task>.tsv) for the test split(s)."""
    from common.checkpoint import atomic_write_text

    task = TASKS[args.task]
    names = {"test": task.tsv_dir, "test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}
    for split in task.test_splits:
        if split not in loaders:
            continue
        logits, idx = predict(model, loaders[split], accelerator, forward)
        index = in_file_order(loaders[split].dataset, idx, "index")  # the file's own ids, for GLUE's server
        if task.is_regression:
            preds = [f"{min(max(x, 0.0), 5.0):.3f}" for x in logits.squeeze(-1).tolist()]
        elif args.task in ("mnli", "qnli", "rte"):
            preds = [task.label_names[i] for i in logits.argmax(-1).tolist()]
        else:
            preds = [str(i) for i in logits.argmax(-1).tolist()]
        if accelerator.is_main_process:
            rows = "".join(f"{i}\t{p}\n" for i, p in zip(index, preds))
            atomic_write_text(os.path.join(args.output_dir, "predictions", f"{names[split]}.tsv"),
                              "index\tprediction\n" + rows)


def freeze_backbone(model):
    """Freeze every weight, then unfreeze the classification head (the top-level modules beside
    the backbone: GPT-2 `score`, BERT `classifier`). Returns the head's module names."""
    model.requires_grad_(False)
    heads = [name for name, child in model.named_children()
             if name != model.base_model_prefix and any(True for _ in child.parameters())]
    for name in heads:
        getattr(model, name).requires_grad_(True)
    return heads


def split_params(model, inner):
    """The parameters of `model` outside its submodule `inner` (a wrapper's own: prompt, prefix,
    generator) and those inside it (the wrapped model's: its trainable head)."""
    inside = {id(p) for p in inner.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in inside], [p for p in params if id(p) in inside]


def count_params(model):
    """(trainable, total), also for ZeRO-3 partitioned parameters (ds_numel is the full size)."""
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731
    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


def adamw(groups, args):
    """AdamW with --learning_rate and --adam_epsilon over `groups`; on a GPU its fused kernel (one
    kernel for every parameter instead of several per tensor)."""
    return torch.optim.AdamW(groups, lr=args.learning_rate, eps=args.adam_epsilon, fused=torch.cuda.is_available())


def optimizer_groups(params, weight_decay, **options):
    """AdamW parameter groups of the trainable ones among `params`: weight decay on matrices only,
    none on biases and norms; `options` (e.g. lr) go in both groups. Shapes are read from ds_shape
    when ZeRO-3 has partitioned a parameter (its .shape is then [0]); empty groups are left out."""
    params = [p for p in params if p.requires_grad]
    is_matrix = lambda p: len(getattr(p, "ds_shape", p.shape)) >= 2  # noqa: E731
    groups = [{"params": [p for p in params if is_matrix(p)], "weight_decay": weight_decay, **options},
              {"params": [p for p in params if not is_matrix(p)], "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]
