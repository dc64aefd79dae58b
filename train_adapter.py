"""Adapters: small trained bottleneck networks inserted into a frozen model (Houlsby, Pfeiffer).

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", https://arxiv.org/abs/1902.00751
Pfeiffer et al. 2020, "AdapterFusion", https://arxiv.org/abs/2005.00247 (the one-adapter layout)

An adapter maps a hidden state h to h + up(act(down(h))), with down: d -> m and up: m -> d,
m = d / --reduction_factor (16). Its weights start near zero, so a fresh adapter is nearly the
identity and training starts at the pretrained model. The backbone is frozen.

  --variant houlsby  two adapters per layer (swish): after the attention output projection and
                     after the feed-forward output projection, before their residual adds; the
                     layer norms train too (--freeze_layer_norms to keep them fixed)
  --variant pfeiffer one adapter per layer (ReLU) after the feed-forward block, as AdapterHub's
                     SeqBnConfig places it: on the residual stream after the block (pre-LN GPT-2,
                     Llama), and inside the output layer norm (post-LN BERT: LN(s + A(LN(s))))

    x ─> attention ─> c_proj ─> [+ A_attn] ─> +x ─> ln ─> MLP ─> c_proj ─> [+ A_ffn] ─> + ─>   Houlsby
    x ─> attention ─> +x ─> ln ─> MLP ─> + ─> [+ A] ─>                                          Pfeiffer

Adapters go in by wrapping modules of each layer (never by editing model classes).

    python train_adapter.py --task rte --variant houlsby
    accelerate launch --config_file accelerate_configs/zero3.yaml train_adapter.py --task rte --variant pfeiffer
"""
import json
import os
import re

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn
from transformers import get_scheduler

from common.checkpoint import atomic_save_tensors, atomic_write_text, replacing, trainable_names
from common.data import get_task
from common.errors import fail, run_main, usage_errors
from common.launch import (adamw, base_parser, check_args, count_params, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, takes_position_ids)
from common.run import Run

# Where the adapters go, per model type, as paths inside each layer ("" is the layer itself).
PRE_LN = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("",)}
LAYOUT = {"gpt2": PRE_LN,
          **{t: {"houlsby": ("self_attn.o_proj", "mlp.down_proj"), "pfeiffer": ("",)}
             for t in ("llama", "mistral", "qwen2", "qwen3", "gemma")},
          **{t: {"houlsby": ("attention.output.dense", "output.dense"), "pfeiffer": ("output.LayerNorm",)}
             for t in ("bert", "roberta")}}


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--variant", choices=["houlsby", "pfeiffer"], default="houlsby")
    parser.add_argument("--reduction_factor", type=int, default=16, help="bottleneck m = d / reduction_factor")
    parser.add_argument("--adapter_size", type=int, default=None, help="bottleneck m (overrides the factor)")
    parser.add_argument("--freeze_layer_norms", action="store_true", help="Houlsby: keep the layer norms frozen")
    args = check_args(parser.parse_args(argv), "adapter")
    if args.reduction_factor < 1 or (args.adapter_size is not None and args.adapter_size < 1):
        fail("--reduction_factor and --adapter_size must be >= 1")
    return args


class Bottleneck(nn.Module):
    """up(act(down(h))): d -> m -> d, initialised near zero as Houlsby et al.: truncated normal
    weights (std 0.01, cut at 2 std), zero biases."""

    def __init__(self, d, m, act, dtype):
        super().__init__()
        self.down, self.act, self.up = nn.Linear(d, m, dtype=dtype), act, nn.Linear(m, d, dtype=dtype)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(layer.bias)

    def forward(self, h):
        return self.up(self.act(self.down(h)))


class AdapterAfter(nn.Module):
    """Wraps a module: its output h becomes h + adapter(h) (the first element of a tuple output)."""

    def __init__(self, base_layer, adapter):
        super().__init__()
        self.base_layer, self.adapter = base_layer, adapter

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + self.adapter(out[0]), *out[1:])
        return out + self.adapter(out)


class AdapterInNorm(nn.Module):
    """Wraps a post-LN layer norm: s -> LN(s + adapter(LN(s))), AdapterHub's Pfeiffer in BERT."""

    def __init__(self, base_layer, adapter):
        super().__init__()
        self.base_layer, self.adapter = base_layer, adapter

    def forward(self, s):
        return self.base_layer(s + self.adapter(self.base_layer(s)))


def add_adapters(model, variant="houlsby", m=64, train_layer_norms=False):
    """Wrap the places of LAYOUT in every layer with bottlenecks of width m; returns the wrapped
    module names. A model type without a layout is a ValueError."""
    kind = model.config.model_type
    if kind not in LAYOUT:
        raise ValueError(f"no adapter layout for model type '{kind}'; supported: {', '.join(LAYOUT)}")
    if train_layer_norms:  # Houlsby trains the layer norms too
        for module in model.base_model.modules():
            if "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    layers = next(mod for mod in model.base_model.modules() if isinstance(mod, nn.ModuleList))
    act = nn.SiLU() if variant == "houlsby" else nn.ReLU()
    d, dtype = model.config.hidden_size, model.get_input_embeddings().weight.dtype  # ZeRO-3 + bf16: no later cast
    wrapped = []
    for i in range(len(layers)):
        for path in LAYOUT[kind][variant]:
            name = f"{i}.{path}".rstrip(".")
            parent, _, leaf = name.rpartition(".")
            owner = layers.get_submodule(parent) if parent else layers
            wrapper = AdapterInNorm if leaf == "LayerNorm" else AdapterAfter
            setattr(owner, leaf, wrapper(owner.get_submodule(leaf), Bottleneck(d, m, act, dtype)))
            wrapped.append(name)
    return wrapped


# AdapterHub's save format (adapters 1.3): the layers' path in the model, and its name for each place of
# LAYOUT. Other model types are not exported.
ADAPTERHUB = {"gpt2": ("transformer.h", {"attn.c_proj": "attention_adapters", "mlp.c_proj": "output_adapters",
                                         "": "output_adapters"}),
              **{t: (f"{t}.encoder.layer", {"attention.output.dense": "attention.output", "output.dense": "output",
                                            "output.LayerNorm": "output"}) for t in ("bert", "roberta")}}


def export_adapterhub(trained, model, variant, m, path, base_model, name="glue"):
    """OUTPUT_DIR/adapterhub: the adapters and the head in AdapterHub's own save format, which
    `adapters` 1.3 loads (model.load_adapter(path), then set_active_adapters). Layer norms trained
    here have no place in it: they go to layer_norms.safetensors beside it. Returns that file's
    tensor count (0: the export is the whole trained state)."""
    layers, places = ADAPTERHUB[model.config.model_type]
    d, heads = model.config.hidden_size, {n for n, c in model.named_children() if n != model.base_model_prefix}
    pattern = rf"{re.escape(layers)}\.(\d+)\.(?:(.*)\.)?adapter\.(down|up)\.(weight|bias)$"  # ours
    found = {k: re.match(pattern, k) for k in trained}
    state = {f"{layers}.{f[1]}.{places[f[2] or '']}.adapters.{name}.adapter_{'down.0' if f[3] == 'down' else 'up'}."
             f"{f[4]}": trained[k] for k, f in found.items() if f}
    head = {k: t for k, t in trained.items() if k.split(".")[0] in heads}
    norms = {k: t for k, t in trained.items() if not found[k] and k not in head}
    houlsby = variant == "houlsby"
    config = {"adapter_residual_before_ln": False, "cross_adapter": False, "dropout": 0.0, "factorized_phm_W": True,
              "factorized_phm_rule": False, "hypercomplex_nonlinearity": "glorot-uniform", "init_weights": "bert",
              "init_weights_seed": None, "inv_adapter": None, "inv_adapter_reduction_factor": None,
              "is_parallel": False, "learn_phm": True, "leave_out": [], "ln_after": False, "ln_before": False,
              "mh_adapter": houlsby, "non_linearity": "swish" if houlsby else "relu", "original_ln_after": True,
              "original_ln_before": not houlsby, "output_adapter": True, "phm_bias": True, "phm_c_init": "normal",
              "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False, "phm_rank": 1, "reduction_factor": d / m,
              "residual_before_ln": True, "scaling": 1.0, "shared_W_phm": False, "shared_phm_rule": True,
              "stochastic_depth": 0.0, "use_gating": False}
    about = {"hidden_size": d, "model_class": type(model).__name__, "model_name": base_model,
             "model_type": model.config.model_type, "version": "adapters.1.3.0"}
    atomic_write_text(os.path.join(path, "adapter_config.json"),
                      json.dumps({"config": config, "name": name, **about}, indent=2) + "\n")
    atomic_write_text(os.path.join(path, "head_config.json"), json.dumps(
        {"config": None, "name": None, "label2id": model.config.label2id, "num_labels": model.config.num_labels,
         **about}, indent=2) + "\n")
    for file, tensors in (("pytorch_adapter.bin", state), ("pytorch_model_head.bin", head)):
        with replacing(os.path.join(path, file)) as tmp:
            torch.save(tensors, tmp)
    if norms:
        atomic_save_tensors(os.path.join(path, "layer_norms.safetensors"), norms)
    return len(norms)


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    run = Run(args, accelerator, "adapter", outputs=["adapterhub"])  # owns OUTPUT_DIR: logs, weights, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task))

    # The method: freeze the backbone, wrap each layer's places with a bottleneck adapter.
    freeze_backbone(model)
    m = args.adapter_size or model.config.hidden_size // args.reduction_factor
    if m < 1:
        fail(f"--reduction_factor {args.reduction_factor} leaves no bottleneck (hidden size "
             f"{model.config.hidden_size}); use at most {model.config.hidden_size}, or --adapter_size")
    with usage_errors():  # a model type without an adapter layout: a one-line error
        wrapped = add_adapters(model, args.variant, m, args.variant == "houlsby" and not args.freeze_layer_norms)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"{args.variant}: {len(wrapped)} adapters of bottleneck {m}; trainable {trainable:,} of "
                      f"{total:,} ({100 * trainable / total:.3f}%)")

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
    if accelerator.is_main_process and plain.config.model_type in ADAPTERHUB:  # OUTPUT_DIR/adapterhub
        trained = load_file(os.path.join(args.output_dir, "trainable.safetensors"))
        if export_adapterhub(trained, plain, args.variant, m, os.path.join(args.output_dir, "adapterhub"),
                             args.model_name_or_path):
            accelerator.print("adapterhub/ holds the adapters and the head; AdapterHub has no place for the trained "
                              "layer norms: they are in adapterhub/layer_norms.safetensors (or pass "
                              "--freeze_layer_norms)")
    run.close(trainable, total, variant=args.variant)  # results.json


if __name__ == "__main__":
    run_main(main)
