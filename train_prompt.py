"""Prompt tuning: learn a few input vectors that steer a frozen model.

Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
https://arxiv.org/abs/2104.08691

t trainable vectors P (t x d, the "soft prompt") are put in front of every input's token
embeddings; the attention mask and positions are extended to cover them. The backbone is
frozen; only P and the classification head train: t x d numbers (20 x 1600 on GPT2-XL). Its
gradients are not clipped by default: on SmolLM2 SST-2 clipping at 1.0 cost 16.5 points (68.2, 84.8).

    [p_1 ... p_t][pad ... pad][x_1 ... x_n]  ->  frozen model  ->  head on x_n
     trainable    masked       token embeddings

Given embeddings rather than ids, GPT-2's classifier cannot find the padding and reads the last
position. So each row is packed to the left padding first, whatever the collator did: the last
position is then its last real token. Positions come from the mask, so padding never shifts them.

    python train_prompt.py --task rte --num_virtual_tokens 20
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prompt.py --task rte

train_idpg.py is this script plus a prompt generator: `diff train_prompt.py train_idpg.py`.
"""

from common.args import base_parser, check_args, require
from common.errors import fail, parse_command_line


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3, max_grad_norm=0.0)  # (the docstring says why)
    add = parser.add_argument
    add("--num_virtual_tokens", type=int, default=20, help="t, the prompt's length")
    add("--prompt_init", choices=["random", "vocab", "text"], default="vocab", help="its start")
    add("--prompt_init_text", default=None, help="text: the words whose embeddings start it")
    add("--prompt_learning_rate", type=float, default=3e-2, help="the prompt's")
    args = check_args(parser, argv, "prompt")
    require(parser, args, "at least 1", "num_virtual_tokens")
    require(parser, args, "positive", "prompt_learning_rate")
    if (args.prompt_init == "text") != (args.prompt_init_text is not None):
        fail("--prompt_init text goes with --prompt_init_text TEXT (and only with it)")
    return args


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import json
import math
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from common import checkpoint, data, evaluation, loop, models, results
from common.checkpoint import whole
from common.errors import run_main, stop_on_signals, usage_errors
from common.outputs import atomic_write_text
from common.prompts import pack_left, run_with_prompt, split_params


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
    with whole([emb.weight]) as (table,):
        return table[ids].detach().clone()


class PromptTuning(nn.Module):
    """A frozen sequence classifier with a trainable soft prompt before its input embeddings."""

    def __init__(self, model, prompt):
        super().__init__()
        self.model = model
        self.config = model.config  # DeepSpeed sizes its buckets from it
        self.prompt = nn.Parameter(prompt)

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None, position_ids=None):
        # (position_ids, if a collator made them, are made again: the prompt comes first)
        input_ids, attention_mask, token_type_ids = pack_left(input_ids, attention_mask, token_type_ids)
        prompt = self.prompt.expand(len(input_ids), -1, -1)  # the same t x d for every row
        return run_with_prompt(self.model, prompt, input_ids, attention_mask, token_type_ids, labels)


def add_method(model, tokenizer, num_virtual_tokens, prompt_init, prompt_init_text):
    """Prompt tuning on a loaded model as the flags of the same names ask (predict.py rebuilds a run with this)."""
    models.freeze_backbone(model)
    prompt = initial_prompt(model, tokenizer, num_virtual_tokens, prompt_init, prompt_init_text)
    return PromptTuning(model, prompt)


def peft_export(path, prompt, head, config, base_model):
    """OUTPUT_DIR/peft: the prompt (t x d) and the head (by its names in the transformers model, `config` its config)
    as a peft adapter, for PeftModel.from_pretrained(base, path). peft's classifier reads the last position: give it
    unpadded or left-padded rows."""
    peft_config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "modules_to_save": sorted({n.split(".")[0] for n in head}),
        "inference_mode": True,
    }
    atomic_write_text(f"{path}/adapter_config.json", json.dumps(peft_config, indent=2) + "\n")
    tensors = {"prompt_embeddings": prompt, **{f"base_model.{n}": t for n, t in head.items()}}
    checkpoint.atomic_save_tensors(f"{path}/adapter_model.safetensors", tensors)


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer and the model with the method added
    (the backbone frozen), as the flags ask; the trainable weights in fp32 (AdamW's state too), whatever the
    checkpoint's dtype. Also the head's module names."""
    # GLUE's, or your own data's files
    task, splits = data.load_data(
        accelerator, args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file, text_columns=args.text_columns,
        label_column=args.label_column, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half, seed=args.seed, do_predict=args.do_predict,
    )  # fmt: skip
    tokenizer, model = models.load_model(
        args.model_name_or_path, task, args.max_length, extra_positions=args.num_virtual_tokens, dtype=args.base_dtype,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
    )  # fmt: skip

    # Prompt tuning: freeze the backbone, put a trainable prompt before the input embeddings.
    heads = models.head_names(model)
    with usage_errors():  # an init text without tokens: a one-line error
        model = add_method(model, tokenizer, args.num_virtual_tokens, args.prompt_init, args.prompt_init_text)
    if args.gradient_checkpointing:  # activations recomputed in the backward pass: less memory, more time
        models.checkpoint_activations(model.model)
    models.upcast_trainable(model, accelerator)
    return task, splits, tokenizer, model, heads


def main(args):
    # (under DeepSpeed, its JSON found from any folder; on a CPU without GPUs, FSDP2 over gloo: make_accelerator says)
    accelerator = loop.make_accelerator(
        args.output_dir, args.max_grad_norm, args.ddp_timeout, args.with_tracking, args.report_to, args.torch_compile
    )
    # Prompt tuning: its export
    with loop.OutputDir(  # claimed: OUTPUT_DIR's lock held until this block ends, the checkpoint to resume checked
        accelerator, "prompt", vars(args), output_dir=args.output_dir, outputs=["peft"],
        overwrite=args.overwrite_output_dir, resume=args.resume_from_checkpoint, predict=args.do_predict,
        tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model, heads = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        accelerator.print(models.describe(model))

        # (the prompt comes first: the forward makes the positions)
        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, position_ids=False, task=task, max_length=args.max_length,
            per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        _, head = split_params(model, model.model)  # Prompt tuning: the prompt has its own rate
        groups = [{"params": [model.prompt], "lr": args.prompt_learning_rate, "weight_decay": 0.0}]
        groups += models.optimizer_groups(head, args.weight_decay)
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
        if accelerator.is_main_process:  # Prompt tuning: OUTPUT_DIR/peft, the prompt and the head as a peft adapter
            head = checkpoint.head_of(trained, heads, inside="model.")
            config = accelerator.unwrap_model(model).config
            peft_export(f"{args.output_dir}/peft", trained["prompt"], head, config, args.model_name_or_path)
        results.write_results(
            accelerator, state, model, args.output_dir, method="prompt", task=task, model_name=args.model_name_or_path,
            metrics=metrics, logits=logits, train_loader=train_loader, eval_loaders=eval_loaders, runtime=runtime,
            start_size=start_size,
            learning_rates={"learning_rate": args.learning_rate, "prompt_learning_rate": args.prompt_learning_rate},
            max_grad_norm=args.max_grad_norm, extra={"precision": models.precision(accelerator, model, optimizer)},
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
