"""The bookkeeping of a training run, written once for every train_*.py: the accelerator, the
output folder it owns, step counts, the running loss, evaluation, the log, the best weights,
resumable checkpoints and results.json.

A script's loop keeps what a reader must see, the step, and a Run around it:

    run = Run(accelerator, "full", outputs=["model"], **vars(args))  # claims OUTPUT_DIR first
    ...
    max_steps = run.count_steps(len(train_loader))     # before prepare: for the scheduler
    ... accelerator.prepare(...)
    run.begin(model, eval_loaders, names)              # after prepare: resumes a checkpoint
    for batch in run.batches(train_loader):            # epochs, resume, stops; idx removed
        with accelerator.accumulate(model):
            ... forward, backward, optimizer and scheduler steps ...
        run.after_batch(loss)                          # log, evaluate, best/, checkpoints when due
    trained = run.finish()                             # trainable.safetensors; the tensors
    ... the script's own exports, from `trained` ...
    run.close()                                        # results.json
"""

import math
import os
import shutil
import signal
import time
import uuid

import torch
from tqdm.auto import tqdm

from common.checkpoint import (
    atomic_save_tensors,
    find_checkpoint,
    load_checkpoint,
    local_part,
    save_checkpoint,
    save_trainable,
)
from common.errors import NO_CHECKPOINT, UsageError, stop_on_signals
from common.evaluation import constant_metrics, evaluate, write_predictions
from common.model import count_params
from common.outputs import atomic_write_json, claim, inside, read_json, replacing
from common.tasks import TASKS

# Flags that change how a run is done, not what it computes: every other flag is part of the
# run's identity, which a checkpoint records and a resume must match.
OPERATIONAL = {
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "checkpointing_steps",
    "with_tracking",
    "report_to",
    "do_predict",
    "per_device_eval_batch_size",
    "data_dir",
    "merge_and_save",
    "logging_steps",
    "no_cache",
    "torch_compile",
    "pad_to_multiple_of",
    "config",
}
# What every run writes in OUTPUT_DIR (a script names its own outputs beside these).
OUTPUTS = (
    "curves.png",
    "args.json",
    "results.json",
    "eval_logits.safetensors",
    "trainable.safetensors",
    "best",
    "checkpoints",
)


def make_accelerator(
    output_dir, with_tracking=False, report_to="tensorboard", torch_compile=False, **_
):
    """An Accelerator for a run in `output_dir` (keywords: the flags of the same names; other flags
    are ignored), that also works on a machine without GPUs.

    Without an accelerator device, torch.distributed needs the gloo backend, which accelerate
    does not pick for DeepSpeed, and a multi-GPU launch must be told to run DDP on the CPU.
    Both settings change nothing on a GPU machine.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

    # A yaml names its DeepSpeed JSON by a path relative to where it is run from; the shipped ones
    # (accelerate_configs/zero3.json) are found from any folder.
    json_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), json_file)
    if json_file.endswith(".json") and not os.path.isfile(json_file) and os.path.isfile(shipped):
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = shipped
    no_device = not torch.accelerator.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false") == "true"
    accelerator = Accelerator(
        # A multi-GPU yaml on CPU: real DDP over gloo, not two lone runs.
        cpu=no_device and not deepspeed,
        log_with=report_to if with_tracking else None,
        project_dir=output_dir,
        # Run.batches calls set_epoch(epoch): with a seedable sampler that reshuffles, in the same
        # order on every rank and again after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        # The loops step the scheduler once per optimizer step, under sync_gradients; accelerate's
        # default would step it once per process on every call.
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if torch_compile else "no",  # prepare() compiles the model
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if no_device and deepspeed else [],
    )
    if no_device and fsdp:
        cpu_fsdp(accelerator)
    return accelerator


def cpu_fsdp(accelerator):
    """FSDP on a machine without GPUs, for the tests: accelerate 1.15 sets FSDP up only on an
    accelerator device (on a CPU an FSDP yaml gives DDP over gloo), while torch's FSDP2 shards over
    gloo. So the gloo state becomes an FSDP one, with the launcher's settings; prepare() then
    shards the model with fully_shard as on GPUs. Nothing changes on a GPU machine."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def identity(flags, method, accelerator):
    """What a checkpoint must have been written with to be resumed: the script, every flag that
    changes the result, and the launch settings that shape the saved states and the data order
    (num_processes, gradient_accumulation_steps and mixed_precision are accelerate launch's
    flags)."""
    launch = {
        "num_processes": accelerator.num_processes,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "mixed_precision": str(accelerator.mixed_precision),
        "distributed_type": str(accelerator.distributed_type),
    }
    chosen = {k: v for k, v in sorted(flags.items()) if k not in OPERATIONAL}
    return {"method": method, **launch, **chosen}


def differences(saved, ours):
    """The flags in which two identities differ, as `--name value` pairs, theirs and ours."""

    def show(who, key):
        return f"train_{who.get(key)}.py" if key == "method" else f"--{key} {who.get(key)}"

    keys = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    return " ".join(show(saved, k) for k in keys), " ".join(show(ours, k) for k in keys)


def draw_curves(log_history, metric, path):
    """`path` (a PNG): the training loss at every logged step and the eval `metric` at every
    evaluation, against the step. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    losses = [(h["step"], h["loss"]) for h in log_history if h.get("loss") is not None]
    evals = [(h["step"], h[metric]) for h in log_history if h.get(metric) is not None]
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        left.plot(*zip(*losses), color="C0", label="training loss")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss", color="C0")
    right = left.twinx()
    if evals:
        right.plot(*zip(*evals), "o-", color="C1", label=metric)
    right.set_ylabel(f"eval {metric}", color="C1")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def rank(value):
    """A metric for comparison: nan (undefined: Pearson of constant predictions) ranks lowest."""
    return -math.inf if value is None or math.isnan(value) else value


class Run:
    """One training run in OUTPUT_DIR: what has happened so far, and the files that record it.

    The keywords are the script's flags of the same names; every other flag (`flags`) is only
    recorded, in args.json and in the identity a resumed checkpoint must match."""

    def __init__(
        self,
        accelerator,
        method,
        *,
        task,
        output_dir,
        outputs=(),
        overwrite_output_dir=False,
        resume_from_checkpoint=None,
        num_train_epochs=3,
        max_train_steps=None,
        eval_steps=None,
        checkpointing_steps=None,
        logging_steps=10,
        early_stopping_patience=None,
        validation_size=None,
        validation_dev_half=False,
        do_predict=False,
        with_tracking=False,
        **flags,
    ):
        """Claim OUTPUT_DIR for a run that writes `outputs` there (the script's own, beside
        OUTPUTS; common/outputs.py: not while another run writes there, not over another run's
        results unless --overwrite_output_dir), and check that a checkpoint to resume is complete
        and was written with the same flags and launch settings. Every rank gets the same
        verdict."""
        from accelerate.utils import broadcast_object_list

        self.accelerator = accelerator
        self.method = method
        self.task = task
        self.output_dir = output_dir
        self.num_train_epochs = num_train_epochs
        self.max_train_steps = max_train_steps
        self.eval_steps = eval_steps
        self.checkpointing_steps = checkpointing_steps
        self.logging_steps = logging_steps
        self.patience = early_stopping_patience
        self.do_predict = do_predict
        self.with_tracking = with_tracking
        self.flags = {
            "task": task,
            "output_dir": output_dir,
            "overwrite_output_dir": overwrite_output_dir,
            "resume_from_checkpoint": resume_from_checkpoint,
            "num_train_epochs": num_train_epochs,
            "max_train_steps": max_train_steps,
            "eval_steps": eval_steps,
            "checkpointing_steps": checkpointing_steps,
            "logging_steps": logging_steps,
            "early_stopping_patience": early_stopping_patience,
            "validation_size": validation_size,
            "validation_dev_half": validation_dev_half,
            "do_predict": do_predict,
            "with_tracking": with_tracking,
            **flags,
        }
        ids = [uuid.uuid4().hex[:12]]
        if accelerator.num_processes > 1:
            # the main process's: names the temporary folders every rank writes to
            broadcast_object_list(ids)
        self.run_id = ids[0]
        self.identity = identity(self.flags, method, accelerator)
        self.checkpoint = None  # the one to resume
        self.last_saved = (
            None  # the newest this run wrote or resumed, for the line a stopped run prints
        )
        outputs = [*OUTPUTS, *outputs]
        if do_predict:
            outputs.append("predictions")
        if with_tracking:
            outputs.append(f"train_{method}")  # the trackers' logs
        self.lock = None
        verdict = [None]
        try:
            if resume_from_checkpoint:
                self.checkpoint = self.check_resume(resume_from_checkpoint)
            if accelerator.is_main_process:
                here = self.checkpoint is not None and inside(
                    self.checkpoint, os.path.join(output_dir, "checkpoints")
                )
                self.lock = claim(output_dir, outputs, self.run_id, overwrite_output_dir, here)
        except UsageError as e:
            verdict = [str(e)]
        if accelerator.num_processes > 1:
            broadcast_object_list(verdict)
        if verdict[0]:
            if self.lock:
                os.remove(self.lock)
            raise UsageError(verdict[0])
        if accelerator.is_main_process:  # (exports.load_trained rebuilds the model from it)
            atomic_write_json(
                os.path.join(output_dir, "args.json"), {"method": method, **self.flags}
            )
        if with_tracking:
            config = {k: v for k, v in self.flags.items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers(f"train_{method}", config)
        # Ctrl-C and SIGTERM say where the last checkpoint is
        self.signals = stop_on_signals(self.note)
        # The metric that picks best/ and stops early: the validation set's when there is one.
        validation = validation_size is not None or validation_dev_half
        self.validation = validation
        self.select = ("val_" if validation else "") + TASKS[task].metric
        # The state a checkpoint stores (state_dict), and what the last evaluation gave.
        self.step = 0
        self.log_history = []
        self.best = {}
        self.evals_without_gain = 0
        self.stopped_early_at = None
        self.stop = False
        self.metrics = None
        self.logits = None

    def check_resume(self, which):
        path, skipped = find_checkpoint(self.output_dir, which)
        for line in skipped:
            self.accelerator.print(line)
        if path is None:
            raise UsageError(
                f"no checkpoint at '{which}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'"
            )
        saved = read_json(os.path.join(path, "trainer_state.json")).get("identity", {})
        if saved != self.identity:
            theirs, ours = differences(saved, self.identity)
            raise UsageError(
                f"{path} was written by a run with {theirs}; this run has {ours}: resume with the "
                "same flags, or start a new run in another --output_dir"
            )
        return path

    def note(self):
        """Where the last checkpoint is: the line an interrupted or failed run prints."""
        if self.last_saved is None:
            return NO_CHECKPOINT
        resume = "resume with --resume_from_checkpoint latest"
        return f"the last checkpoint is {self.last_saved} ({resume})"

    def count_steps(self, batches_per_epoch):
        """The run's length in optimizer steps, for the scheduler; call before prepare."""
        # The prepared loader gives each process 1/num_processes of the batches, and a step
        # accumulates gradient_accumulation_steps of them (the epoch's last, shorter group steps
        # too).
        self.grad_accum = self.accelerator.gradient_accumulation_steps
        per_process = math.ceil(batches_per_epoch / self.accelerator.num_processes)
        self.steps_per_epoch = math.ceil(per_process / self.grad_accum)
        self.max_steps = self.max_train_steps or self.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        self.eval_every = self.eval_steps or self.steps_per_epoch
        return self.max_steps

    def state_dict(self):
        """What a checkpoint stores beside the model, optimizer, scheduler and RNG states (every
        rank calls it: the running losses are gathered, one value a rank, a collective; a resume
        has the same ranks, each takes its own back, and the logged means are bitwise the same)."""
        return {
            "step": self.step,
            "log_history": self.log_history,
            "best_metrics": self.best,
            "evals_without_gain": self.evals_without_gain,
            "stopped_early_at_step": self.stopped_early_at,
            "loss_sum": self.accelerator.gather(self.loss_sum[None]).tolist(),
            "loss_count": self.loss_count,
            "window_sum": self.accelerator.gather(self.window_sum[None]).tolist(),
            "window_count": self.window_count,
            "identity": self.identity,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state):
        self.step = state["step"]
        self.log_history = state["log_history"]
        self.best = state["best_metrics"]
        self.evals_without_gain = state["evals_without_gain"]
        self.stopped_early_at = state["stopped_early_at_step"]
        rank = self.accelerator.process_index
        self.loss_sum = torch.tensor(state["loss_sum"][rank], device=self.accelerator.device)
        self.loss_count = state["loss_count"]
        self.window_sum = torch.tensor(state["window_sum"][rank], device=self.accelerator.device)
        self.window_count = state["window_count"]

    def begin(self, model, eval_loaders, names):
        """Start (or continue the checkpoint of --resume_from_checkpoint) training the prepared
        `model`; `eval_loaders` {split: prepared loader}; `names`: the trainable parameters to
        save. Prints how many parameters train."""
        device = self.accelerator.device
        self.trainable, self.total = count_params(self.accelerator.unwrap_model(model))
        share = 100 * self.trainable / self.total
        self.accelerator.print(
            f"trainable {self.trainable:,} of {self.total:,} parameters ({share:.3f}%)"
        )
        self.model = model
        self.eval_loaders = eval_loaders
        self.names = names
        self.loss_sum = torch.zeros((), device=device)  # since the last evaluation
        self.loss_count = 0
        self.window_sum = torch.zeros((), device=device)  # since the last log line
        self.window_count = 0
        if self.checkpoint:
            self.load_state_dict(load_checkpoint(self.accelerator, self.checkpoint))
            kept = os.path.join(self.checkpoint, "best.safetensors")  # best/ as it was then
            if self.accelerator.is_main_process and os.path.exists(kept):
                with replacing(self.best_path) as tmp:  # a new file: the checkpoint's stays
                    shutil.copyfile(kept, tmp)
            self.last_saved = self.checkpoint
            self.accelerator.print(f"resumed from {self.checkpoint} at step {self.step}")
        self.stop = self.step >= self.max_steps or self.stopped_early_at is not None
        self.start_step = self.step
        self.start_weights = self.weights_size()  # did they move? (close() says so if not)
        self.start_time = time.perf_counter()
        self.aside = 0.0  # seconds spent evaluating and saving: train_runtime_s leaves them out
        self.tokens = torch.zeros((), dtype=torch.long, device=device)  # this run's, this process's
        self.padded = 0
        self.rows = 0
        main = self.accelerator.is_local_main_process
        self.progress = tqdm(
            total=self.max_steps, initial=self.step, disable=not main, desc="train"
        )

    def weights_size(self):
        """The sum of squares of the trainable weights, over every rank's part (a collective)."""
        total = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        for p in self.accelerator.unwrap_model(self.model).parameters():
            if p.requires_grad:
                total += local_part(p).detach().double().pow(2).sum()
        return self.accelerator.reduce(total, "sum").item()

    def log(self, values):
        """A log_history entry (and the trackers') at this step, the epoch as a fraction."""
        epoch = round(self.step / self.steps_per_epoch, 4)
        self.log_history.append({"step": self.step, "epoch": epoch, **values})
        if self.with_tracking:
            self.accelerator.log(values, step=self.step)

    @property
    def best_path(self):
        return os.path.join(self.output_dir, "best", "trainable.safetensors")

    def batches(self, loader, keep_idx=False):
        """The training batches of the whole run: epoch after epoch (a new shuffle each, the same on
        every rank and after a resume), without those a resumed run already trained on, with the
        model in train mode; it ends after the last step, or when early stopping stops the run.
        Each batch's `idx` (its rows' positions in the file) is removed, unless `keep_idx`."""
        for epoch in range(self.step // self.steps_per_epoch, self.num_epochs):
            if self.stop:
                return
            self.model.train()
            loader.set_epoch(epoch)
            done = (self.step - epoch * self.steps_per_epoch) * self.grad_accum
            for batch in self.accelerator.skip_first_batches(loader, done) if done else loader:
                mask = batch["attention_mask"]
                self.tokens = self.tokens + mask.sum()  # on the device: no host sync
                self.padded += mask.numel()
                self.rows += len(mask)
                if not keep_idx:
                    batch.pop("idx")
                yield batch
                if self.stop:
                    return

    def after_batch(self, loss):
        """Count one batch's loss (on the device: no host sync; NCCL also reduces only device
        tensors). After an optimizer step: show the loss every --logging_steps steps, evaluate,
        save the best weights and a checkpoint when due."""
        loss = loss.detach().float()
        self.loss_sum = self.loss_sum + loss
        self.loss_count += 1
        self.window_sum = self.window_sum + loss
        self.window_count += 1
        if not self.accelerator.sync_gradients:
            return
        self.step += 1
        self.progress.update(1)
        if self.step % self.logging_steps == 0:  # the loop's one host sync between evaluations
            mean = (
                self.check_finite(self.accelerator.reduce(self.window_sum, "mean"))
                / self.window_count
            )
            self.progress.set_postfix(loss=f"{mean:.4f}")
            self.log({"loss": mean})
            self.window_sum = torch.zeros_like(self.window_sum)
            self.window_count = 0
        started = time.perf_counter()
        if self.step % self.eval_every == 0 or self.step == self.max_steps:
            self.evaluate()
        every = self.checkpointing_steps
        every_n = every not in (None, "epoch") and self.step % int(every) == 0
        epoch_end = (
            every == "epoch"
            and self.step % self.steps_per_epoch == 0
            and self.step < self.max_steps
        )
        if every_n or epoch_end:
            self.check_finite(self.loss_sum)
            files = {"best.safetensors": self.best_path} if self.best else None
            self.last_saved = save_checkpoint(
                self.accelerator, self.output_dir, self.step, self.state_dict(), self.run_id, files
            )
        self.aside += time.perf_counter() - started
        self.stop = self.stop or self.step >= self.max_steps

    def check_finite(self, loss_sum):
        """The loss so far as a float, or a one-line stop if it is nan or infinite (before anything
        is saved: no nan weights on disk)."""
        value = loss_sum.item()
        if not math.isfinite(value):
            raise UsageError(
                f"the training loss is {value} at step {self.step}: the run stopped; "
                f"{self.note()}. "
                "Try a lower --learning_rate"
            )
        return value

    def evaluate(self):
        """Every eval split and the validation set; log the metrics with the mean training loss
        since the last evaluation; save the weights as best/trainable.safetensors when the selection
        metric improves (the first evaluation always does), and stop after --early_stopping_patience
        evaluations without a gain."""
        self.metrics, self.logits = evaluate(
            self.model, self.eval_loaders, self.accelerator, self.task
        )
        total = self.check_finite(self.accelerator.reduce(self.loss_sum, "mean"))
        train_loss = total / max(self.loss_count, 1)
        self.loss_sum = torch.zeros_like(self.loss_sum)
        self.loss_count = 0
        self.log({"train_loss": train_loss, **self.metrics})
        shown = " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
        self.progress.write(f"step {self.step}: train_loss {train_loss:.4f} {shown}")
        if not self.best or rank(self.metrics[self.select]) > rank(self.best[self.select]):
            self.best = {"step": self.step, **self.metrics}
            self.evals_without_gain = 0
            save_trainable(self.accelerator, self.model, self.names, self.best_path)
            return
        self.evals_without_gain += 1
        if self.patience and self.evals_without_gain >= self.patience:
            self.stopped_early_at = self.step
            self.stop = True
            gains = f"no gain of {self.select} in {self.evals_without_gain} evaluations"
            self.progress.write(
                f"step {self.step}: {gains}, stopping (best: step {self.best['step']})"
            )

    def finish(self):
        """After the loop: the final metrics (evaluated again only if a resumed run had no step
        left), trainable.safetensors, and with --do_predict the GLUE submission files. Returns the
        trained tensors {name: tensor} on the main process ({} on the others), for the exports."""
        self.progress.close()
        self.runtime = time.perf_counter() - self.start_time - self.aside
        if self.metrics is None:
            self.metrics, self.logits = evaluate(
                self.model, self.eval_loaders, self.accelerator, self.task
            )
        path = os.path.join(self.output_dir, "trainable.safetensors")
        trained = save_trainable(self.accelerator, self.model, self.names, path)
        if self.do_predict:
            write_predictions(
                self.model, self.eval_loaders, self.accelerator, self.task, self.output_dir
            )
        return trained

    def learning_warnings(self, majority, change):
        """What to say when a run learned nothing: its trainable weights did not move (`change`,
        the relative change of their sum of squares, under 1e-6), or its main metric is within 1
        point of always predicting the majority class (`majority`, constant_metrics)."""
        rates = ", ".join(
            f"--{k} {v:g}" for k, v in self.flags.items() if k.endswith("learning_rate")
        )
        advice = (
            f"try other learning rates ({rates}) or more optimizer steps (this run: "
            f"{self.max_steps}; --num_train_epochs, --max_train_samples)"
        )
        warnings = []
        if self.step > self.start_step and change < 1e-6:
            warnings.append(
                f"the trainable weights did not move (relative change {change:.1e}): {advice}"
            )
        metric = TASKS[self.task].metric
        ours = rank(self.metrics.get(metric))
        theirs = rank(majority.get(metric))
        if math.isfinite(ours) and math.isfinite(theirs) and abs(ours - theirs) <= 0.01:
            warnings.append(
                f"{metric} {ours:.4f} is within 1 point of always predicting the majority "
                f"class ({theirs:.4f}): the run learned nothing it shows; {advice}"
            )
        return warnings

    def close(self, **extra):
        """results.json (the output contract every script follows, `extra` added) and the final
        eval logits; print the final line; close the trackers and the process group; free
        OUTPUT_DIR."""
        accelerator = self.accelerator
        counts = torch.stack(
            [self.tokens, self.tokens.new_tensor(self.padded), self.tokens.new_tensor(self.rows)]
        )
        tokens, padded, rows = accelerator.reduce(counts).tolist()
        change = abs(self.weights_size() - self.start_weights) / max(self.start_weights, 1e-30)
        majority = constant_metrics(self.eval_loaders, self.task)
        warnings = self.learning_warnings(majority, change)
        for line in warnings:
            accelerator.print(f"warning: {line}")
        if accelerator.is_main_process:
            selected = {}
            if self.validation:  # the test set scored with the weights chosen on the validation set
                chosen = self.best.items()
                selected["validation_metrics"] = {
                    k[4:]: v for k, v in chosen if k.startswith("val_")
                }
                selected["test_metrics"] = {
                    k: v for k, v in chosen if k != "step" and not k.startswith("val_")
                }
            atomic_save_tensors(
                os.path.join(self.output_dir, "eval_logits.safetensors"), self.logits
            )
            per_second = (lambda n: n / self.runtime) if self.runtime else (lambda n: 0.0)
            results = {
                "task": self.task,
                "method": self.method,
                "model": self.flags.get("model_name_or_path"),
                "metrics": self.metrics,
                "best_metrics": self.best,
                **selected,
                "stopped_early_at_step": self.stopped_early_at,
                "majority_metrics": majority,
                "warnings": warnings,
                "log_history": self.log_history,
                "trainable_params": self.trainable,
                "total_params": self.total,
                **extra,
                "train_runtime_s": self.runtime,
                "train_samples_per_s": per_second(rows),
                "train_tokens": tokens,
                "train_padded_tokens": padded,
                "train_tokens_per_s": per_second(tokens),
            }
            atomic_write_json(os.path.join(self.output_dir, "results.json"), results)
            curves = os.path.join(self.output_dir, "curves.png")
            if not draw_curves(self.log_history, TASKS[self.task].metric, curves):
                accelerator.print("curves.png not written: matplotlib is not installed")
            os.remove(self.lock)
        shown = " ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
        accelerator.print(f"final {self.task} {self.method}: {shown}")
        accelerator.end_training()  # closes the trackers and the process group
        for sig, handler in self.signals.items():
            signal.signal(sig, handler)
