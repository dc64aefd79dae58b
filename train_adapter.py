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

    Houlsby:  x -> attention -> c_proj -> [+ A_attn] -> +x -> ln -> MLP -> c_proj -> [+ A_ffn] -> +
    Pfeiffer: x -> attention -> +x -> ln -> MLP -> + -> [+ A]

Adapters go in by wrapping modules of each layer (never by editing model classes).

    python train_adapter.py --task rte --variant houlsby
    accelerate launch --config_file accelerate_configs/zero3.yaml train_adapter.py --task rte \
        --variant pfeiffer
"""

import argparse

from common.args import base_parser, check_args
from common.errors import check_early, fail


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3)
    add = parser.add_argument
    add(
        "--variant",
        choices=["houlsby", "pfeiffer"],
        default="houlsby",
        help="where the adapters go",
    )
    add("--reduction_factor", type=int, default=16, help="the bottleneck m = d / reduction_factor")
    add("--adapter_size", type=int, default=None, help="the bottleneck m (overrides the factor)")
    add("--freeze_layer_norms", action="store_true", help="Houlsby: keep the layer norms frozen")
    add(
        "--ln_before",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a LayerNorm on each adapter's input; none: where it reads the residual stream",
    )
    args = check_args(parser.parse_args(argv), "adapter")
    if args.reduction_factor < 1 or (args.adapter_size is not None and args.adapter_size < 1):
        fail("--reduction_factor and --adapter_size must be >= 1")
    return args


if __name__ == "__main__":
    check_early(parse_args)  # --help and bad flags answer before the imports below take seconds

import os

from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

import exports
from common.checkpoint import trainable_names
from common.data import make_dataloaders
from common.errors import run_main, usage_errors
from common.model import (
    adamw,
    freeze_backbone,
    head_names,
    load_model,
    optimizer_groups,
    param_dtype,
    takes_position_ids,
)
from common.run import Run, make_accelerator

# Where the adapters go, per model type, as paths inside each layer ("" is the layer itself).
PRE_LN = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("",)}
LAYOUT = {
    "gpt2": PRE_LN,
    **{
        t: {"houlsby": ("self_attn.o_proj", "mlp.down_proj"), "pfeiffer": ("",)}
        for t in ("llama", "mistral", "qwen2", "qwen3", "gemma")
    },
    **{
        t: {
            "houlsby": ("attention.output.dense", "output.dense"),
            "pfeiffer": ("output.LayerNorm",),
        }
        for t in ("bert", "roberta")
    },
}


class Bottleneck(nn.Module):
    """up(act(down(h))): d -> m -> d, initialised near zero as Houlsby et al.: truncated normal
    weights (std 0.01, cut at 2 std), zero biases. With `norm`, h goes through a LayerNorm first
    (AdapterHub's ln_before), which starts as the identity's scale: weight 1, bias 0."""

    def __init__(self, d, m, act, dtype, norm=False):
        super().__init__()
        if norm:
            self.norm = nn.LayerNorm(d, dtype=dtype)
        self.down = nn.Linear(d, m, dtype=dtype)
        self.act = act
        self.up = nn.Linear(m, d, dtype=dtype)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(layer.bias)

    def forward(self, h):
        if hasattr(self, "norm"):
            h = self.norm(h)
        return self.up(self.act(self.down(h)))


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


class AdapterInNorm(nn.Module):
    """Wraps a post-LN layer norm: s -> LN(s + adapter(LN(s))), AdapterHub's Pfeiffer in BERT."""

    def __init__(self, base_layer, adapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, s):
        return self.base_layer(s + self.adapter(self.base_layer(s)))


def add_adapters(model, variant="houlsby", m=64, train_layer_norms=False, ln_before=False):
    """Wrap the places of LAYOUT in every layer with bottlenecks of width m; returns the wrapped
    module names. `ln_before`: a LayerNorm on each adapter's input; None: only where the adapter
    reads the residual stream itself (Pfeiffer on a pre-LN model, whose stream is not normalized:
    SmolLM2-135M's has an RMS of about 170 from its 12th layer on, with entries near 26,000). A
    model type without a layout is a ValueError."""
    kind = model.config.model_type
    if kind not in LAYOUT:
        raise ValueError(
            f"no adapter layout for model type '{kind}'; supported: {', '.join(LAYOUT)}"
        )
    if train_layer_norms:  # Houlsby trains the layer norms too
        for module in model.base_model.modules():
            if "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    layers = next(mod for mod in model.base_model.modules() if isinstance(mod, nn.ModuleList))
    act = nn.SiLU() if variant == "houlsby" else nn.ReLU()
    d = model.config.hidden_size
    dtype = param_dtype(model)
    wrapped = []
    for i in range(len(layers)):
        for path in LAYOUT[kind][variant]:
            name = f"{i}.{path}".rstrip(".")
            parent, _, leaf = name.rpartition(".")
            owner = layers.get_submodule(parent) if parent else layers
            wrapper = AdapterInNorm if leaf == "LayerNorm" else AdapterAfter
            norm = path == "" if ln_before is None else ln_before  # "": the layer's own output
            adapter = Bottleneck(d, m, act, dtype, norm)
            setattr(owner, leaf, wrapper(owner.get_submodule(leaf), adapter))
            wrapped.append(name)
    return wrapped


def add_method(
    model, tokenizer, *, variant, reduction_factor, adapter_size, freeze_layer_norms, ln_before, **_
):
    """Adapters on a loaded model as the flags of the same names ask (others are ignored: main and
    exports.load_trained pass a run's flags): the backbone frozen, each layer's places wrapped."""
    d = model.config.hidden_size
    m = adapter_size or d // reduction_factor
    if m < 1:
        raise ValueError(
            f"--reduction_factor {reduction_factor} leaves no bottleneck (hidden size "
            f"{d}); use at most {d}, or --adapter_size"
        )
    freeze_backbone(model)
    norms = variant == "houlsby" and not freeze_layer_norms  # Houlsby trains the layer norms
    add_adapters(model, variant, m, train_layer_norms=norms, ln_before=ln_before)
    return model


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(**vars(args))
    run = Run(accelerator, "adapter", outputs=["adapterhub"], **vars(args))  # owns OUTPUT_DIR
    set_seed(args.seed)
    tokenizer, model = load_model(**vars(args))

    # The method: freeze the backbone, wrap each layer's places with a bottleneck adapter.
    heads = head_names(model)
    with usage_errors():  # no bottleneck, a model type without an adapter layout: one line
        model = add_method(model, tokenizer, **vars(args))
    adapters = [a for a in model.modules() if isinstance(a, Bottleneck)]
    m = adapters[0].down.out_features
    names = trainable_names(model)
    accelerator.print(f"{args.variant}: {len(adapters)} adapters of bottleneck {m}")

    positions = takes_position_ids(model)
    train_loader, eval_loaders = make_dataloaders(accelerator, tokenizer, positions, **vars(args))
    optimizer = adamw(optimizer_groups(model.parameters(), args.weight_decay), **vars(args))
    max_steps = run.count_steps(len(train_loader))  # optimizer steps of the whole run
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    run.begin(model, dict(zip(eval_loaders, loaders)), names)  # a resume restores the states

    # Every epoch, less the batches a resumed run did, until the last step or early stopping.
    for batch in run.batches(train_loader):
        with accelerator.accumulate(model):  # the gradients sync, and the optimizer steps, every N
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            if accelerator.sync_gradients:  # one scheduler step per optimizer step
                scheduler.step()
            optimizer.zero_grad()
        run.after_batch(loss)  # count the loss; after a step: log, evaluate, save when due

    trained = run.finish()  # the final metrics, trainable.safetensors, predictions
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    if accelerator.is_main_process and plain.config.model_type in exports.ADAPTERHUB:
        path = os.path.join(args.output_dir, "adapterhub")
        head = exports.head_of(trained, heads)
        if exports.adapterhub(path, trained, head, plain, args.variant, m, args.model_name_or_path):
            accelerator.print(
                "AdapterHub's format has no place for the trained layer norms: they are "
                "in adapterhub/layer_norms.safetensors (or pass --freeze_layer_norms)"
            )
    run.close(variant=args.variant)  # results.json


if __name__ == "__main__":
    run_main(main)
