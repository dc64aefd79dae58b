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
import math
import os
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from common.checkpoint import resume, save_checkpoint, save_trainable, trainable_names, write_results
from common.data import get_task
from common.errors import fail
from common.launch import (base_parser, check_args, count_params, evaluate, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, write_predictions)

# Where the adapters go, per model type, as paths inside each layer ("" is the layer itself).
PRE_LN = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("",)}
LAYOUT = {"gpt2": PRE_LN,
          **{t: {"houlsby": ("self_attn.o_proj", "mlp.down_proj"), "pfeiffer": ("",)}
             for t in ("llama", "mistral", "qwen2", "qwen3", "gemma")},
          **{t: {"houlsby": ("attention.output.dense", "output.dense"), "pfeiffer": ("output.LayerNorm",)}
             for t in ("bert", "roberta")}}


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--variant", choices=["houlsby", "pfeiffer"], default="houlsby")
    parser.add_argument("--reduction_factor", type=int, default=16, help="bottleneck m = d / reduction_factor")
    parser.add_argument("--adapter_size", type=int, default=None, help="bottleneck m (overrides the factor)")
    parser.add_argument("--freeze_layer_norms", action="store_true", help="Houlsby: keep the layer norms frozen")
    args = check_args(parser.parse_args(), "adapter")
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


def add_adapters(model, variant, m, train_layer_norms):
    """Wrap the places of LAYOUT in every layer; returns the wrapped module names."""
    kind = model.config.model_type
    if kind not in LAYOUT:
        fail(f"no adapter layout for model type '{kind}'; supported: {', '.join(LAYOUT)}")
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


def main():
    args = parse_args()
    accelerator = make_accelerator(args, "train_adapter")
    set_seed(args.seed)
    task = get_task(args.task)
    tokenizer, model = load_model(args, task)

    # The method: freeze the backbone, wrap each layer's places with a bottleneck adapter.
    freeze_backbone(model)
    m = args.adapter_size or model.config.hidden_size // args.reduction_factor
    wrapped = add_adapters(model, args.variant, m, args.variant == "houlsby" and not args.freeze_layer_norms)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"{args.variant}: {len(wrapped)} adapters of bottleneck {m}; trainable {trainable:,} of "
                      f"{total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, model)
    optimizer = torch.optim.AdamW(optimizer_groups(model.parameters(), args.weight_decay), lr=args.learning_rate)
    # Optimizer steps per epoch, as the prepared loader will shard the batches over the processes.
    grad_accum = accelerator.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / grad_accum)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))

    (step, log_history, best), metrics = resume(accelerator, args), None

    eval_every = args.eval_steps or steps_per_epoch
    ckpt_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process)
    loss_sum, loss_count, start_step, start = torch.zeros((), device=accelerator.device), 0, step, time.perf_counter()
    for epoch in range(step // steps_per_epoch, epochs):
        model.train()
        train_loader.set_epoch(epoch)  # the same shuffle on every rank, and again after a resume
        skip = (step - epoch * steps_per_epoch) * grad_accum
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            batch.pop("idx")
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            loss_sum, loss_count = loss_sum + loss.detach().float(), loss_count + 1  # on the device: NCCL reduces it
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")

            if step % eval_every == 0 or step == max_steps:
                metrics, logits = evaluate(model, eval_loaders, accelerator, args.task)
                train_loss = accelerator.reduce(loss_sum, "mean").item() / max(loss_count, 1)
                loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                log_history.append({"step": step, "epoch": epoch, "train_loss": train_loss, **metrics})
                progress.write(f"step {step}: train_loss {train_loss:.4f} " +
                               " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if args.with_tracking:
                    accelerator.log({"train_loss": train_loss, **metrics}, step=step)
                if metrics[task.metric] > best.get(task.metric, -math.inf):
                    best = {"step": step, **metrics}
                    save_trainable(accelerator, model, names, os.path.join(args.output_dir, "best",
                                                                           "trainable.safetensors"))
            if ckpt_every and step % ckpt_every == 0:
                save_checkpoint(accelerator, args.output_dir, step,
                                {"step": step, "log_history": log_history, "best_metrics": best})
            if step >= max_steps:
                break
        if args.checkpointing_steps == "epoch" and step < max_steps:
            save_checkpoint(accelerator, args.output_dir, step,
                            {"step": step, "log_history": log_history, "best_metrics": best})
    progress.close()
    runtime = time.perf_counter() - start
    if metrics is None:  # resumed from a checkpoint taken at the last step
        metrics, logits = evaluate(model, eval_loaders, accelerator, args.task)

    save_trainable(accelerator, model, names, os.path.join(args.output_dir, "trainable.safetensors"))
    if args.do_predict:
        write_predictions(model, eval_loaders, accelerator, args)
    if accelerator.is_main_process:
        samples = (step - start_step) * args.per_device_train_batch_size * grad_accum * accelerator.num_processes
        write_results(args, "adapter", metrics, best, log_history, (trainable, total), runtime, samples, logits,
                      variant=args.variant)
    accelerator.print(f"final {args.task} adapter: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.end_training()  # closes trackers and the process group (a gloo rank can abort at exit otherwise)


if __name__ == "__main__":
    main()
