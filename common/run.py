"""The bookkeeping between training steps, written once for every train_*.py: step counts, the
running loss, evaluation, the log, the best weights, resumable checkpoints and results.json.

A script's loop keeps what a reader must see (the step math: accumulate, backward, optimizer and
scheduler steps) and calls a Run after each batch:

    run = Run(args, accelerator, "lora", len(train_loader))   # before prepare: run.max_steps for the scheduler
    ... accelerator.prepare(...)
    run.begin(model, eval_loaders, names)                     # after prepare: resumes a checkpoint
    for epoch in run.epochs():
        model.train()
        train_loader.set_epoch(epoch)
        for batch in run.remaining(train_loader, epoch):
            ... the step ...
            run.add_loss(loss)
            if accelerator.sync_gradients:
                run.step_done()                                # evaluate, save best/checkpoint when due
            if run.stop:
                break
    run.finish()                                               # trainable.safetensors, predictions
    run.close(trainable, total)                                # results.json
"""
import math
import os
import time

import torch
from tqdm.auto import tqdm

from common.checkpoint import (atomic_save_tensors, atomic_write_json, find_checkpoint, load_checkpoint,
                               save_checkpoint, save_trainable)
from common.data import TASKS
from common.errors import UsageError
from common.launch import evaluate, write_predictions


class Run:
    """One training run in OUTPUT_DIR: what has happened so far, and the files that record it."""

    def __init__(self, args, accelerator, method, batches_per_epoch):
        self.args, self.accelerator, self.method, self.task = args, accelerator, method, TASKS[args.task]
        # Optimizer steps per epoch: the prepared loader gives each process 1/num_processes of the batches,
        # and a step accumulates gradient_accumulation_steps of them (the epoch's last, shorter group steps too).
        self.grad_accum = accelerator.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(math.ceil(batches_per_epoch / accelerator.num_processes) / self.grad_accum)
        self.max_steps = args.max_train_steps or args.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        self.eval_every = args.eval_steps or self.steps_per_epoch
        self.checkpoint_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
        # The metric that picks best/ and stops early: the validation set's when there is one.
        self.validation = args.validation_size is not None or args.validation_dev_half
        self.select = ("val_" if self.validation else "") + self.task.metric
        self.step, self.log_history, self.best = 0, [], {}  # the checkpointed state (state_dict)
        self.evals_without_gain, self.stopped_early_at = 0, None
        self.stop, self.metrics, self.logits = False, None, None
        if accelerator.is_main_process:
            atomic_write_json(os.path.join(args.output_dir, "args.json"), vars(args))
        if args.with_tracking:
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(f"train_{method}", config)

    def state_dict(self):
        """What a checkpoint stores beside the model, optimizer, scheduler and RNG states."""
        return {"step": self.step, "log_history": self.log_history, "best_metrics": self.best,
                "evals_without_gain": self.evals_without_gain, "stopped_early_at_step": self.stopped_early_at}

    def load_state_dict(self, state):
        self.step, self.log_history, self.best = state["step"], state["log_history"], state["best_metrics"]
        self.evals_without_gain, self.stopped_early_at = state["evals_without_gain"], state["stopped_early_at_step"]

    def begin(self, model, eval_loaders, names, forward=None):
        """Start (or, with --resume_from_checkpoint, continue) training the prepared `model`.
        `names`: the trainable parameters to save; `forward(batch) -> logits` for evaluation."""
        self.model, self.eval_loaders, self.names, self.forward = model, eval_loaders, names, forward
        if self.args.resume_from_checkpoint:
            path = find_checkpoint(self.args.output_dir, self.args.resume_from_checkpoint)
            if path is None:
                raise UsageError(f"no checkpoint at '{self.args.resume_from_checkpoint}'; "
                                 "pass OUTPUT_DIR/checkpoints/step_N or 'latest'")
            self.load_state_dict(load_checkpoint(self.accelerator, path))
            self.accelerator.print(f"resumed from {path} at step {self.step}")
        self.stop = self.step >= self.max_steps or self.stopped_early_at is not None
        self.start_step, self.start_time = self.step, time.perf_counter()
        self.loss_sum, self.loss_count = torch.zeros((), device=self.accelerator.device), 0
        self.progress = tqdm(total=self.max_steps, initial=self.step,
                             disable=not self.accelerator.is_local_main_process)

    def epochs(self):
        """The epochs left to run, from the one a resumed run stopped in."""
        for epoch in range(self.step // self.steps_per_epoch, self.num_epochs):
            if self.stop:
                return
            yield epoch

    def remaining(self, train_loader, epoch):
        """The epoch's batches, without those a resumed run already trained on."""
        done = (self.step - epoch * self.steps_per_epoch) * self.grad_accum
        return self.accelerator.skip_first_batches(train_loader, done) if done else train_loader

    def add_loss(self, loss):
        """Count one batch's loss (kept on the device: NCCL can only reduce device tensors)."""
        self.loss_sum, self.loss_count = self.loss_sum + loss.detach().float(), self.loss_count + 1
        self.last_loss = loss

    def step_done(self):
        """After an optimizer step: evaluate, save the best weights and a checkpoint when due."""
        self.step += 1
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{self.last_loss.item():.4f}")
        if self.step % self.eval_every == 0 or self.step == self.max_steps:
            self.evaluate()
        every_n = self.checkpoint_every and self.step % self.checkpoint_every == 0
        epoch_end = (self.args.checkpointing_steps == "epoch" and self.step % self.steps_per_epoch == 0
                     and self.step < self.max_steps)
        if every_n or epoch_end:
            save_checkpoint(self.accelerator, self.args.output_dir, self.step, self.state_dict())
        self.stop = self.stop or self.step >= self.max_steps

    def evaluate(self):
        """Every eval split and the validation set; log the metrics with the mean training loss since
        the last evaluation; save the weights as best/trainable.safetensors when the selection metric
        improves, and stop after --early_stopping_patience evaluations without a gain."""
        args, accelerator = self.args, self.accelerator
        self.metrics, self.logits = evaluate(self.model, self.eval_loaders, accelerator, args.task, self.forward)
        train_loss = accelerator.reduce(self.loss_sum, "mean").item() / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = torch.zeros_like(self.loss_sum), 0
        epoch = (self.step - 1) // self.steps_per_epoch
        self.log_history.append({"step": self.step, "epoch": epoch, "train_loss": train_loss, **self.metrics})
        self.progress.write(f"step {self.step}: train_loss {train_loss:.4f} " +
                            " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()))
        if args.with_tracking:
            accelerator.log({"train_loss": train_loss, **self.metrics}, step=self.step)
        if self.metrics[self.select] > self.best.get(self.select, -math.inf):
            self.best, self.evals_without_gain = {"step": self.step, **self.metrics}, 0
            save_trainable(accelerator, self.model, self.names,
                           os.path.join(args.output_dir, "best", "trainable.safetensors"))
        else:
            self.evals_without_gain += 1
            if args.early_stopping_patience and self.evals_without_gain >= args.early_stopping_patience:
                self.stopped_early_at, self.stop = self.step, True
                self.progress.write(f"step {self.step}: no gain of {self.select} in {self.evals_without_gain} "
                                    f"evaluations, stopping (best: step {self.best['step']})")

    def finish(self):
        """After the loop: the final metrics (evaluated again only if a resumed run had no step
        left), trainable.safetensors, and with --do_predict the GLUE submission files."""
        self.progress.close()
        self.runtime = time.perf_counter() - self.start_time
        if self.metrics is None:
            self.metrics, self.logits = evaluate(self.model, self.eval_loaders, self.accelerator, self.args.task,
                                                 self.forward)
        save_trainable(self.accelerator, self.model, self.names,
                       os.path.join(self.args.output_dir, "trainable.safetensors"))
        if self.args.do_predict:
            write_predictions(self.model, self.eval_loaders, self.accelerator, self.args, self.forward)

    def close(self, trainable, total, **extra):
        """results.json (the output contract every script follows) and the final eval logits;
        print the final line; close the trackers and the process group."""
        args, accelerator = self.args, self.accelerator
        if accelerator.is_main_process:
            samples = ((self.step - self.start_step) * args.per_device_train_batch_size * self.grad_accum *
                       accelerator.num_processes)
            selected = {}
            if self.validation:  # the test set scored with the weights chosen on the validation set
                selected = {"validation_metrics": {k[4:]: v for k, v in self.best.items() if k.startswith("val_")},
                            "test_metrics": {k: v for k, v in self.best.items()
                                             if k != "step" and not k.startswith("val_")}}
            atomic_save_tensors(os.path.join(args.output_dir, "eval_logits.safetensors"), self.logits)
            atomic_write_json(os.path.join(args.output_dir, "results.json"), {
                "task": args.task, "method": self.method, "model": args.model_name_or_path, "metrics": self.metrics,
                "best_metrics": self.best, **selected, "stopped_early_at_step": self.stopped_early_at,
                "log_history": self.log_history, "trainable_params": trainable, "total_params": total, **extra,
                "train_runtime_s": self.runtime,
                "train_samples_per_s": samples / self.runtime if self.runtime else 0.0})
        accelerator.print(f"final {args.task} {self.method}: " +
                          " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()))
        accelerator.end_training()  # closes the trackers and the process group
