"""Adapters: small trained bottleneck networks inserted into a frozen model (Houlsby, Pfeiffer).

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", https://arxiv.org/abs/1902.00751
Pfeiffer et al. 2020, "AdapterFusion", https://arxiv.org/abs/2005.00247 (the one-adapter layout)

An adapter maps a hidden state h to h + up(act(down(h))), with down: d -> m and up: m -> d, m = d /
--reduction_factor (16). Its weights start near zero, so a fresh adapter is nearly the identity and training starts
at the pretrained model. The backbone is frozen. The rate is 1e-3; Houlsby's default is no gradient clipping
(Pfeiffer's: at 1.0, the scripts' default): on SmolLM2 SST-2 clipped at 1.0 it predicted one class at 1e-3 and 3e-3,
and reached 82% at 1e-4, 88% unclipped.

  --variant houlsby  two adapters per layer (swish): after the attention output projection and after the
                     feed-forward output projection, before their residual adds; the layer norms train
                     too (--freeze_layer_norms to keep them fixed)
  --variant pfeiffer one adapter per layer (ReLU) after the feed-forward block, as AdapterHub's SeqBnConfig
                     places it: on the residual stream after the block (pre-LN GPT-2, Llama), and inside
                     the output layer norm (post-LN BERT: LN(s + A(LN(s))))

    Houlsby:  x -> attention -> c_proj -> [+ A_attn] -> +x -> ln -> MLP -> c_proj -> [+ A_ffn] -> +
    Pfeiffer: x -> attention -> +x -> ln -> MLP -> + -> [+ A]

Adapters go in by wrapping modules of each layer (never by editing model classes).

    python train_adapter.py --task rte --variant houlsby
    accelerate launch --config_file accelerate_configs/zero3.yaml train_adapter.py --task rte --variant pfeiffer
"""

import argparse

from common.args import base_parser, check_args, require
from common.errors import parse_command_line


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3, max_grad_norm=None)  # clipping by variant, below
    parser._option_string_actions["--max_grad_norm"].help += "; none: 0 for houlsby, 1.0 for pfeiffer"
    add = parser.add_argument
    add("--variant", choices=["houlsby", "pfeiffer"], default="houlsby", help="where the adapters go")
    add("--reduction_factor", type=int, default=16, help="the bottleneck m = d / reduction_factor")
    add("--adapter_size", type=int, default=None, help="the bottleneck m (overrides the factor)")
    add("--freeze_layer_norms", action="store_true", help="Houlsby: keep the layer norms frozen")
    add(
        "--ln_before", action=argparse.BooleanOptionalAction, default=None,
        help="a LayerNorm on each adapter's input; none: where it reads the residual stream",
    )  # fmt: skip
    args = check_args(parser, argv, "adapter")
    require(parser, args, "at least 1", "reduction_factor", "adapter_size")
    if args.max_grad_norm is None:  # clipped at 1.0, Houlsby learned nothing (the docstring's numbers)
        args.max_grad_norm = 0.0 if args.variant == "houlsby" else 1.0
    return args


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import math
import time

from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

import adapterhub
from common import checkpoint, data, evaluation, loop, models, results
from common.errors import run_main, stop_on_signals, usage_errors

# Where the adapters go, per model type, as paths inside each layer ("" is the layer itself).
DECODER = {"houlsby": ("self_attn.o_proj", "mlp.down_proj"), "pfeiffer": ("",)}
POST_LN = {"houlsby": ("attention.output.dense", "output.dense"), "pfeiffer": ("output.LayerNorm",)}
LAYOUT = {
    "gpt2": {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("",)},
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma"), DECODER),
    **dict.fromkeys(("bert", "roberta"), POST_LN),
}


class Bottleneck(nn.Module):
    """up(act(down(h))): d -> m -> d, initialised near zero as Houlsby et al.: truncated normal weights (std 0.01,
    cut at 2 std), zero biases. `norm`: a LayerNorm (weight 1, bias 0) on h first (AdapterHub's ln_before)."""

    def __init__(self, d, m, act, dtype, norm=False):
        super().__init__()
        self.norm = nn.LayerNorm(d, dtype=dtype) if norm else nn.Identity()
        self.down = nn.Linear(d, m, dtype=dtype)
        self.act = act
        self.up = nn.Linear(m, d, dtype=dtype)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(layer.bias)

    def forward(self, h):
        return self.up(self.act(self.down(self.norm(h))))


class AdapterAfter(nn.Module):
    """Wraps a module: its output h becomes h + adapter(h) (the first element of a tuple output)."""

    def __init__(self, base_layer, adapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.adapter(out[0]), *out[1:])
        return out + self.adapter(out)


class AdapterInNorm(AdapterAfter):
    """Wraps a post-LN layer norm: s -> LN(s + adapter(LN(s))), AdapterHub's Pfeiffer in BERT."""

    def forward(self, s):
        return self.base_layer(s + self.adapter(self.base_layer(s)))


def add_adapters(model, variant="houlsby", m=64, train_layer_norms=False, ln_before=False):
    """Wrap the places of LAYOUT in every layer with bottlenecks of width m; returns the wrapped module names.
    `ln_before`: a LayerNorm on each adapter's input; None: only where it reads the residual stream itself (Pfeiffer
    on a pre-LN model, whose stream is not normalized: SmolLM2-135M's has an RMS of about 170 from its 12th layer on,
    with entries near 26,000). A model type without a layout is a ValueError."""
    kind = model.config.model_type
    if kind not in LAYOUT:
        raise ValueError(f"no adapter layout for model type '{kind}'; supported: {', '.join(LAYOUT)}")
    if train_layer_norms:  # Houlsby trains the layer norms too
        for module in model.base_model.modules():
            if "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    layers = next(mod for mod in model.base_model.modules() if isinstance(mod, nn.ModuleList))
    act = nn.SiLU() if variant == "houlsby" else nn.ReLU()
    d, dtype = model.config.hidden_size, models.param_dtype(model)
    wrapped = []
    for i in range(len(layers)):
        for path in LAYOUT[kind][variant]:
            name = f"{i}.{path}".rstrip(".")
            parent, _, leaf = name.rpartition(".")
            owner = layers.get_submodule(parent) if parent else layers
            wrapper = AdapterInNorm if leaf == "LayerNorm" else AdapterAfter
            norm = path == "" if ln_before is None else ln_before  # "": the layer's own output
            setattr(owner, leaf, wrapper(owner.get_submodule(leaf), Bottleneck(d, m, act, dtype, norm)))
            wrapped.append(name)
    return wrapped


def add_method(model, variant, reduction_factor, adapter_size, freeze_layer_norms, ln_before):
    """Adapters on a loaded model as the flags of the same names ask (predict.py rebuilds a run with this)."""
    d = model.config.hidden_size
    m = adapter_size or d // reduction_factor
    if m < 1:
        raise ValueError(
            f"--reduction_factor {reduction_factor} leaves no bottleneck (hidden size {d}); use at most {d}, or "
            "--adapter_size"
        )
    models.freeze_backbone(model)
    norms = variant == "houlsby" and not freeze_layer_norms  # Houlsby trains the layer norms
    add_adapters(model, variant, m, train_layer_norms=norms, ln_before=ln_before)
    return model


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer and the model with the method added
    (the backbone frozen), as the flags ask; the trainable weights in fp32 (AdamW's state too), whatever the
    checkpoint's dtype. Also the head's module names."""
    task, splits = data.load_data(  # GLUE's, or your own data's files, every one read and checked
        accelerator, args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file, text_columns=args.text_columns,
        label_column=args.label_column, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half, seed=args.seed, do_predict=args.do_predict,
    )  # fmt: skip
    tokenizer, model = models.load_model(
        args.model_name_or_path, task, args.max_length, dtype=args.base_dtype,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
    )  # fmt: skip

    # Adapters: freeze the backbone, wrap each layer's places with a bottleneck adapter.
    heads = models.head_names(model)
    with usage_errors():  # no bottleneck, a model type without an adapter layout: one line
        model = add_method(
            model, variant=args.variant, reduction_factor=args.reduction_factor, adapter_size=args.adapter_size,
            freeze_layer_norms=args.freeze_layer_norms, ln_before=args.ln_before,
        )  # fmt: skip
    if args.gradient_checkpointing:  # activations recomputed in the backward pass: less memory, more time
        models.checkpoint_activations(model)
    models.upcast_trainable(model, accelerator)
    return task, splits, tokenizer, model, heads


def main(args):
    # (under DeepSpeed, its JSON found from any folder; on a CPU without GPUs, FSDP2 over gloo: make_accelerator says)
    accelerator = loop.make_accelerator(
        args.output_dir, args.max_grad_norm, args.ddp_timeout, args.with_tracking, args.report_to, args.torch_compile
    )
    # OUTPUT_DIR claimed: its lock held until this block ends, the checkpoint to resume checked; Adapters: its export
    with loop.OutputDir(
        accelerator, "adapter", vars(args), output_dir=args.output_dir, outputs=["adapterhub"],
        overwrite=args.overwrite_output_dir, resume=args.resume_from_checkpoint, predict=args.do_predict,
        tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model, heads = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        adapters = [a for a in model.modules() if isinstance(a, Bottleneck)]  # Adapters: how many, how wide
        m = adapters[0].down.out_features
        accelerator.print(f"{args.variant}: {len(adapters)} adapters of bottleneck {m}; {models.describe(model)}")

        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, position_ids=models.takes_position_ids(model), task=task,
            max_length=args.max_length, per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        groups = models.optimizer_groups(model.parameters(), args.weight_decay)
        optimizer = models.adamw(groups, args.learning_rate, args.adam_epsilon, accelerator)
        state = loop.TrainState(  # what the loop carries: the step, the log, the best evaluation, ...
            accelerator.device,
            *loop.count_steps(len(train_loader), accelerator, args.num_train_epochs, args.max_train_steps),
        )
        stop_on_signals(state.note)  # Ctrl-C and SIGTERM say where the last checkpoint is
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, state.max_steps)
        model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
            model, optimizer, train_loader, scheduler, *eval_loaders.values()
        )
        eval_loaders = dict(zip(eval_loaders, loaders))
        if run_dir.resume_from:  # the model, optimizer, scheduler, random states and the loop's state
            checkpoint.load_checkpoint(accelerator, run_dir.resume_from, state)
        # Only now, everything loaded and checked, does an earlier run's output make way for this run's.
        run_dir.take(task, train_loader, eval_loaders)
        evaluation.preflight(model, eval_loaders, accelerator, task)  # two batches: a broken evaluation fails now

        start_size = results.weights_size(accelerator, model)  # did the weights move? (results.json says)
        metrics, logits, runtime = train(
            args, task, accelerator, run_dir, state, model, optimizer, scheduler, train_loader, eval_loaders, names
        )
        trained = checkpoint.save_trainable(
            accelerator, model, names, f"{args.output_dir}/trainable.safetensors", run_dir.args_json
        )
        if args.do_predict:  # GLUE submission files for the test split
            evaluation.write_predictions(model, eval_loaders, accelerator, task, args.output_dir)
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)  # Adapters: AdapterHub's format
        if accelerator.is_main_process and unwrapped.config.model_type in adapterhub.ADAPTERHUB:
            head = checkpoint.head_of(trained, heads)
            path, base = f"{args.output_dir}/adapterhub", args.model_name_or_path
            if adapterhub.export(path, trained, head, unwrapped, args.variant, m, base):
                accelerator.print(
                    "AdapterHub's format has no place for the trained layer norms: they are in "
                    "adapterhub/layer_norms.safetensors (or pass --freeze_layer_norms)"
                )
        results.write_results(
            accelerator, state, model, args.output_dir, method="adapter", task=task,
            model_name=args.model_name_or_path, metrics=metrics, logits=logits, train_loader=train_loader,
            eval_loaders=eval_loaders, start_size=start_size, runtime=runtime,
            learning_rates={"learning_rate": args.learning_rate}, max_grad_norm=args.max_grad_norm,
            extra={"precision": models.precision(accelerator, model, optimizer), "variant": args.variant},
        )  # fmt: skip


def train(args, task, accelerator, run_dir, state, model, optimizer, scheduler, train_loader, eval_loaders, names):
    """The loop: every epoch, less what a resumed run did, until the last step or early stopping. Returns the last
    evaluation (metrics, logits) and the seconds spent training. `names`: the trainable weights, kept in best/."""
    best_file = loop.best_path(args.output_dir)
    best_metric = evaluation.selected_metric(task, eval_loaders)  # the metric that picks best/ and stops early
    eval_every = args.eval_steps or state.steps_per_epoch
    bar = tqdm(total=state.max_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    started, metrics = time.perf_counter(), None
    for epoch in range(state.step // state.steps_per_epoch, math.ceil(state.max_steps / state.steps_per_epoch)):
        if state.finished:  # early stopping (or a resumed run that had stopped)
            break
        model.train()
        train_loader.set_epoch(epoch)  # a new shuffle, the same on every rank and after a resume
        batches_done = (state.step - epoch * state.steps_per_epoch) * accelerator.gradient_accumulation_steps
        for batch in accelerator.skip_first_batches(train_loader, batches_done) if batches_done else train_loader:
            batch.pop("idx")  # the rows' positions in their file: not an input of the model
            with accelerator.accumulate(model):  # syncs the gradients and steps only every Nth batch
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:  # (DeepSpeed clips in its own step)
                    state.grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()  # (between those, accumulate makes this and zero_grad no-ops)
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()  # once per optimizer step (fp16: not after a step its scaler skipped)
                optimizer.zero_grad()
            state.count(loss, batch["attention_mask"])
            if not accelerator.sync_gradients:
                continue  # the gradients accumulate: no optimizer step yet
            state.step += 1
            bar.update(1)
            if state.step % args.logging_steps == 0:
                loop.log_loss(accelerator, state, bar)
            paused = time.perf_counter()  # evaluating and saving is not training time
            if state.step % eval_every == 0 or state.step == state.max_steps:
                metrics, logits = evaluation.evaluate(model, eval_loaders, accelerator, task)
                if loop.log_evaluation(accelerator, state, metrics, best_metric, bar):  # the best so far
                    checkpoint.save_trainable(accelerator, model, names, best_file, run_dir.args_json)
                loop.stop_early(state, args.early_stopping_patience, best_metric, bar)
            if loop.checkpoint_due(state, args.checkpointing_steps):
                checkpoint.save_checkpoint(accelerator, run_dir, state, best_file, args.checkpoints_total_limit)
            state.aside += time.perf_counter() - paused
            if state.finished:
                break
    bar.close()
    runtime = time.perf_counter() - started - state.aside
    if metrics is None:  # a resumed run that had no step left
        metrics, logits = evaluation.evaluate(model, eval_loaders, accelerator, task)
    return metrics, logits, runtime


if __name__ == "__main__":
    run_main(lambda: main(args))
