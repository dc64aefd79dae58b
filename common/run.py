"""The bookkeeping of a training run, written once for every train_*.py: the output folder it owns,
step counts, the running loss, evaluation, the log, the best weights, resumable checkpoints and
results.json.

A script's loop keeps what a reader must see (the step math: accumulate, backward, optimizer and
scheduler steps) and calls a Run around it:

    run = Run(args, accelerator, "lora")                 # claims OUTPUT_DIR before any work
    ...
    max_steps = run.count_steps(len(train_loader))       # before prepare: for the scheduler
    ... accelerator.prepare(...)
    run.begin(model, eval_loaders, names)                # after prepare: resumes a checkpoint
    for epoch in run.epochs():
        model.train()
        train_loader.set_epoch(epoch)
        for batch in run.remaining(train_loader, epoch):
            ... the step ...
            run.add_loss(loss, batch)
            if accelerator.sync_gradients:
                run.step_done()                          # evaluate, save best/checkpoint when due
            if run.stop:
                break
    run.finish()                                         # trainable.safetensors, predictions
    run.close(trainable, total)                          # results.json
"""
import math
import os
import shutil
import time
import uuid

import torch
from tqdm.auto import tqdm

from common import errors
from common.checkpoint import (atomic_save_tensors, atomic_write_json, find_checkpoint, load_checkpoint,
                               read_json, replacing, save_checkpoint, save_trainable)
from common.data import TASKS
from common.errors import UsageError
from common.launch import evaluate, write_predictions
from common.outputs import claim, inside

# Flags that change how a run is done, not what it computes: everything else is the run's identity,
# which a checkpoint records and a resume must match.
OPERATIONAL = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpointing_steps", "with_tracking",
               "report_to", "do_predict", "per_device_eval_batch_size", "data_dir", "merge_and_save", "logging_steps",
               "no_cache", "torch_compile", "pad_to_multiple_of"}
# What every run writes in OUTPUT_DIR (a script names its own outputs beside these).
OUTPUTS = ("args.json", "results.json", "eval_logits.safetensors", "trainable.safetensors", "best", "checkpoints")


def identity(args, method, accelerator):
    """What a checkpoint must have been written with to be resumed: the script, every flag that
    changes the result, and the launch settings that shape the saved states and the data order."""
    launch = {"num_processes": accelerator.num_processes,
              "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
              "mixed_precision": str(accelerator.mixed_precision), "distributed_type": str(accelerator.distributed_type)}
    return {"method": method, **launch, **{k: v for k, v in sorted(vars(args).items()) if k not in OPERATIONAL}}


def differences(saved, ours):
    """The flags in which two identities differ, as `--name value` pairs."""
    show = lambda who, k: f"--{k} {who.get(k)}" if k != "method" else f"train_{who.get(k)}.py"  # noqa: E731
    # (num_processes, gradient_accumulation_steps and mixed_precision are accelerate launch's flags)
    keys = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    return " ".join(show(saved, k) for k in keys), " ".join(show(ours, k) for k in keys)


class Run:
    """One training run in OUTPUT_DIR: what has happened so far, and the files that record it."""

    def __init__(self, args, accelerator, method, outputs=()):
        """Claim OUTPUT_DIR for a run that writes `outputs` there (the script's own, beside OUTPUTS)
        and check that it is free for this run (common/outputs.py: not written by a running run,
        not holding another run's results unless --overwrite_output_dir), and that a checkpoint to
        resume is complete and was written by a run with the same flags and launch settings.
        Every rank gets the same verdict."""
        from accelerate.utils import broadcast_object_list

        self.args, self.accelerator, self.method, self.task = args, accelerator, method, TASKS[args.task]
        ids = [uuid.uuid4().hex[:12]]
        if accelerator.num_processes > 1:
            broadcast_object_list(ids)  # the main process's: names the temporary folders every rank writes to
        self.identity, self.run_id = identity(args, method, accelerator), ids[0]
        self.checkpoint = self.last_checkpoint = None
        errors.resume_note = errors.NO_CHECKPOINT
        outputs = [*OUTPUTS, *outputs, *(["predictions"] if args.do_predict else []),
                   *([f"train_{method}"] if args.with_tracking else [])]  # the trackers' logs
        verdict = [None]
        try:
            if args.resume_from_checkpoint:
                self.checkpoint = self.check_resume(args.resume_from_checkpoint)
            if accelerator.is_main_process:
                here = self.checkpoint is not None and inside(self.checkpoint, os.path.join(args.output_dir,
                                                                                           "checkpoints"))
                self.lock = claim(args.output_dir, outputs, self.run_id, args.overwrite_output_dir, here)
        except UsageError as e:
            verdict = [str(e)]
        if accelerator.num_processes > 1:
            broadcast_object_list(verdict)
        if verdict[0]:
            if accelerator.is_main_process and hasattr(self, "lock"):
                os.remove(self.lock)
            raise UsageError(verdict[0])
        if accelerator.is_main_process:
            atomic_write_json(os.path.join(args.output_dir, "args.json"), vars(args))
        if args.with_tracking:
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(f"train_{method}", config)
        # The metric that picks best/ and stops early: the validation set's when there is one.
        self.validation = args.validation_size is not None or args.validation_dev_half
        self.select = ("val_" if self.validation else "") + self.task.metric
        self.step, self.log_history, self.best = 0, [], {}  # the checkpointed state (state_dict)
        self.evals_without_gain, self.stopped_early_at = 0, None
        self.stop, self.metrics, self.logits = False, None, None

    def check_resume(self, which):
        path, skipped = find_checkpoint(self.args.output_dir, which)
        for line in skipped:
            self.accelerator.print(line)
        if path is None:
            raise UsageError(f"no checkpoint at '{which}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'")
        saved = read_json(os.path.join(path, "trainer_state.json")).get("identity", {})
        if saved != self.identity:
            theirs, ours = differences(saved, self.identity)
            raise UsageError(f"{path} was written by a run with {theirs}; this run has {ours}: resume with the "
                             "same flags, or start a new run in another --output_dir")
        return path

    def count_steps(self, batches_per_epoch):
        """The run's length in optimizer steps, for the scheduler; call before prepare."""
        # The prepared loader gives each process 1/num_processes of the batches, and a step accumulates
        # gradient_accumulation_steps of them (the epoch's last, shorter group steps too).
        self.grad_accum = self.accelerator.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(math.ceil(batches_per_epoch / self.accelerator.num_processes) /
                                         self.grad_accum)
        self.max_steps = self.args.max_train_steps or self.args.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        self.eval_every = self.args.eval_steps or self.steps_per_epoch
        return self.max_steps

    def state_dict(self):
        """What a checkpoint stores beside the model, optimizer, scheduler and RNG states (every rank
        calls it: the loss since the last evaluation is averaged over the ranks, a collective)."""
        return {"step": self.step, "log_history": self.log_history, "best_metrics": self.best,
                "evals_without_gain": self.evals_without_gain, "stopped_early_at_step": self.stopped_early_at,
                "loss_sum": self.accelerator.reduce(self.loss_sum, "mean").item(), "loss_count": self.loss_count,
                "identity": self.identity, "run_id": self.run_id}

    def load_state_dict(self, state):
        self.step, self.log_history, self.best = state["step"], state["log_history"], state["best_metrics"]
        self.evals_without_gain, self.stopped_early_at = state["evals_without_gain"], state["stopped_early_at_step"]
        self.loss_sum = torch.tensor(state["loss_sum"], device=self.accelerator.device)
        self.loss_count = state["loss_count"]

    def begin(self, model, eval_loaders, names, forward=None):
        """Start (or continue the checkpoint of --resume_from_checkpoint) training the prepared `model`.
        `names`: the trainable parameters to save; `forward(batch) -> logits` for evaluation."""
        self.model, self.eval_loaders, self.names, self.forward = model, eval_loaders, names, forward
        self.loss_sum, self.loss_count = torch.zeros((), device=self.accelerator.device), 0  # since the last evaluation
        if self.checkpoint:
            self.load_state_dict(load_checkpoint(self.accelerator, self.checkpoint))
            kept = os.path.join(self.checkpoint, "best.safetensors")  # best/ as it was at the checkpoint
            if self.accelerator.is_main_process and os.path.exists(kept):
                best = os.path.join(self.args.output_dir, "best", "trainable.safetensors")
                with replacing(best) as tmp:  # a new file: the checkpoint's stays as it is
                    shutil.copyfile(kept, tmp)
            self.noted(self.checkpoint)
            self.accelerator.print(f"resumed from {self.checkpoint} at step {self.step}")
        self.stop = self.step >= self.max_steps or self.stopped_early_at is not None
        self.start_step, self.start_time, self.aside = self.step, time.perf_counter(), 0.0  # aside: eval and saving
        self.window_sum = torch.zeros((), device=self.accelerator.device)  # since the last log line
        self.tokens, self.padded = torch.zeros((), dtype=torch.long, device=self.accelerator.device), 0  # this run's
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

    def add_loss(self, loss, batch):
        """Count one batch's loss and tokens, on the device: no host sync here (NCCL also reduces only
        device tensors)."""
        loss = loss.detach().float()
        self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        self.window_sum = self.window_sum + loss
        mask = batch["attention_mask"]
        self.tokens, self.padded = self.tokens + mask.sum(), self.padded + mask.numel()

    def step_done(self):
        """After an optimizer step: show the loss every --logging_steps steps, evaluate, save the best
        weights and a checkpoint when due."""
        self.step += 1
        self.progress.update(1)
        if self.step % self.args.logging_steps == 0:  # the loop's one host sync between evaluations
            window = self.check_finite(self.window_sum) / (self.args.logging_steps * self.grad_accum)
            self.progress.set_postfix(loss=f"{window:.4f}")
            self.window_sum = torch.zeros_like(self.window_sum)
        started = time.perf_counter()
        if self.step % self.eval_every == 0 or self.step == self.max_steps:
            self.evaluate()
        every = self.args.checkpointing_steps
        every_n = every not in (None, "epoch") and self.step % int(every) == 0
        epoch_end = every == "epoch" and self.step % self.steps_per_epoch == 0 and self.step < self.max_steps
        if every_n or epoch_end:
            self.check_finite(self.loss_sum)
            best = os.path.join(self.args.output_dir, "best", "trainable.safetensors")
            path = save_checkpoint(self.accelerator, self.args.output_dir, self.step, self.state_dict(), self.run_id,
                                   files={"best.safetensors": best} if self.best else None)
            self.noted(path)
        self.aside += time.perf_counter() - started  # train_runtime_s counts training only
        self.stop = self.stop or self.step >= self.max_steps

    def check_finite(self, loss_sum):
        """The loss so far as a float, or a one-line stop if it is nan or infinite (before anything is
        saved: no nan weights on disk)."""
        value = loss_sum.item()
        if not math.isfinite(value):
            raise UsageError(f"the training loss is {value} at step {self.step}: the run stopped; "
                             f"{errors.resume_note}. Try a lower --learning_rate")
        return value

    def noted(self, path):
        """Remember the last checkpoint, for the line an interrupted or failed run prints."""
        self.last_checkpoint = path
        errors.resume_note = f"the last checkpoint is {path} (resume with --resume_from_checkpoint latest)"

    def evaluate(self):
        """Every eval split and the validation set; log the metrics with the mean training loss since
        the last evaluation; save the weights as best/trainable.safetensors when the selection metric
        improves, and stop after --early_stopping_patience evaluations without a gain."""
        args, accelerator = self.args, self.accelerator
        self.metrics, self.logits = evaluate(self.model, self.eval_loaders, accelerator, args.task, self.forward)
        total = self.check_finite(accelerator.reduce(self.loss_sum, "mean"))
        train_loss = total / max(self.loss_count, 1)
        self.loss_sum, self.loss_count = torch.zeros_like(self.loss_sum), 0
        epoch = (self.step - 1) // self.steps_per_epoch
        self.log_history.append({"step": self.step, "epoch": epoch, "train_loss": train_loss, **self.metrics})
        self.progress.write(f"step {self.step}: train_loss {train_loss:.4f} " +
                            " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()))
        if args.with_tracking:
            accelerator.log({"train_loss": train_loss, **self.metrics}, step=self.step)
        if not self.best or rank(self.metrics[self.select]) > rank(self.best[self.select]):  # the first always
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
        self.runtime = time.perf_counter() - self.start_time - self.aside
        if self.metrics is None:
            self.metrics, self.logits = evaluate(self.model, self.eval_loaders, self.accelerator, self.args.task,
                                                 self.forward)
        save_trainable(self.accelerator, self.model, self.names,
                       os.path.join(self.args.output_dir, "trainable.safetensors"))
        if self.args.do_predict:
            write_predictions(self.model, self.eval_loaders, self.accelerator, self.args, self.forward)

    def close(self, trainable, total, **extra):
        """results.json (the output contract every script follows) and the final eval logits;
        print the final line; close the trackers and the process group; free OUTPUT_DIR."""
        args, accelerator = self.args, self.accelerator
        tokens, padded = accelerator.reduce(torch.stack([self.tokens, self.tokens.new_tensor(self.padded)])).tolist()
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
                "train_runtime_s": self.runtime, "train_samples_per_s": samples / self.runtime if self.runtime else 0.0,
                "train_tokens": tokens, "train_padded_tokens": padded,
                "train_tokens_per_s": tokens / self.runtime if self.runtime else 0.0})
            os.remove(self.lock)
        accelerator.print(f"final {args.task} {self.method}: " +
                          " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()))
        accelerator.end_training()  # closes the trackers and the process group



def rank(value):
    """A metric for comparison: nan (undefined, e.g. Pearson of constant predictions) ranks lowest."""
    return -math.inf if value is None or math.isnan(value) else value
