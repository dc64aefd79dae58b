"""LoRA: fine-tune a frozen model through trainable low-rank updates of chosen projections.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685

A pretrained projection W (d_in -> d_out) is frozen and a low-rank update is learned beside it:

    y = W x + (alpha / r) * B A dropout(x)      A: r x d_in (Kaiming uniform), B: d_out x r (zeros)

so training starts exactly at the pretrained model, and only r (d_in + d_out) numbers per projection (plus the
classification head) train. GPT-2's fused q|k|v projection `c_attn`: `--lora_slices q,v` (its default, as in the
paper) gives the q and v thirds a pair each, `--lora_slices fused` one pair for the whole (as peft). `--merge_and_save
DIR` writes a plain model with the update merged into W; OUTPUT_DIR/peft/ loads with peft.PeftModel.from_pretrained.

The variants peft has: `--use_dora` (DoRA, Liu et al. 2024: W' = m (W + s B A) / ||W + s B A||, a trained magnitude
m per output column), `--use_rslora` (rsLoRA, Kalajdzievski 2023: s = alpha / sqrt(r)), and `--loraplus_lr_ratio 16`
(LoRA+, Hayou et al. 2024: B learns 16 times faster than A).

    python train_lora.py --task rte --lora_r 8
    accelerate launch --config_file accelerate_configs/zero3.yaml train_lora.py --task rte \
        --model_name_or_path gpt2-xl --lora_r 24    # the original's 0.47%: 7,372,800 LoRA weights
"""

import os

from common.args import base_parser, check_args, require
from common.errors import fail, parse_command_line
from common.outputs import in_checkpoint, inside, owner, same_path, why_not_writable


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=5e-4)
    add = parser.add_argument
    add("--lora_r", type=int, default=8, help="the rank of each update")
    add("--lora_alpha", type=float, default=16, help="the update is scaled by alpha / r")
    add("--lora_dropout", type=float, default=0.0, help="dropout on the update's input")
    add("--lora_targets", default=None, help="modules to adapt, a,b; none: the model type's")
    add("--lora_slices", default=None, help="GPT-2's c_attn: slices (q,v) or fused; none: q,v")
    add("--use_dora", action="store_true", help="DoRA: a trained magnitude per adapted output column")
    add("--use_rslora", action="store_true", help="rsLoRA: the update scaled by alpha / sqrt(r)")
    add("--loraplus_lr_ratio", type=float, default=None, help="LoRA+: B's rate is this times --learning_rate")
    add("--merge_and_save", default=None, metavar="DIR", help="a plain model, the update merged in")
    args = check_args(parser, argv, "lora")
    require(parser, args, "at least 1", "lora_r")
    require(parser, args, "positive", "lora_alpha", "loraplus_lr_ratio")
    require(parser, args, "fraction", "lora_dropout")
    if args.merge_and_save:  # (one folder, whatever the working folder: the output folder claims it as written)
        args.merge_and_save = os.path.abspath(args.merge_and_save)
        check_merge_target(args.merge_and_save, args.model_name_or_path, args.output_dir)
    return args


def check_merge_target(target, base, output_dir):
    """--merge_and_save writes a model folder: never over the base model, another model or another run's files."""
    if os.path.isdir(base) and same_path(target, base):
        fail(f"--merge_and_save {target} is the base model's folder: the merge would replace it; pass a new one")
    held = sorted(os.listdir(target)) if os.path.isdir(target) else []  # (a merge writes config, weights, tokenizer)
    if held and not inside(target, output_dir):
        fail(f"--merge_and_save {target} already holds {held[0]} (a model, a run's or your files); pass a new folder")
    if in_checkpoint(target):
        fail(f"--merge_and_save {target} lies in a run's checkpoint folder; pass a folder of its own")
    if owner(target) not in (None, os.path.realpath(output_dir)):
        fail(f"--merge_and_save {target} is an output of the run in {owner(target)}; pass a folder of its own")
    if why := why_not_writable(target):
        fail(f"cannot write to --merge_and_save {target} ({why}); pass a folder you can write to")


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import json
import math
import time

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.pytorch_utils import Conv1D

from common import checkpoint, data, evaluation, loop, models, results
from common.checkpoint import whole
from common.errors import run_main, stop_on_signals, usage_errors
from common.outputs import atomic_write_text

# Default projections per model type, and the fused projections whose output is [q | k | v].
DEFAULT_TARGETS = {"gpt2": "c_attn", "bert": "query,value", "roberta": "query,value"}
DEFAULT_TARGETS.update(dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma"), "q_proj,v_proj"))
FUSED = {"c_attn": ("q", "k", "v")}


class LoRALinear(nn.Module):
    """Wraps a frozen nn.Linear or GPT-2 Conv1D (weight stored [in, out]) and adds s B A x. `slices`: the parts of a
    fused q|k|v output that get a pair each (by default one pair, the whole output). Sizes come from the layer's
    attributes, never weight.shape ([0] under ZeRO-3). `rslora`: s = alpha / sqrt(r). `dora`: DoRA (below)."""

    def __init__(self, base_layer, r, alpha, dropout=0.0, n_parts=1, slices=(0,), rslora=False, dora=False):
        super().__init__()
        self.base_layer, self.conv1d = base_layer, isinstance(base_layer, Conv1D)
        sizes = (base_layer.nx, base_layer.nf) if self.conv1d else (base_layer.in_features, base_layer.out_features)
        self.d_in, d_out = sizes
        self.r, self.alpha, self.rslora, self.scale = r, alpha, rslora, alpha / (math.sqrt(r) if rslora else r)
        self.n_parts, self.slices, self.part = n_parts, tuple(slices), d_out // n_parts  # part: one slice's width
        # One pair per adapted slice, stacked: A [slices, r, d_in], B [slices, part, r], owned by this layer (ZeRO-3
        # gathers what a module owns when it runs; a ParameterList's weights joined late and broke a resumed run's
        # backward). In the base weight's dtype: ZeRO-3 + bf16 loads the model in bf16 and casts nothing after.
        dtype = base_layer.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(len(slices), r, self.d_in, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(len(slices), self.part, r, dtype=dtype))
        for A in self.lora_A.data:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # each A as nn.Linear and peft start theirs
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # The adapted slices' output columns, in order (q, v of [q | k | v]: 0..d-1, 2d..3d-1).
        columns = torch.cat([torch.arange(s * self.part, (s + 1) * self.part) for s in self.slices])
        self.register_buffer("columns", columns, persistent=False)
        self.lora_magnitude = None
        if dora:  # DoRA: ||W||^2 of each output column, once (the weight whole: a collective under ZeRO-3)
            with torch.no_grad(), whole([base_layer.weight]) as (weight,):
                squares = weight.float().pow(2).sum(0 if self.conv1d else 1)
            self.lora_magnitude = nn.Parameter(squares[columns].sqrt().to(dtype))  # m = ||W||: the model as it was
            self.register_buffer("weight_squares", squares, persistent=False)  # [d_out]

    def forward(self, x):
        y = self.base_layer(x)
        x = self.dropout(x)  # then B (A x) for each slice, side by side: thin matmuls, never B A
        update = torch.cat([F.linear(F.linear(x, A), B) * self.scale for A, B in zip(self.lora_A, self.lora_B)], -1)
        if self.lora_magnitude is not None:  # DoRA
            update = self.dora(y, x, update)
        # Slices: each update into its columns of y, out of place (y is neither split nor concatenated).
        return y + update if self.n_parts == 1 else y.index_add(-1, self.columns, update)

    def dora(self, y, x, update):
        """DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353): W' = m (W + s B A) / ||W + s B A||, the norm per
        column, detached (section 4.3, as peft); adds k z - W x to y = W x + b in adapted columns, z = W x + s B A x,
        k = m / norm (W x of the dropped-out x, as peft): backward keeps z alone (peft's form, two). The norm never
        forms W: ||W||^2 (kept) + 2 s (B * (A W^T)^T).sum + s^2 ||B A||^2, A W^T from the base layer run on A's rows
        (ZeRO-3 and FSDP2 gather W as for any input); in fp32, floored at 1e-6: a zero column of W stays finite."""
        with torch.no_grad():  # the norm is detached, and b is frozen
            A, B = self.lora_A.float(), self.lora_B.float()
            probe = torch.cat([self.lora_A.reshape(-1, self.d_in), self.lora_A.new_zeros(1, self.d_in)])
            out = self.base_layer(probe.to(x.dtype)).float()  # [slices r + 1, d_out]: A W^T + b, and b
            bias = out[-1, self.columns]
            AW = (out[:-1] - out[-1]).reshape(len(self.slices), self.r, -1)  # [slices, r, d_out]
            AW = torch.stack([AW[i, :, s * self.part : (s + 1) * self.part] for i, s in enumerate(self.slices)])
            cross = (B * AW.transpose(1, 2)).sum(-1)  # [slices, part]: each column of W . each column of B A
            BA = (B @ (A @ A.transpose(1, 2)) * B).sum(-1)  # ||B A||^2 of each column, from the r x r Gram matrix
            norm2 = self.weight_squares[self.columns] + (2 * self.scale * cross + self.scale**2 * BA).reshape(-1)
        k = self.lora_magnitude.float() / norm2.clamp(min=1e-12).sqrt()
        base = (y[..., self.columns] if self.n_parts > 1 else y) - bias
        if isinstance(self.dropout, nn.Dropout) and self.training:  # W x of the x the update read
            base = (self.base_layer(x)[..., self.columns] if self.n_parts > 1 else self.base_layer(x)) - bias
        return (k * (base + update.float()) - base).to(y.dtype)  # (base is fp32: b is)

    def add_delta(self, weight, lora_A, lora_B, magnitude=None):
        """Add s B A, per slice, to a whole weight in the base layer's layout (lora_A, lora_B: this layer's, whole);
        with DoRA's `magnitude`, each adapted column of W + s B A is then scaled to it."""
        for i, (s, A, B) in enumerate(zip(self.slices, lora_A, lora_B)):
            delta = (B.to(weight) @ A.to(weight)) * self.scale  # [part, d_in]
            rows = slice(s * self.part, (s + 1) * self.part)
            block = weight[:, rows] if self.conv1d else weight[rows]
            block.add_(delta.t() if self.conv1d else delta)
            if magnitude is not None:
                norm = block.pow(2).sum(0 if self.conv1d else 1).clamp(min=1e-12).sqrt()
                m = magnitude[i * self.part : (i + 1) * self.part].to(weight)
                block.mul_((m / norm)[None] if self.conv1d else (m / norm)[:, None])


def add_lora(model, targets, r=8, alpha=16, dropout=0.0, slices=None, rslora=False, dora=False):
    """Wrap each target projection of the backbone (its name's last part) in a LoRALinear; `slices`: fused parts."""
    backbone = model.base_model  # the head trains whole (RoBERTa's classifier.dense too, beside its layers' dense)
    for name, module in list(backbone.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in targets or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        parts = FUSED.get(leaf) if slices else None
        kw = {"n_parts": len(parts), "slices": [parts.index(p) for p in slices]} if parts else {}
        parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
        setattr(parent, leaf, LoRALinear(module, r, alpha, dropout, **kw, rslora=rslora, dora=dora))


def resolve_targets(model, targets=None, slices=None):
    """The target names and slices for this model (None: its type's defaults); a ValueError says what to pass."""
    kind = model.config.model_type
    targets = targets or DEFAULT_TARGETS.get(kind)
    modules = model.base_model.named_modules()  # the backbone's: the head trains whole
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules if isinstance(m, (nn.Linear, Conv1D))})
    if targets is None:
        available = ",".join(leaves)
        raise ValueError(f"no default LoRA targets for model type '{kind}'; pass --lora_targets from: {available}")
    targets = targets.split(",")
    if not set(targets) <= set(leaves):
        missing = ",".join(sorted(set(targets) - set(leaves)))
        raise ValueError(f"--lora_targets {missing} not in the model's backbone; choose from: {','.join(leaves)}")
    fused = [t for t in targets if t in FUSED]
    slices = slices or ("q,v" if fused else "fused")
    if slices == "fused":
        return targets, None
    if not fused:
        raise ValueError(f"--lora_slices applies to a fused q|k|v projection ({', '.join(FUSED)}); none is targeted")
    names, parts = slices.split(","), FUSED[fused[0]]
    if not set(names) <= set(parts) or len(set(names)) < len(names):
        raise ValueError(f"--lora_slices takes distinct names from {','.join(parts)} or 'fused', got '{slices}'")
    return targets, names


def add_method(model, lora_targets, lora_slices, lora_r, lora_alpha, lora_dropout, use_rslora, use_dora):
    """LoRA on a loaded model as the flags of the same names ask (predict.py rebuilds a run with this): the backbone
    frozen, the targets wrapped."""
    targets, slices = resolve_targets(model, lora_targets, lora_slices)
    models.freeze_backbone(model)
    add_lora(model, targets, lora_r, lora_alpha, lora_dropout, slices, rslora=use_rslora, dora=use_dora)
    return model


def merged_state(accelerator, model):
    """A plain transformers model's weights, every update folded into its base weight, on the main process ({} on the
    others). Every rank calls this: under ZeRO-3 and FSDP2 each weight is gathered in turn with its pair."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    lora = {f"{n}.base_layer.weight": m for n, m in unwrapped.named_modules() if isinstance(m, LoRALinear)}
    state = {}
    for name, param in unwrapped.named_parameters():
        if ".lora_" in name:
            continue
        m = lora.get(name)
        ours = [p for p in (m.lora_A, m.lora_B, m.lora_magnitude) if p is not None] if m else []  # (DoRA: and m)
        with whole([param, *ours]) as (weight, *pair):
            weight = weight.detach().float().clone()
            if m is not None:
                m.add_delta(weight, *pair)  # (DoRA: each column scaled to its magnitude)
            if accelerator.is_main_process:
                state[name.replace(".base_layer.", ".")] = weight.to(param.dtype).cpu()
    return state


def peft_export(path, layers, trained, head, base_model):
    """OUTPUT_DIR/peft: a peft adapter for PeftModel.from_pretrained(base, path). `layers` {name: LoRALinear},
    `trained` their tensors, `head` the head's. k slices of rank r are one pair of rank k r: A stacked, B block by
    block (zeros for the slices left alone), alpha times k (rsLoRA: sqrt(k)), so the scale stays (peft's rank_pattern
    and alpha_pattern). DoRA's magnitudes cover the whole output: a column left alone keeps ||W|| (its factor is 1)."""
    state = {f"base_model.model.{n}": t for n, t in head.items()}
    any_layer = next(iter(layers.values()))
    r, alpha, rslora, dora = any_layer.r, any_layer.alpha, any_layer.rslora, any_layer.lora_magnitude is not None
    ranks = {name: len(m.slices) for name, m in layers.items()}  # adapted slices per layer
    for name, m in layers.items():
        k = ranks[name]
        A = trained[f"{name}.lora_A"].reshape(k * r, -1)
        B = torch.zeros(m.part * m.n_parts, r * k, dtype=A.dtype)
        for i, s in enumerate(m.slices):
            B[s * m.part : (s + 1) * m.part, i * r : (i + 1) * r] = trained[f"{name}.lora_B"][i]
        state[f"base_model.model.{name}.lora_A.weight"] = A
        state[f"base_model.model.{name}.lora_B.weight"] = B
        if dora:
            magnitude = m.weight_squares.detach().float().sqrt().cpu()
            magnitude[m.columns.cpu()] = trained[f"{name}.lora_magnitude"].float()
            state[f"base_model.model.{name}.lora_magnitude_vector"] = magnitude.to(A.dtype)
    config = dict(peft_type="LORA", task_type="SEQ_CLS", base_model_name_or_path=base_model, inference_mode=True)
    config.update(r=r, lora_alpha=alpha, lora_dropout=getattr(any_layer.dropout, "p", 0.0), use_rslora=rslora)
    config.update(target_modules=list(ranks), bias="none", modules_to_save=sorted({n.split(".")[0] for n in head}))
    config.update(rank_pattern={n: r * k for n, k in ranks.items()}, use_dora=dora, fan_in_fan_out=any_layer.conv1d)
    config.update(alpha_pattern={n: alpha * (math.sqrt(k) if rslora else k) for n, k in ranks.items()})
    atomic_write_text(f"{path}/adapter_config.json", json.dumps(config, indent=2) + "\n")
    checkpoint.atomic_save_tensors(f"{path}/adapter_model.safetensors", state)


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer, the model with LoRA added (its
    trainable weights in fp32, AdamW's state too, whatever the checkpoint's dtype) and the head's module names."""
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
    heads = models.head_names(model)  # LoRA: the head's modules, exported beside the pairs
    # LoRA: freeze the backbone, wrap the target projections; the pairs and the head train.
    with usage_errors():  # a model without the targets: a one-line error
        model = add_method(
            model, lora_targets=args.lora_targets, lora_slices=args.lora_slices, lora_r=args.lora_r,
            lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, use_rslora=args.use_rslora,
            use_dora=args.use_dora,
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
    # OUTPUT_DIR claimed: its lock held until this block ends, the checkpoint to resume checked; LoRA's exports among
    # what the run writes (the merged folder is the run's only if it lies inside)
    with loop.OutputDir(
        accelerator, "lora", vars(args), output_dir=args.output_dir, outputs=["peft", args.merge_and_save],
        overwrite=args.overwrite_output_dir, resume=args.resume_from_checkpoint, predict=args.do_predict,
        tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model, heads = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        lora_params = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)  # LoRA: its size
        wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
        accelerator.print(f"LoRA: {lora_params:,} weights in {len(wrapped)} modules; {models.describe(model)}")

        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, task=task, position_ids=models.takes_position_ids(model),
            max_length=args.max_length, per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        groups = models.optimizer_groups(model.parameters(), args.weight_decay)
        if args.loraplus_lr_ratio:  # LoRA+: B and the 1-D weights (DoRA's magnitudes) at ratio x the rate, as peft
            faster = [p for n, p in model.named_parameters() if n.endswith(".lora_B") or len(models.shape(p)) == 1]
            rest = [p for p in model.parameters() if all(p is not q for q in faster)]
            groups = models.optimizer_groups(rest, args.weight_decay)
            groups += models.optimizer_groups(faster, args.weight_decay, args.learning_rate * args.loraplus_lr_ratio)
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
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        # LoRA: a plain model, the update merged in (every rank gathers the weights: a collective); the peft adapter.
        if args.merge_and_save:
            merged = merged_state(accelerator, model)
            if accelerator.is_main_process:
                checkpoint.transformers_folder(args.merge_and_save, merged, unwrapped.config, tokenizer)
        if accelerator.is_main_process:
            layers = {n: m for n, m in unwrapped.named_modules() if isinstance(m, LoRALinear)}
            head = checkpoint.head_of(trained, heads)
            peft_export(f"{args.output_dir}/peft", layers, trained, head, args.model_name_or_path)
        results.write_results(
            accelerator, state, model, args.output_dir, method="lora", task=task, model_name=args.model_name_or_path,
            metrics=metrics, logits=logits, train_loader=train_loader, eval_loaders=eval_loaders, runtime=runtime,
            start_size=start_size, learning_rates={"learning_rate": args.learning_rate},
            max_grad_norm=args.max_grad_norm,
            extra={"precision": models.precision(accelerator, model, optimizer), "lora_params": lora_params},
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
