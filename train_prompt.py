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

from common.args import base_parser, check_args
from common.errors import check_early, fail


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3)
    add = parser.add_argument
    add("--num_virtual_tokens", type=int, default=20, help="t, the prompt's length")
    add("--prompt_init", choices=["random", "vocab", "text"], default="vocab", help="its start")
    add("--prompt_init_text", default=None, help="text: the words whose embeddings start it")
    add("--prompt_learning_rate", type=float, default=3e-2, help="the prompt's")
    args = check_args(parser.parse_args(argv), "prompt")
    if args.num_virtual_tokens < 1 or args.prompt_learning_rate <= 0:
        fail("--num_virtual_tokens must be >= 1 and --prompt_learning_rate > 0")
    if (args.prompt_init == "text") != (args.prompt_init_text is not None):
        fail("--prompt_init text goes with --prompt_init_text TEXT (and only with it)")
    return args


if __name__ == "__main__":
    check_early(parse_args)  # --help and bad flags answer before the imports below take seconds

import math
import os

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

import exports
from common.checkpoint import gathered, trainable_names
from common.data import make_dataloaders, pack_left
from common.errors import run_main, usage_errors
from common.model import (
    adamw,
    freeze_backbone,
    head_names,
    load_model,
    optimizer_groups,
    run_with_prompt,
    split_params,
)
from common.run import Run, make_accelerator


def initial_prompt(model, tokenizer, t=20, init="vocab", text=None):
    """t x d starting vectors: uniform in [-0.5, 0.5] ("random"), random rows of the embedding table
    ("vocab"), or the embeddings of `text` repeated or cut to t tokens ("text"). The table may be
    partitioned (ZeRO-3): it is gathered to read rows, on every rank (a collective), before
    prepare."""
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
        self.model = model
        self.config = model.config  # DeepSpeed sizes its buckets from it
        self.prompt = nn.Parameter(prompt)

    def forward(
        self, input_ids, attention_mask, labels=None, token_type_ids=None, position_ids=None
    ):
        # (position_ids, if a collator made them, are made again: the prompt comes first)
        input_ids, attention_mask, token_type_ids = pack_left(
            input_ids, attention_mask, token_type_ids
        )
        prompt = self.prompt.expand(len(input_ids), -1, -1)  # the same t x d for every row
        return run_with_prompt(
            self.model, prompt, input_ids, attention_mask, token_type_ids, labels
        )


def add_method(model, tokenizer, *, num_virtual_tokens, prompt_init, prompt_init_text, **_):
    """Prompt tuning on a loaded model as the flags of the same names ask (others are ignored:
    main and exports.load_trained pass a run's flags)."""
    freeze_backbone(model)
    prompt = initial_prompt(model, tokenizer, num_virtual_tokens, prompt_init, prompt_init_text)
    return PromptTuning(model, prompt)


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(**vars(args))
    run = Run(accelerator, "prompt", outputs=["peft"], **vars(args))  # owns OUTPUT_DIR
    set_seed(args.seed)
    tokenizer, model = load_model(extra_positions=args.num_virtual_tokens, **vars(args))

    # The method: freeze the backbone, put a trainable prompt before the input embeddings.
    heads = head_names(model)
    with usage_errors():  # an init text without tokens: a one-line error
        model = add_method(model, tokenizer, **vars(args))
    names = trainable_names(model)

    train_loader, eval_loaders = make_dataloaders(accelerator, tokenizer, False, **vars(args))
    _, head = split_params(model, model.model)  # the prompt has its own rate
    groups = [
        {"params": [model.prompt], "lr": args.prompt_learning_rate, "weight_decay": 0.0},
        *optimizer_groups(head, args.weight_decay),
    ]
    optimizer = adamw(groups, **vars(args))
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
    if accelerator.is_main_process:  # OUTPUT_DIR/peft: the prompt and the head as a peft adapter
        head = exports.head_of(trained, heads, inside="model.")
        config = accelerator.unwrap_model(model).config
        path = os.path.join(args.output_dir, "peft")
        exports.peft_prompt(path, trained["prompt"], head, config, args.model_name_or_path)
    run.close()  # results.json


if __name__ == "__main__":
    run_main(main)
