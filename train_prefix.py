"""Prefix tuning: learn key/value vectors that every layer's attention reads before the input.

Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
https://arxiv.org/abs/2101.00190

Prompt tuning (train_prompt.py) adds vectors at the input only. Prefix tuning gives every
attention layer its own p trained (key, value) pairs, as if p tokens had been read before the
input: each token of the input attends to them in every layer. The backbone is frozen.

    layer l:  keys   [K_l^prefix (p) | K_l(x)]     the prefix is handed to the model as a cache
              values [V_l^prefix (p) | V_l(x)]     (a DynamicCache built every forward)

Training the pairs directly is unstable, so (as in the paper) they are computed from a small
embedding through an MLP, `--prefix_projection` (on by default):
    E (p x d) -> Linear(d, 512) -> Tanh -> Linear(512, 2 x layers x d) -> the pairs of every layer
Only the computed pairs are needed at inference (OUTPUT_DIR/prefix.safetensors); the checkpoint
keeps the MLP so that training can resume.

    python train_prefix.py --task rte --num_prefix 10
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prefix.py --task rte

Models whose attention takes a cache: decoders (GPT-2, Llama, Qwen, ...) and BERT-style encoders
(BERT, RoBERTa, MiniLM, ...); not DistilBERT or DeBERTa.
"""
import inspect
import math
import os
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, get_scheduler

from common.checkpoint import (atomic_save_tensors, gathered, resume, save_checkpoint, save_trainable,
                               trainable_names, write_results)
from common.data import get_task
from common.errors import fail
from common.launch import (base_parser, check_args, count_params, evaluate, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, write_predictions)


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--num_prefix", type=int, default=10, help="prefix length p (key/value pairs per layer)")
    parser.add_argument("--no_prefix_projection", dest="prefix_projection", action="store_false",
                        help="train the pairs directly instead of through the MLP")
    parser.add_argument("--prefix_hidden", type=int, default=None, help="the MLP's hidden size (default 512)")
    parser.add_argument("--prefix_learning_rate", type=float, default=1e-2,
                        help="learning rate of the prefix (--learning_rate is the head's)")
    args = check_args(parser.parse_args(), "prefix")
    if args.num_prefix < 1 or args.prefix_learning_rate <= 0:
        fail("--num_prefix must be >= 1 and --prefix_learning_rate > 0")
    if args.prefix_hidden is not None and not args.prefix_projection:
        fail("--prefix_hidden sizes the projection MLP; drop it or --no_prefix_projection")
    args.prefix_hidden = args.prefix_hidden or 512
    return args


def cache_name(model):
    """The base model's keyword for past keys/values (transformers 5.2x renamed past_key_values to
    cache), or None when its attention reads no cache (DistilBERT, DeBERTa, ...)."""
    names = inspect.signature(model.base_model.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def check_supported(model):
    """A one-line error at start, not a shape error mid-step, for a model this cannot tune."""
    if cache_name(model) is None:
        fail(f"prefix tuning here needs a model whose attention reads a cache (GPT-2, Llama, BERT, RoBERTa, "
             f"...); '{model.config.model_type}' is not one: use train_prompt.py, train_lora.py or train_adapter.py")


class PrefixTuning(nn.Module):
    """A frozen sequence classifier whose attention layers read p trained key/value pairs first."""

    def __init__(self, model, p, projection=True, hidden=512):
        super().__init__()
        self.model, self.config, self.p = model, model.config, p  # config: DeepSpeed sizes its buckets
        self.cache_name = cache_name(model)
        cfg = model.config
        self.layers, d = cfg.num_hidden_layers, cfg.hidden_size
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
        width = 2 * self.layers * self.heads * self.head_dim
        dtype = model.get_input_embeddings().weight.dtype  # ZeRO-3 + bf16 casts nothing after loading
        if projection:
            self.embedding = nn.Parameter(torch.randn(p, d, dtype=dtype) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width)).to(dtype)
        else:
            self.pairs = nn.Parameter(torch.randn(p, width, dtype=dtype) * 0.02)

    def prefix(self):
        """(layers, 2, heads, p, head_dim): the keys and values of every layer."""
        pairs = self.mlp(self.embedding) if hasattr(self, "mlp") else self.pairs
        return pairs.view(self.p, self.layers, 2, self.heads, self.head_dim).permute(1, 2, 3, 0, 4)

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, **kwargs):
        batch = input_ids.shape[0]
        kv = self.prefix().to(self.model.get_input_embeddings().weight.dtype)
        cache = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])
        mask = torch.cat([attention_mask.new_ones(batch, self.p), attention_mask], 1)
        if position_ids is not None:  # the input comes after the prefix, as after p read tokens
            kwargs["position_ids"] = position_ids + self.p
        kwargs[self.cache_name] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=True, **kwargs)


def main():
    args = parse_args()
    accelerator = make_accelerator(args, "train_prefix")
    set_seed(args.seed)
    task = get_task(args.task)
    tokenizer, model = load_model(args, task)
    check_supported(model)

    # The method: freeze the backbone; every attention layer reads p trained key/value pairs first.
    freeze_backbone(model)
    model = PrefixTuning(model, args.num_prefix, args.prefix_projection, args.prefix_hidden)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"prefix of {args.num_prefix} pairs x {model.layers} layers (projection "
                      f"{args.prefix_projection}): trainable {trainable:,} of {total:,} "
                      f"({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, model)
    prefix = [p for n, p in model.named_parameters() if not n.startswith("model.")]
    optimizer = torch.optim.AdamW([*optimizer_groups(prefix, args.weight_decay, lr=args.prefix_learning_rate),
                                   *optimizer_groups(model.model.parameters(), args.weight_decay)],
                                  lr=args.learning_rate)
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
    plain = accelerator.unwrap_model(model)  # what inference needs: the computed pairs (a ZeRO-3 gather)
    with torch.no_grad(), gathered([p for n, p in plain.named_parameters() if not n.startswith("model.")]):
        kv = plain.prefix().detach().cpu().clone()
    if accelerator.is_main_process:
        atomic_save_tensors(os.path.join(args.output_dir, "prefix.safetensors"), {"prefix": kv})
        samples = (step - start_step) * args.per_device_train_batch_size * grad_accum * accelerator.num_processes
        write_results(args, "prefix", metrics, best, log_history, (trainable, total), runtime, samples, logits)
    accelerator.print(f"final {args.task} prefix: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.end_training()  # closes trackers and the process group (a gloo rank can abort at exit otherwise)


if __name__ == "__main__":
    main()
