"""Full fine-tuning of a sequence classifier on a GLUE task: the baseline of every PEFT script.

Every weight of the pretrained model is trained, with a classification head on top (GPT-2 pools the hidden state of
the last real token of each row). It is the most accurate and the most expensive method: the optimizer keeps two
fp32 moments for each weight, and a checkpoint is the whole model. The PEFT scripts share this loop and change what
is trained.

    python train_full.py --task rte                                   # one process
    accelerate launch --config_file accelerate_configs/ddp.yaml train_full.py --task rte
    accelerate launch --config_file accelerate_configs/zero3.yaml train_full.py --task rte \\
        --model_name_or_path gpt2-xl

Outputs in --output_dir: results.json (final and best metrics, parameter counts, speed), model/ (a standard
transformers folder: from_pretrained, pipeline), trainable.safetensors (here: every weight),
best/trainable.safetensors, args.json, and checkpoints/step_N when --checkpointing_steps is set.
"""

from common.args import base_parser, check_args
from common.errors import parse_command_line


def parse_args(argv=None):
    parser = base_parser(__doc__)
    # Full fine-tuning adds no flags of its own; each PEFT script adds its method's flags here.
    return check_args(parser, argv, "full")


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import math
import time

from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from common import checkpoint, data, evaluation, loop, models, results
from common.errors import run_main, stop_on_signals


def add_method(model):
    """Full fine-tuning adds nothing: every parameter trains (predict.py rebuilds a run with this)."""
    return model


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer and the model, as the flags ask; its
    weights in fp32 (AdamW's state too), whatever the checkpoint's dtype."""
    task, splits = data.load_data(  # GLUE's, or your own data's files, every one read and checked
        accelerator, args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file, text_columns=args.text_columns,
        label_column=args.label_column, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half, seed=args.seed, do_predict=args.do_predict,
    )  # fmt: skip
    tokenizer, model = models.load_model(
        args.model_name_or_path, task, args.max_length, dtype=args.base_dtype,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
    )  # fmt: skip
    # Full fine-tuning: nothing to add. Every parameter trains and is saved.
    if args.gradient_checkpointing:  # activations recomputed in the backward pass: less memory, more time
        models.checkpoint_activations(model)
    models.upcast_trainable(model, accelerator)
    return task, splits, tokenizer, model


def main(args):
    # (under DeepSpeed, its JSON found from any folder; on a CPU without GPUs, FSDP2 over gloo: make_accelerator says)
    accelerator = loop.make_accelerator(
        args.output_dir, args.max_grad_norm, args.ddp_timeout, args.with_tracking, args.report_to, args.torch_compile
    )
    # OUTPUT_DIR claimed: its lock held until this block ends, the checkpoint to resume checked; full fine-tuning's
    # export (OUTPUT_DIR/model, a transformers folder) among what the run writes
    with loop.OutputDir(
        accelerator, "full", vars(args), output_dir=args.output_dir, outputs=["model"],
        overwrite=args.overwrite_output_dir, resume=args.resume_from_checkpoint, predict=args.do_predict,
        tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        accelerator.print(models.describe(model))

        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, task=task, position_ids=models.takes_position_ids(model),
            max_length=args.max_length, per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        groups = models.optimizer_groups(model.parameters(), args.weight_decay)
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
        if accelerator.is_main_process:  # Full fine-tuning: OUTPUT_DIR/model, a standard transformers folder
            config = accelerator.unwrap_model(model).config
            checkpoint.transformers_folder(f"{args.output_dir}/model", trained, config, tokenizer)
        results.write_results(
            accelerator, state, model, args.output_dir, method="full", task=task, model_name=args.model_name_or_path,
            metrics=metrics, logits=logits, train_loader=train_loader, eval_loaders=eval_loaders, runtime=runtime,
            learning_rates={"learning_rate": args.learning_rate}, max_grad_norm=args.max_grad_norm,
            start_size=start_size, extra={"precision": models.precision(accelerator, model, optimizer)},
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
