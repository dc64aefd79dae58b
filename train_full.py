"""Full fine-tuning of a sequence classifier on a GLUE task: the baseline of every PEFT script.

Every weight of the pretrained model is trained, with a classification head on top
(GPT-2 pools the hidden state of the last real token of each row). It is the most accurate
and the most expensive method: the optimizer keeps two fp32 moments for each weight, and a
checkpoint is the whole model. The PEFT scripts share this loop and change what is trained.

    python train_full.py --task rte                                   # one process
    accelerate launch --config_file accelerate_configs/ddp.yaml train_full.py --task rte
    accelerate launch --config_file accelerate_configs/zero3.yaml train_full.py --task rte \
        --model_name_or_path gpt2-xl

Outputs in --output_dir: results.json (final and best metrics, parameter counts, speed),
trainable.safetensors (here: every weight), best/trainable.safetensors, args.json, and
checkpoints/step_N when --checkpointing_steps is set.
"""
import math
import os
import time

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from common.checkpoint import resume, save_checkpoint, save_trainable, trainable_names, write_results
from common.data import get_task
from common.launch import (base_parser, check_args, count_params, evaluate, load_model, make_accelerator,
                           make_dataloaders, optimizer_groups, write_predictions)


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    # Full fine-tuning adds no flags of its own; each PEFT script adds its method's flags here.
    return check_args(parser.parse_args(), "full")


def main():
    args = parse_args()
    accelerator = make_accelerator(args, "train_full")
    set_seed(args.seed)
    task = get_task(args.task)
    tokenizer, model = load_model(args, task)

    # The method: nothing to add. Every parameter trains and is saved.
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

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
        write_results(args, "full", metrics, best, log_history, (trainable, total), runtime, samples, logits)
    accelerator.print(f"final {args.task} full: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.end_training()  # closes trackers and the process group (a gloo rank can abort at exit otherwise)


if __name__ == "__main__":
    main()
