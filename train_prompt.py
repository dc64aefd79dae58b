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
import json
import math
import os

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn
from transformers import get_scheduler

from common.checkpoint import atomic_save_tensors, atomic_write_text, gathered, trainable_names
from common.data import get_task, pack_left
from common.errors import fail, run_main, usage_errors
from common.launch import (adamw, base_parser, check_args, count_params, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, split_params)
from common.run import Run


def parse_args(argv=None):
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
    args = check_args(parser.parse_args(argv), "prompt")
    if args.num_virtual_tokens < 1 or args.prompt_learning_rate <= 0:
        fail("--num_virtual_tokens must be >= 1 and --prompt_learning_rate > 0")
    if (args.prompt_init == "text") != (args.prompt_init_text is not None):
        fail("--prompt_init text goes with --prompt_init_text TEXT (and only with it)")
    return args


def initial_prompt(model, tokenizer, t=20, init="vocab", text=None):
    """t x d starting vectors: uniform in [-0.5, 0.5] ("random"), random rows of the embedding table
    ("vocab"), or the embeddings of `text` repeated or cut to t tokens ("text"). The table may be
    partitioned (ZeRO-3): it is gathered to read rows, on every rank (a collective), before prepare."""
    emb, d = model.get_input_embeddings(), model.config.hidden_size
    if init == "random":
        return torch.empty(t, d, dtype=emb.weight.dtype).uniform_(-0.5, 0.5)
    if init == "vocab":
        ids = torch.randint(0, model.config.vocab_size, (t,))
    else:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) == 0:
            raise ValueError("--prompt_init_text has no tokens")
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
        input_ids, attention_mask, token_type_ids = pack_left(input_ids, attention_mask, token_type_ids)
        embeds = self.model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
        batch, t = input_ids.shape[0], self.prompt.shape[0]
        prompt = self.prompt.to(embeds.dtype).expand(batch, -1, -1)
        mask = torch.cat([attention_mask.new_ones(batch, t), attention_mask], 1)
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # prompt 0..t-1, then the tokens
        if token_type_ids is not None:
            extra["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, t), token_type_ids], 1)
        return self.model(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=mask, labels=labels,
                          **extra)


def export_peft(prompt, head, config, path, base_model):
    """OUTPUT_DIR/peft: a peft prompt-tuning adapter for sequence classification, the head with it,
    that peft.PeftModel.from_pretrained(base, path) loads. `prompt`: t x d; `head`: the classifier's
    tensors by their names in the model ("score.weight"). peft's classifier reads the last position:
    give it unpadded or left-padded rows (right padding makes it read a pad)."""
    peft_config = {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "base_model_name_or_path": base_model,
                   "num_virtual_tokens": prompt.shape[0], "token_dim": prompt.shape[1], "num_transformer_submodules": 1,
                   "num_attention_heads": config.num_attention_heads, "num_layers": config.num_hidden_layers,
                   "prompt_tuning_init": "RANDOM", "modules_to_save": sorted({n.split(".")[0] for n in head}),
                   "inference_mode": True}
    atomic_write_text(os.path.join(path, "adapter_config.json"), json.dumps(peft_config, indent=2) + "\n")
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"),
                        {"prompt_embeddings": prompt, **{f"base_model.{n}": t for n, t in head.items()}})


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    run = Run(args, accelerator, "prompt", outputs=["peft"])  # owns OUTPUT_DIR: logs, weights, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task), extra_positions=args.num_virtual_tokens)

    # The method: freeze the backbone, put a trainable prompt before the input embeddings.
    freeze_backbone(model)
    with usage_errors():  # an init text without tokens: a one-line error
        prompt = initial_prompt(model, tokenizer, args.num_virtual_tokens, args.prompt_init, args.prompt_init_text)
    model = PromptTuning(model, prompt)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"prompt {tuple(model.prompt.shape)} ({args.prompt_init} init); trainable with the head "
                      f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, position_ids=False)  # made in forward
    _, head = split_params(model, model.model)
    optimizer = adamw([{"params": [model.prompt], "lr": args.prompt_learning_rate, "weight_decay": 0.0},
                       *optimizer_groups(head, args.weight_decay)], args)
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
    if accelerator.is_main_process:  # OUTPUT_DIR/peft: the prompt and the head as a peft adapter
        trained = load_file(os.path.join(args.output_dir, "trainable.safetensors"))
        head = {n[len("model."):]: t for n, t in trained.items() if n.startswith("model.")}
        export_peft(trained["prompt"], head, accelerator.unwrap_model(model).config,
                    os.path.join(args.output_dir, "peft"), args.model_name_or_path)
    run.close(trainable, total)  # results.json


if __name__ == "__main__":
    run_main(main)
