"""LoRA: fine-tune a frozen model through trainable low-rank updates of chosen projections.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685

A pretrained projection W (d_in -> d_out) is frozen and a low-rank update is learned beside it:

    y = W x + (alpha / r) * B A dropout(x)        A: r x d_in (Kaiming uniform), B: d_out x r (zeros)

so training starts exactly at the pretrained model, and only r (d_in + d_out) numbers per
projection (plus the classification head) are trained. GPT-2 computes q, k and v with one fused
projection `c_attn`; `--lora_slices q,v` (the default for GPT-2, as in the paper) gives the q and v
thirds their own pair, `--lora_slices fused` one pair for the whole matrix (what peft does).
`--merge_and_save DIR` writes a plain model with the update merged into W (no cost at inference);
OUTPUT_DIR/peft/ loads with peft.PeftModel.from_pretrained.

    python train_lora.py --task rte --lora_r 8
    accelerate launch --config_file accelerate_configs/zero3.yaml train_lora.py --task rte \
        --model_name_or_path gpt2-xl --lora_r 24        # the seed's 0.47%: 7,372,800 LoRA weights
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn
from transformers import get_scheduler
from transformers.pytorch_utils import Conv1D

from common.checkpoint import atomic_save_tensors, atomic_write_text, save_model_folder, trainable_names
from common.data import get_task
from common.errors import fail, run_main, usage_errors
from common.launch import (adamw, base_parser, check_args, count_params, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, takes_position_ids)
from common.outputs import in_checkpoint, inside, same_path, writable
from common.run import Run

# Default projections per model type, and the fused projections whose output is [q | k | v].
DEFAULT_TARGETS = {"gpt2": "c_attn", "bert": "query,value", "roberta": "query,value",
                   **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma"), "q_proj,v_proj")}
FUSED = {"c_attn": ("q", "k", "v")}


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=5e-4)
    parser.add_argument("--lora_r", type=int, default=8, help="rank of each update")
    parser.add_argument("--lora_alpha", type=float, default=16, help="the update is scaled by alpha / r")
    parser.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the LoRA input")
    parser.add_argument("--lora_targets", default=None,
                        help="comma-separated module names to adapt (default per model type: GPT-2 c_attn, "
                             "BERT query,value, Llama-style q_proj,v_proj)")
    parser.add_argument("--lora_slices", default=None,
                        help="for a fused q|k|v projection (GPT-2 c_attn): the slices to adapt, e.g. q,v "
                             "(default for GPT-2), or 'fused' for one pair on the whole matrix")
    parser.add_argument("--merge_and_save", default=None, metavar="DIR",
                        help="after training, write a plain transformers model with the update merged in")
    args = check_args(parser.parse_args(argv), "lora")
    if args.lora_r < 1 or args.lora_alpha <= 0 or not 0 <= args.lora_dropout < 1:
        fail("--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1)")
    target = args.merge_and_save
    if target and os.path.isdir(args.model_name_or_path) and same_path(target, args.model_name_or_path):
        fail(f"--merge_and_save {target} is the base model's folder: the merged model would replace it; pass a new folder")
    if target and in_checkpoint(target):
        fail(f"--merge_and_save {target} lies in a run's checkpoint folder; pass a folder of its own")
    if target and writable(target):
        fail(f"cannot write to --merge_and_save {target} ({writable(target)}); pass a folder you can write to")
    return args


class LoRALinear(nn.Module):
    """Wraps a frozen nn.Linear or GPT-2 Conv1D (weight stored [in, out]) and adds B A x. `slices`
    picks parts of the output (of a fused q|k|v projection), each with its own pair; by default one
    pair covers the whole output. Sizes come from the layer's attributes, never weight.shape ([0]
    under ZeRO-3)."""

    def __init__(self, base_layer, r, alpha, dropout=0.0, n_parts=1, slices=(0,)):
        super().__init__()
        self.base_layer = base_layer
        self.conv1d = isinstance(base_layer, Conv1D)
        d_in, d_out = (base_layer.nx, base_layer.nf) if self.conv1d else (base_layer.in_features,
                                                                           base_layer.out_features)
        self.r, self.alpha, self.scale, self.n_parts, self.slices = r, alpha, alpha / r, n_parts, tuple(slices)
        self.part = d_out // n_parts
        dtype = base_layer.weight.dtype  # ZeRO-3 + bf16 loads the model in bf16 and casts nothing after
        self.lora_A = nn.ParameterList([nn.Parameter(torch.empty(r, d_in, dtype=dtype)) for _ in slices])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(self.part, r, dtype=dtype)) for _ in slices])
        for A in self.lora_A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # as nn.Linear and peft
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # The output columns of the adapted slices, in order (q and v of [q | k | v]: 0..d-1, 2d..3d-1).
        columns = torch.cat([torch.arange(s * self.part, (s + 1) * self.part) for s in self.slices])
        self.register_buffer("columns", columns, persistent=False)

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        x = self.dropout(x)
        updates = [F.linear(F.linear(x, A), B) * self.scale for A, B in zip(self.lora_A, self.lora_B)]  # thin matmuls
        if self.n_parts == 1:  # one pair over the whole output
            return y + updates[0]
        # Each slice's update into its columns of y in one out-of-place index_add: y is neither split nor
        # concatenated (its backward passes y's gradient through and gathers only the adapted columns').
        return y.index_add(-1, self.columns, torch.cat(updates, -1))

    def add_delta(self, weight, sign=1):
        """Add sign * (alpha / r) B A, per slice, to a full weight in the base layer's layout."""
        for s, A, B in zip(self.slices, self.lora_A, self.lora_B):
            delta = (B.to(weight) @ A.to(weight)) * (sign * self.scale)  # [part, d_in]
            rows = slice(s * self.part, (s + 1) * self.part)
            (weight[:, rows] if self.conv1d else weight[rows]).add_(delta.t() if self.conv1d else delta)

    @torch.no_grad()
    def merge(self):
        """Fold the update into the base weight (plain models; under ZeRO-3 see save_merged)."""
        if not self.merged:
            self.add_delta(self.base_layer.weight)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.add_delta(self.base_layer.weight, sign=-1)
            self.merged = False


def add_lora(model, targets, r=8, alpha=16, dropout=0.0, slices=None):
    """Replace each target module (matched by the last part of its name) with a LoRALinear.
    `slices`: names of the fused parts to adapt (e.g. ['q', 'v']), or None for one pair."""
    wrapped = []
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in targets or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        parts = FUSED.get(leaf) if slices else None
        kw = {"n_parts": len(parts), "slices": [parts.index(p) for p in slices]} if parts else {}
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, leaf, LoRALinear(module, r, alpha, dropout, **kw))
        wrapped.append(name)
    return wrapped


def resolve_targets(model, targets=None, slices=None):
    """The target names and slices for this model (None: the defaults of its type); a ValueError
    that says what to pass when they do not fit it."""
    kind = model.config.model_type
    targets = targets or DEFAULT_TARGETS.get(kind)
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})
    if targets is None:
        raise ValueError(f"no default LoRA targets for model type '{kind}'; pass --lora_targets from: "
                         f"{','.join(names)}")
    targets = targets.split(",")
    if not set(targets) <= set(names):
        raise ValueError(f"--lora_targets {','.join(sorted(set(targets) - set(names)))} not in the model; "
                         f"choose from: {','.join(names)}")
    fused = [t for t in targets if t in FUSED]
    slices = slices or ("q,v" if fused else "fused")
    if slices == "fused":
        return targets, None
    if not fused:
        raise ValueError(f"--lora_slices applies to a fused q|k|v projection ({', '.join(FUSED)}); none is targeted")
    if not set(slices.split(",")) <= set(FUSED[fused[0]]):
        raise ValueError(f"--lora_slices takes names from {','.join(FUSED[fused[0]])} or 'fused', got '{slices}'")
    return targets, slices.split(",")


def export_peft(model, trainable, heads, path, base_model, r, alpha, dropout):
    """Write a peft LoRA adapter (adapter_config.json, adapter_model.safetensors) from our trained
    tensors. k slices of rank r are one fused pair of rank k r: A stacked, B placed block by block
    (zeros for untouched slices), alpha scaled by k so that alpha / rank stays the same."""
    state, ranks = {f"base_model.model.{n}": t for n, t in trainable.items() if n.split(".")[0] in heads}, {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            k = len(m.slices)
            A = torch.cat([trainable[f"{name}.lora_A.{i}"] for i in range(k)])
            B = torch.zeros(m.part * m.n_parts, m.r * k, dtype=A.dtype)
            for i, s in enumerate(m.slices):
                B[s * m.part:(s + 1) * m.part, i * m.r:(i + 1) * m.r] = trainable[f"{name}.lora_B.{i}"]
            state[f"base_model.model.{name}.lora_A.weight"], state[f"base_model.model.{name}.lora_B.weight"] = A, B
            ranks[name], conv1d = k, m.conv1d
    config = {"peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": base_model,
              "r": r, "lora_alpha": alpha, "lora_dropout": dropout,
              "target_modules": list(ranks), "fan_in_fan_out": conv1d, "bias": "none", "modules_to_save": heads,
              "rank_pattern": {n: r * k for n, k in ranks.items()},
              "alpha_pattern": {n: alpha * k for n, k in ranks.items()}, "inference_mode": True}
    atomic_write_text(os.path.join(path, "adapter_config.json"), json.dumps(config, indent=2) + "\n")
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"), state)


def merged_tensors(model):
    """The weights of a plain transformers model with every update folded into its base weight, as
    save_model_folder takes them: (name, parameters to gather, value). Under ZeRO-3 a base weight is
    gathered with its LoRA pair."""
    lora = {f"{n}.base_layer.weight": m for n, m in model.named_modules() if isinstance(m, LoRALinear)}

    def merged(param, m):
        weight = param.detach().float().clone()
        m.add_delta(weight)
        return weight.to(param.dtype)

    tensors = []
    for name, param in model.named_parameters():
        m = lora.get(name)
        if ".lora_" not in name:
            tensors.append((name.replace(".base_layer.", "."), [param, *m.lora_A, *m.lora_B] if m else [param],
                            (lambda p=param, m=m: merged(p, m)) if m else param.detach))
    return tensors


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    merged = [os.path.relpath(args.merge_and_save, args.output_dir)] if args.merge_and_save and inside(
        args.merge_and_save, args.output_dir) else []  # a folder in OUTPUT_DIR is one of the run's outputs
    run = Run(args, accelerator, "lora", outputs=["peft", *merged])  # owns OUTPUT_DIR: logs, weights, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task))

    # The method: freeze the backbone, wrap the target projections, train the pairs and the head.
    with usage_errors():  # a model without the targets: a one-line error
        targets, slices = resolve_targets(model, args.lora_targets, args.lora_slices)
    heads = freeze_backbone(model)
    wrapped = add_lora(model, targets, args.lora_r, args.lora_alpha, args.lora_dropout, slices)
    names = trainable_names(model)
    trainable, total = count_params(model)
    lora_params = sum(getattr(p, "ds_numel", p.numel()) for n, p in model.named_parameters() if ".lora_" in n)
    accelerator.print(f"LoRA on {len(wrapped)} modules ({targets}, slices {slices or 'fused'}): {lora_params:,} LoRA "
                      f"params; trainable with the head {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, takes_position_ids(model))
    optimizer = adamw(optimizer_groups(model.parameters(), args.weight_decay), args)
    max_steps = run.count_steps(len(train_loader))  # optimizer steps of the whole run
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))
    run.begin(model, eval_loaders, names)  # after prepare: a resumed run restores the prepared states

    for epoch in run.epochs():
        model.train()
        train_loader.set_epoch(epoch)  # a new shuffle, the same on every rank and after a resume
        for batch in run.remaining(train_loader, epoch):  # a resumed run skips the batches it trained on
            batch.pop("idx")  # the row number, for putting predictions in order; not a model input
            with accelerator.accumulate(model):  # gradients sync (and the optimizer steps) every N batches
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:  # one scheduler step per optimizer step
                    scheduler.step()
                optimizer.zero_grad()
            run.add_loss(loss, batch)
            if accelerator.sync_gradients:
                run.step_done()  # evaluate, save the best weights and a checkpoint when due
            if run.stop:
                break

    run.finish()  # the final metrics, trainable.safetensors, --do_predict files
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    if args.merge_and_save:  # a plain transformers model folder, no LoRA left (a collective under ZeRO-3)
        save_model_folder(accelerator, model, tokenizer, args.merge_and_save, merged_tensors(plain))
    if accelerator.is_main_process:
        trained = load_file(os.path.join(args.output_dir, "trainable.safetensors"))
        export_peft(plain, trained, heads, os.path.join(args.output_dir, "peft"), args.model_name_or_path,
                    args.lora_r, args.lora_alpha, args.lora_dropout)
    run.close(trainable, total, lora_params=lora_params)  # results.json


if __name__ == "__main__":
    run_main(main)
