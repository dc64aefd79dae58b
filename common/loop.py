"""What the training loop of every train_*.py calls, written once: the accelerator, the output folder the run holds,
the state the loop carries, the log line and an evaluation's bookkeeping. The loop itself is in each script."""

import datetime
import glob
import importlib.util
import json
import math
import os
import shutil
import warnings

import torch

from common.checkpoint import check_resume, run_identity
from common.data import fingerprint
from common.errors import NO_CHECKPOINT, UsageError, raise_on_every_rank
from common.outputs import atomic_write_text, claim, inside, read_json, remove, replacing, take_over

# What every run writes in OUTPUT_DIR (a script names its own outputs beside these).
OUTPUTS = ("args.json", "results.json", "eval_logits.safetensors", "trainable.safetensors", "best")
CURVES = ["curves.png"] if importlib.util.find_spec("matplotlib") else []  # drawn only where matplotlib is


def make_accelerator(output_dir, max_grad_norm=1.0, ddp_timeout=1800, with_tracking=False, report_to="tensorboard",
                     torch_compile=False):  # fmt: skip
    """An Accelerator for a run in `output_dir`. DeepSpeed's plugin is built from the yaml's JSON (a shipped one found
    from any folder), clipping at `max_grad_norm` in its own step. A collective waits `ddp_timeout` seconds (NCCL's 10
    minutes are less than rank 0 may need alone to save). Without GPUs: gloo, and a multi-GPU yaml runs DDP on CPU."""
    from accelerate import Accelerator, DataLoaderConfiguration, DeepSpeedPlugin, InitProcessGroupKwargs

    no_device, wait = not torch.accelerator.is_available(), datetime.timedelta(seconds=ddp_timeout)
    # DeepSpeed calls torch.distributed functions deprecated since torch 2.1x, a FutureWarning a call: not yours.
    deprecated = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
    warnings.filterwarnings("ignore", deprecated, FutureWarning, r"torch\.distributed\.c10d_logger")
    deepspeed = None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true":
        json_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), json_file)
        if json_file.endswith(".json") and not os.path.isfile(json_file) and os.path.isfile(shipped):
            json_file = shipped  # (the yaml names it relative to the repository)
        deepspeed = DeepSpeedPlugin(hf_ds_config=json_file, gradient_clipping=max_grad_norm)
    accelerator = Accelerator(
        cpu=no_device and deepspeed is None,  # a multi-GPU yaml on CPU: real DDP over gloo
        deepspeed_plugin=deepspeed,
        log_with=report_to if with_tracking else None,
        project_dir=output_dir,
        # set_epoch(epoch) reshuffles a seedable sampler: the same order on every rank, and after a resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        step_scheduler_with_optimizer=False,  # the loops step it once per optimizer step, not once per process
        dynamo_backend="inductor" if torch_compile else "no",  # prepare() compiles the model
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo" if no_device and deepspeed else "nccl", timeout=wait)],
    )
    if no_device and os.environ.get("ACCELERATE_USE_FSDP", "false") == "true":
        fsdp_over_gloo(accelerator)  # (CPU only: accelerate would run an FSDP yaml as DDP)
    return accelerator


def fsdp_over_gloo(accelerator):
    """FSDP without GPUs: accelerate sets FSDP up only on an accelerator device, while torch's FSDP2 shards over gloo;
    so the state becomes an FSDP one with the launcher's settings (accelerate's private state: a CPU-only path)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state.update(distributed_type=DistributedType.FSDP, fsdp_plugin=plugin)


class OutputDir:
    """OUTPUT_DIR, held by this run. Made (`with OutputDir(...) as run_dir:`): the checkpoint to `resume` checked
    (complete, same flags, launch and base model), the lock taken, every path the run writes claimed; nothing removed.
    Taken (`take`) once all has loaded: the earlier run's files removed, args.json written. Released when the block
    ends, however it ends. Every rank gets the same verdicts."""

    def __init__(self, accelerator, method, flags, *, output_dir, outputs=(), overwrite=False, resume=None,
                 predict=False, tracking=False):  # fmt: skip
        from accelerate.utils import broadcast_object_list

        ids = [os.urandom(6).hex()]
        if accelerator.num_processes > 1:
            broadcast_object_list(ids)  # the main process's: names the folders every rank writes to
        self.accelerator, self.path, self.tracking = accelerator, output_dir, tracking
        self.flags = {"method": method, **flags}
        self.run_id = ids[0]  # names the temporary folder a checkpoint is written to
        self.identity = run_identity(flags, method, accelerator)  # what a checkpoint must match to be resumed
        self.data = self.args_json = self.resume_from = None  # (take() sets the first two: the rows' hash, args.json)
        self.lock, self.earlier, self.outputs, error = None, [], [], None
        try:
            if resume:
                self.resume_from = check_resume(accelerator, output_dir, resume, self.identity)
            if accelerator.is_main_process:
                checkpoints = os.path.join(output_dir, "checkpoints")
                here = self.resume_from is not None and inside(self.resume_from, checkpoints)
                planned = [*OUTPUTS, *CURVES, "checkpoints", *outputs, *["predictions"] * predict]
                planned += [f"train_{method}"] * tracking
                reads = [v for k, v in flags.items() if k.endswith(("_path", "_file", "data_dir")) and v]
                self.lock, self.earlier, self.outputs = claim(output_dir, planned, self.run_id, overwrite, here, reads)
        except UsageError as e:
            error = str(e)
        try:
            raise_on_every_rank(accelerator, error)  # every rank leaves with the same line
        except UsageError:
            self.release()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def take(self, task, train_loader, eval_loaders):
        """The claim carried out: a resumed checkpoint must have trained on the same rows (their fingerprint); the
        earlier run's files removed, args.json written (the flags, the `task`'s texts and labels, the models'
        fingerprints: what predict.py rebuilds from), the checkpoint's best weights put back, the trackers started."""
        labelled = [loader.dataset for split, loader in eval_loaders.items() if not split.startswith("test")]
        self.data = fingerprint([train_loader.dataset, *labelled])
        saved = read_json(os.path.join(self.resume_from, "trainer_state.json")) if self.resume_from else {}
        if self.resume_from and saved.get("data") != self.data:
            why = "(the training or validation data changed, or --data_dir points elsewhere)"
            fix = "resume with the same data, or start a new run"
            raise UsageError(f"{self.resume_from} was trained on other rows than this run reads {why}: {fix}")
        labels = {"task_texts": list(task.text_keys), "task_labels": list(task.label_names)}
        self.args_json = json.dumps({**self.flags, **labels, "models": self.identity["models"]}, indent=2) + "\n"
        if self.accelerator.is_main_process:
            take_over(self.path, self.earlier, self.outputs, self.run_id)
            for tmp in glob.glob(os.path.join(self.path, "checkpoints", "step_*.tmp-*")):
                remove(tmp)  # half a checkpoint of a run killed while saving (this run holds the lock)
            atomic_write_text(os.path.join(self.path, "args.json"), self.args_json)
            kept = os.path.join(self.resume_from or "", "best.safetensors")  # best/ as it was at the checkpoint
            if self.resume_from and os.path.exists(kept):
                with replacing(best_path(self.path)) as tmp:  # (a new file: the checkpoint's stays as it is)
                    shutil.copyfile(kept, tmp)
        self.accelerator.wait_for_everyone()
        if self.tracking:
            scalars = {k: v for k, v in self.flags.items() if isinstance(v, (int, float, str))}
            self.accelerator.init_trackers(f"train_{self.flags['method']}", scalars)

    def release(self):
        """Remove the lock (main process; a second time: nothing)."""
        if self.lock and os.path.exists(self.lock):
            os.remove(self.lock)
        self.lock = None


def best_path(output_dir):
    return os.path.join(output_dir, "best", "trainable.safetensors")


def count_steps(batches_per_epoch, accelerator, num_train_epochs, max_train_steps=None):
    """(optimizer steps an epoch, of the run), before prepare: a process gets 1/num_processes of the batches, a step
    accumulates gradient_accumulation_steps of them (the epoch's last, shorter group steps too)."""
    per_process = math.ceil(batches_per_epoch / accelerator.num_processes)
    steps_per_epoch = math.ceil(per_process / accelerator.gradient_accumulation_steps)
    return steps_per_epoch, max_train_steps or num_train_epochs * steps_per_epoch


class TrainState:
    """What the loop carries from step to step; a checkpoint stores it, so that a resumed run goes on bit for bit."""

    def __init__(self, device, steps_per_epoch, max_steps):
        self.steps_per_epoch, self.max_steps = steps_per_epoch, max_steps  # the run's length (count_steps)
        self.step = 0  # optimizer steps taken
        self.log_history = []  # the loss every --logging_steps, and every evaluation
        self.best = {}  # the best evaluation so far: its step and metrics
        self.evals_without_gain, self.stopped_early_at = 0, None
        self.grad_norm = None  # the gradients' norm before clipping, at the last optimizer step
        # The training loss summed on the device (no host sync a step): since the last evaluation, the last log line
        self.loss_sums, self.loss_counts = torch.zeros(2, device=device), [0, 0]  # (and the batches each sum holds)
        self.seen = torch.zeros(3, dtype=torch.long, device=device)  # tokens, padded tokens and rows trained on
        self.aside = 0.0  # the seconds spent evaluating and saving (not training time)
        self.last_checkpoint = None  # for the line an interrupted run prints

    def note(self):
        """Where the last checkpoint is: the line an interrupted or failed run prints."""
        if self.last_checkpoint is None:
            return NO_CHECKPOINT
        return f"the last checkpoint is {self.last_checkpoint} (resume with --resume_from_checkpoint latest)"

    @property
    def finished(self):
        return self.step >= self.max_steps or self.stopped_early_at is not None

    def count(self, loss, attention_mask):
        """Add one batch's loss and tokens (on the device: no host sync)."""
        self.loss_sums = self.loss_sums + loss.detach().float()
        self.loss_counts = [n + 1 for n in self.loss_counts]
        batch = [attention_mask.sum(), attention_mask.numel(), len(attention_mask)]
        self.seen = self.seen + torch.stack([torch.as_tensor(n, device=self.seen.device) for n in batch])

    def log(self, accelerator, values):
        """A log_history entry at this step (the epoch as a fraction), and the trackers'."""
        self.log_history.append({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), **values})
        accelerator.log(values, step=self.step)

    def state_dict(self, accelerator):
        """What a checkpoint stores (a collective): every rank's running losses, so each takes its own back on a
        resume and the logged means stay bitwise the same. A loss no longer finite stops the run before a save."""
        loss_sums = accelerator.gather(self.loss_sums[None])
        finite_loss(loss_sums[:, 0].sum(), self)
        keys = ("step", "log_history", "best", "evals_without_gain", "stopped_early_at", "loss_counts")
        return {**{k: getattr(self, k) for k in keys}, "loss_sums": loss_sums.tolist()}

    def load_state_dict(self, state, accelerator):
        for key in ("step", "log_history", "best", "evals_without_gain", "stopped_early_at", "loss_counts"):
            setattr(self, key, state[key])
        self.loss_sums = torch.tensor(state["loss_sums"][accelerator.process_index], device=accelerator.device)


def finite_loss(total, state):
    """The loss `total` as a float (a host sync), or a one-line stop if it is nan or infinite."""
    value = total.item()
    if not math.isfinite(value):
        stop = f"the training loss is {value} at step {state.step}: the run stopped; {state.note()}"
        raise UsageError(f"{stop}. Try a lower --learning_rate")
    return value


def log_loss(accelerator, state, bar):
    """Log the mean training loss since the last log line, over every rank: the host sync between evaluations."""
    mean = finite_loss(accelerator.reduce(state.loss_sums[1], "mean"), state) / state.loss_counts[1]
    bar.set_postfix(loss=f"{mean:.4f}")
    norm = {} if state.grad_norm is None else {"grad_norm": float(state.grad_norm)}  # (the same on every rank)
    state.log(accelerator, {"loss": mean, **norm})
    state.loss_sums[1], state.loss_counts[1] = 0.0, 0  # a new window


def comparable(value):
    """A metric for comparison: nan or None (undefined: Pearson of constant predictions) ranks lowest."""
    return -math.inf if value is None or math.isnan(value) else value


def log_evaluation(accelerator, state, metrics, best_metric, bar):
    """Log and print an evaluation's `metrics` with the mean training loss since the last one. True when
    `best_metric` improved (the first evaluation always does): the caller saves best/; else one more without a gain."""
    train_loss = finite_loss(accelerator.reduce(state.loss_sums[0], "mean"), state) / max(state.loss_counts[0], 1)
    state.loss_sums[0], state.loss_counts[0] = 0.0, 0
    state.log(accelerator, {"train_loss": train_loss, **metrics})
    scores = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    bar.write(f"step {state.step}: train_loss {train_loss:.4f} {scores}")
    if state.best and comparable(metrics[best_metric]) <= comparable(state.best[best_metric]):
        state.evals_without_gain += 1
        return False
    state.best, state.evals_without_gain = {"step": state.step, **metrics}, 0
    return True


def stop_early(state, patience, best_metric, bar):
    """Early stopping: after `patience` evaluations without a gain of `best_metric` (None: never)."""
    if patience and state.evals_without_gain >= patience:
        state.stopped_early_at = state.step
        gains = f"no gain of {best_metric} in {state.evals_without_gain} evaluations"
        bar.write(f"step {state.step}: {gains}, stopping (best: step {state.best['step']})")


def checkpoint_due(state, checkpointing_steps):
    """Whether --checkpointing_steps (N, 'epoch' or None) asks for a checkpoint now (none after the last step)."""
    if checkpointing_steps == "epoch":
        return state.step % state.steps_per_epoch == 0 and state.step < state.max_steps
    return checkpointing_steps is not None and state.step % int(checkpointing_steps) == 0
