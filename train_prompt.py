"""Prompt tuning: learn a few input vectors that steer a frozen model.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691

t trainable vectors P (t x d, the "soft prompt") are put in front of every input's token
embeddings; the attention mask and positions are extended to cover them. The backbone is
frozen; only P and the classification head train: t x d numbers (20 x 1600 on GPT2-XL).

    [p_1 ... p_t][pad ... pad][x_1 ... x_n]  ->  frozen model  ->  head on x_n
     trainable    masked       token embeddings

Given embeddings rather than ids, GPT-2's classifier cannot find the padding and reads the last
position. So each row is packed to the left padding first, whatever the collator did: the last
position is then its last real token. Positions come from the mask, so padding never shifts them.

    python train_prompt.py --task rte --num_virtual_tokens 20
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prompt.py --task rte

train_idpg.py is this script plus a prompt generator: `diff train_prompt.py train_idpg.py`.
"""
import math
import os
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from common.checkpoint import gathered, resume, save_checkpoint, save_trainable, trainable_names, write_results
from common.data import get_task
from common.errors import fail
from common.launch import (base_parser, check_args, count_params, evaluate, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, write_predictions)


def parse_args():
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--num_virtual_tokens", type=int, default=20, help="prompt length t")
    parser.add_argument("--prompt_init", choices=["random", "vocab", "text"], default="vocab",
                        help="random: uniform in [-0.5, 0.5]; vocab: rows of the embedding table; text: "
                             "the embeddings of --prompt_init_text, repeated or cut to t tokens")
    parser.add_argument("--prompt_init_text", default=None)
    parser.add_argument("--prompt_learning_rate", type=float, default=3e-2,
                        help="learning rate of the prompt (--learning_rate is the head's); Lester et al. "
                             "used 0.3 with Adafactor")
    args = check_args(parser.parse_args(), "prompt")
    if args.num_virtual_tokens < 1 or args.prompt_learning_rate <= 0:
        fail("--num_virtual_tokens must be >= 1 and --prompt_learning_rate > 0")
    if (args.prompt_init == "text") != (args.prompt_init_text is not None):
        fail("--prompt_init text goes with --prompt_init_text TEXT (and only with it)")
    return args


def initial_prompt(model, tokenizer, args):
    """t x d starting vectors. The embedding table may be partitioned (ZeRO-3): gather it to read
    rows, on every rank (a collective), before accelerator.prepare."""
    emb, t = model.get_input_embeddings(), args.num_virtual_tokens
    d = model.config.hidden_size
    if args.prompt_init == "random":
        return torch.empty(t, d, dtype=emb.weight.dtype).uniform_(-0.5, 0.5)
    if args.prompt_init == "vocab":
        ids = torch.randint(0, model.config.vocab_size, (t,))
    else:
        ids = torch.tensor(tokenizer(args.prompt_init_text, add_special_tokens=False)["input_ids"])
        if len(ids) == 0:
            fail("--prompt_init_text has no tokens")
        ids = ids.repeat(math.ceil(t / len(ids)))[:t]
    with gathered([emb.weight]):
        return emb.weight[ids].detach().clone()


class PromptTuning(nn.Module):
    """A frozen sequence classifier with a trainable soft prompt before its input embeddings."""

    def __init__(self, model, prompt):
        super().__init__()
        self.model, self.config = model, model.config  # config: DeepSpeed sizes its buckets from it
        self.prompt = nn.Parameter(prompt)

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None, **_):
        order = attention_mask.argsort(dim=-1, stable=True)  # pads first: every row becomes left-padded
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        token_type_ids = None if token_type_ids is None else token_type_ids.gather(1, order)
        embeds = self.model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
        batch, t = input_ids.shape[0], self.prompt.shape[0]
        prompt = self.prompt.to(embeds.dtype).expand(batch, -1, -1)
        mask = torch.cat([attention_mask.new_ones(batch, t), attention_mask], 1)
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # prompt 0..t-1, then the tokens
        if token_type_ids is not None:
            extra["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, t), token_type_ids], 1)
        return self.model(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=mask, labels=labels,
                          **extra)


def main():
    args = parse_args()
    accelerator = make_accelerator(args, "train_prompt")
    set_seed(args.seed)
    task = get_task(args.task)
    tokenizer, model = load_model(args, task)

    # The method: freeze the backbone, put a trainable prompt before the input embeddings.
    freeze_backbone(model)
    model = PromptTuning(model, initial_prompt(model, tokenizer, args))
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"prompt {tuple(model.prompt.shape)} ({args.prompt_init} init); trainable with the head "
                      f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, model)
    head = [p for n, p in model.named_parameters() if n != "prompt"]
    optimizer = torch.optim.AdamW([{"params": [model.prompt], "lr": args.prompt_learning_rate, "weight_decay": 0.0},
                                   *optimizer_groups(head, args.weight_decay)], lr=args.learning_rate)
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
        write_results(args, "prompt", metrics, best, log_history, (trainable, total), runtime, samples, logits)
    accelerator.print(f"final {args.task} prompt: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.end_training()  # closes trackers and the process group (a gloo rank can abort at exit otherwise)


if __name__ == "__main__":
    main()
