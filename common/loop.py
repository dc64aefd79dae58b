"""What the training loop of every train_*.py calls, written once: the accelerator, the start of a run (its output
folder, the checkpoint it resumes), the run's length, the state the loop carries from step to step, the log line, and
the bookkeeping of an evaluation (the best weights, early stopping). The loop itself is in each script, where a reader
sees when each of these happens."""

import datetime
import importlib.util
import math
import os
import shutil
import uuid

import torch

from common.checkpoint import check_resume, run_identity
from common.data import fingerprint
from common.errors import NO_CHECKPOINT, UsageError, agree
from common.outputs import atomic_write_json, claim, inside, read_json, replacing, take_over

# What every run writes in OUTPUT_DIR (a script names its own outputs beside these).
OUTPUTS = ("args.json", "results.json", "eval_logits.safetensors", "trainable.safetensors", "best")
CURVES = ["curves.png"] if importlib.util.find_spec("matplotlib") else []  # drawn only where matplotlib is


def make_accelerator(
    output_dir, max_grad_norm=1.0, ddp_timeout=1800, with_tracking=False, report_to="tensorboard", torch_compile=False
):
    """An Accelerator for a run in `output_dir`. DeepSpeed clips the gradients inside its own step: its
    gradient_clipping is set to `max_grad_norm` (0: none). A collective waits `ddp_timeout` seconds for the other
    ranks before the job fails (NCCL's default is 10 minutes, less than rank 0 may need alone to tokenize a large set
    or save a large model). On a machine without GPUs torch.distributed needs the gloo backend, which accelerate does
    not pick for DeepSpeed, and a multi-GPU launch must be told to run DDP on the CPU; both change nothing on a GPU."""
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

    # A yaml names its DeepSpeed JSON by a path relative to where it is run from; the shipped ones
    # (accelerate_configs/zero3.json) are found from any folder.
    json_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), json_file)
    if json_file.endswith(".json") and not os.path.isfile(json_file) and os.path.isfile(shipped):
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = shipped
    no_device, timeout = not torch.accelerator.is_available(), datetime.timedelta(seconds=ddp_timeout)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
    accelerator = Accelerator(
        cpu=no_device and not deepspeed,  # a multi-GPU yaml on CPU: real DDP over gloo
        log_with=report_to if with_tracking else None,
        project_dir=output_dir,
        # The loops call set_epoch(epoch): with a seedable sampler that reshuffles, in the same order on every rank
        # and again after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        # The loops step the scheduler once per optimizer step, under sync_gradients; accelerate's default would
        # step it once per process on every call.
        step_scheduler_with_optimizer=False,
        dynamo_backend="inductor" if torch_compile else "no",  # prepare() compiles the model
        kwargs_handlers=[
            InitProcessGroupKwargs(backend="gloo" if no_device and deepspeed else "nccl", timeout=timeout)
        ],
    )
    if deepspeed:
        accelerator.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] = max_grad_norm
    if no_device and os.environ.get("ACCELERATE_USE_FSDP", "false") == "true":
        cpu_fsdp(accelerator)
    return accelerator


def cpu_fsdp(accelerator):
    """FSDP on a machine without GPUs: accelerate sets FSDP up only on an accelerator device (on a CPU an FSDP yaml
    gives DDP over gloo), while torch's FSDP2 shards over gloo. So the gloo state becomes an FSDP one, with the
    launcher's settings; prepare() then shards the model with fully_shard as on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def start_run(
    accelerator, method, flags, *, output_dir, outputs=(), overwrite=False, resume=None, predict=False, tracking=False
):
    """Begin the run of train_{method}.py in `output_dir`, before anything heavy is loaded: check the checkpoint to
    `resume` (complete, written by the same script with the same flags and launch settings) and claim the folder for
    every path the run will write (OUTPUTS, the script's `outputs`, predictions/ with `predict`, the trackers' logs
    with `tracking`: common/outputs.py), holding its lock. Every rank gets the same verdict. Nothing of an earlier run
    is removed yet: take_output_dir does that once the model and the data have loaded. Returns the loop's
    TrainState, with the checkpoint to resume in its `resume_from`."""
    from accelerate.utils import broadcast_object_list

    ids = [uuid.uuid4().hex[:12]]
    if accelerator.num_processes > 1:
        broadcast_object_list(ids)  # the main process's: names the folders every rank writes to
    identity = run_identity(flags, method, accelerator)
    checkpoint, claimed, error = None, (None, [], []), None
    try:
        if resume:
            checkpoint = check_resume(accelerator, output_dir, resume, identity)
        if accelerator.is_main_process:
            here = checkpoint is not None and inside(checkpoint, os.path.join(output_dir, "checkpoints"))
            planned = [*OUTPUTS, *CURVES, "checkpoints", *outputs]
            planned += ["predictions"] * predict + [f"train_{method}"] * tracking
            claimed = claim(output_dir, planned, ids[0], overwrite, here)
    except UsageError as e:
        error = str(e)
    try:
        agree(accelerator, error)  # every rank leaves with the same line
    except UsageError:
        if claimed[0]:
            os.remove(claimed[0])
        raise
    state = TrainState(accelerator.device, ids[0], identity, checkpoint)
    state.claim = (output_dir, claimed[1], claimed[2], {"method": method, **flags}, tracking)
    return state


def take_output_dir(accelerator, state, task, train_loader, eval_loaders):
    """What start_run claimed, carried out once everything the run needs has loaded and been checked (a model that
    lived in the earlier run's folder, say, and the resumed checkpoint's states): a resumed checkpoint must have been
    trained on the same rows (their fingerprint, from the loaders' training and labelled eval sets, is part of the
    run's identity); then the earlier run's files are removed, this run's manifest and args.json (what predict.py
    rebuilds the model from: the flags, and the `task`'s text columns and labels) written, the checkpoint's best
    weights put back in best/, the trackers started."""
    output_dir, earlier, outputs, flags, tracking = state.claim
    labelled = [loader.dataset for split, loader in eval_loaders.items() if not split.startswith("test")]
    state.data = fingerprint([train_loader.dataset, *labelled])
    if state.resume_from:
        saved = read_json(os.path.join(state.resume_from, "trainer_state.json")).get("data")
        if saved != state.data:
            raise UsageError(
                f"{state.resume_from} was trained on other rows than this run reads (the training or validation data "
                "changed, or --data_dir points elsewhere): resume with the same data, or start a new run"
            )
    if accelerator.is_main_process:
        take_over(output_dir, earlier, outputs, state.run_id)
        labels = {"task_texts": list(task.text_keys), "task_labels": list(task.label_names)}
        atomic_write_json(os.path.join(output_dir, "args.json"), {**flags, **labels})
        kept = os.path.join(state.resume_from or "", "best.safetensors")  # best/ as it was at the checkpoint
        if state.resume_from and os.path.exists(kept):
            with replacing(best_path(output_dir)) as tmp:  # (a new file: the checkpoint's stays as it is)
                shutil.copyfile(kept, tmp)
    accelerator.wait_for_everyone()
    if tracking:
        scalars = {k: v for k, v in flags.items() if isinstance(v, (int, float, str))}
        accelerator.init_trackers(f"train_{flags['method']}", scalars)


def best_path(output_dir):
    """Where the best weights so far are kept."""
    return os.path.join(output_dir, "best", "trainable.safetensors")


def count_steps(batches_per_epoch, accelerator, num_train_epochs, max_train_steps=None):
    """(optimizer steps an epoch, optimizer steps of the run), for the scheduler: call before prepare. The prepared
    loader gives each process 1/num_processes of the batches, and a step accumulates gradient_accumulation_steps of
    them (the epoch's last, shorter group steps too)."""
    per_process = math.ceil(batches_per_epoch / accelerator.num_processes)
    steps_per_epoch = math.ceil(per_process / accelerator.gradient_accumulation_steps)
    return steps_per_epoch, max_train_steps or num_train_epochs * steps_per_epoch


class TrainState:
    """What the loop carries from step to step. A checkpoint stores it (state_dict) beside the model, optimizer,
    scheduler and random states, so that a resumed run goes on bit for bit."""

    def __init__(self, device, run_id, identity, resume_from=None):
        self.run_id = run_id  # names the folders a checkpoint is written to, on every rank
        self.identity = identity  # what a checkpoint must match to be resumed (run_identity)
        self.resume_from = resume_from  # the checkpoint to resume (checkpoint.load_checkpoint), or None
        self.data = None  # the fingerprint of the rows it trains and chooses on (take_output_dir)
        self.claim = None  # what start_run claimed in OUTPUT_DIR, for take_output_dir to carry out
        self.steps_per_epoch = self.max_steps = None  # the run's length (count_steps)
        self.step = 0  # optimizer steps taken
        self.log_history = []  # the loss every --logging_steps, and every evaluation
        self.best = {}  # the best evaluation so far: its step and metrics
        self.evals_without_gain = 0
        self.stopped_early_at = None
        self.last_saved = None  # the newest checkpoint, for the line an interrupted run prints
        self.grad_norm = None  # the gradients' norm before clipping, at the last optimizer step
        # The training loss, summed on the device (no host sync a step): since the last evaluation, since the last
        # log line. What this process trained on (results.json's speed), and the seconds spent evaluating and saving.
        self.loss_sum, self.loss_count = torch.zeros((), device=device), 0
        self.window_sum, self.window_count = torch.zeros((), device=device), 0
        self.tokens, self.padded, self.rows = torch.zeros((), dtype=torch.long, device=device), 0, 0
        self.aside = 0.0

    @property
    def finished(self):
        """The last step is done, or early stopping stopped the run."""
        return self.step >= self.max_steps or self.stopped_early_at is not None

    def count(self, loss, attention_mask):
        """Add one batch's loss and tokens (on the device: no host sync)."""
        loss = loss.detach().float()
        self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        self.window_sum, self.window_count = self.window_sum + loss, self.window_count + 1
        self.tokens = self.tokens + attention_mask.sum()
        self.padded, self.rows = self.padded + attention_mask.numel(), self.rows + len(attention_mask)

    def log(self, accelerator, values):
        """A log_history entry at this step (the epoch as a fraction), and the trackers'."""
        epoch = round(self.step / self.steps_per_epoch, 4)
        self.log_history.append({"step": self.step, "epoch": epoch, **values})
        accelerator.log(values, step=self.step)  # (no trackers: nothing)

    def note(self):
        """Where the last checkpoint is: the line an interrupted or failed run prints."""
        if self.last_saved is None:
            return NO_CHECKPOINT
        return f"the last checkpoint is {self.last_saved} (resume with --resume_from_checkpoint latest)"

    def state_dict(self, accelerator):
        """What a checkpoint stores. Every rank calls it: the running losses are gathered, one value a rank (a
        collective), and each rank takes its own back on a resume, so the logged means stay bitwise the same. A loss
        that is no longer finite stops the run here, before anything is saved."""
        loss_sum = accelerator.gather(self.loss_sum[None])
        finite_loss(loss_sum.sum(), self)
        return {
            "step": self.step,
            "log_history": self.log_history,
            "best_metrics": self.best,
            "evals_without_gain": self.evals_without_gain,
            "stopped_early_at_step": self.stopped_early_at,
            "loss_sum": loss_sum.tolist(),
            "loss_count": self.loss_count,
            "window_sum": accelerator.gather(self.window_sum[None]).tolist(),
            "window_count": self.window_count,
            "identity": self.identity,
            "data": self.data,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state, accelerator):
        self.step, self.log_history, self.best = state["step"], state["log_history"], state["best_metrics"]
        self.evals_without_gain, self.stopped_early_at = state["evals_without_gain"], state["stopped_early_at_step"]
        me, device = accelerator.process_index, accelerator.device
        self.loss_sum = torch.tensor(state["loss_sum"][me], device=device)
        self.window_sum = torch.tensor(state["window_sum"][me], device=device)
        self.loss_count, self.window_count = state["loss_count"], state["window_count"]


def finite_loss(total, state):
    """The loss `total` as a float (a host sync), or a one-line stop if it is nan or infinite."""
    value = total.item()
    if not math.isfinite(value):
        stop = f"the training loss is {value} at step {state.step}: the run stopped; {state.note()}"
        raise UsageError(f"{stop}. Try a lower --learning_rate")
    return value


def log_loss(accelerator, state, bar):
    """Log the mean training loss since the last log line, over every rank: the loop's one host sync between
    evaluations."""
    mean = finite_loss(accelerator.reduce(state.window_sum, "mean"), state) / state.window_count
    bar.set_postfix(loss=f"{mean:.4f}")
    norm = {} if state.grad_norm is None else {"grad_norm": float(state.grad_norm)}  # (the same on every rank)
    state.log(accelerator, {"loss": mean, **norm})
    state.window_sum, state.window_count = torch.zeros_like(state.window_sum), 0


def comparable(value):
    """A metric for comparison: nan or None (undefined: Pearson of constant predictions) ranks lowest."""
    return -math.inf if value is None or math.isnan(value) else value


def log_evaluation(accelerator, state, metrics, select, bar):
    """Log an evaluation's `metrics` with the mean training loss since the last one, and print them. Returns True when
    `select` improved (the first evaluation always does): the caller then saves the best weights; otherwise counts an
    evaluation without a gain."""
    train_loss = finite_loss(accelerator.reduce(state.loss_sum, "mean"), state) / max(state.loss_count, 1)
    state.loss_sum, state.loss_count = torch.zeros_like(state.loss_sum), 0
    state.log(accelerator, {"train_loss": train_loss, **metrics})
    bar.write(
        f"step {state.step}: train_loss {train_loss:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    )
    if state.best and comparable(metrics[select]) <= comparable(state.best[select]):
        state.evals_without_gain += 1
        return False
    state.best, state.evals_without_gain = {"step": state.step, **metrics}, 0
    return True


def stop_early(state, patience, select, bar):
    """Early stopping: after `patience` evaluations without a gain of `select` (None: never)."""
    if patience and state.evals_without_gain >= patience:
        state.stopped_early_at = state.step
        gains = f"no gain of {select} in {state.evals_without_gain} evaluations"
        bar.write(f"step {state.step}: {gains}, stopping (best: step {state.best['step']})")


def checkpoint_due(state, checkpointing_steps):
    """Whether --checkpointing_steps (N, 'epoch' or None) asks for a checkpoint now (the end of the last epoch needs
    none: the run is finished)."""
    if checkpointing_steps == "epoch":
        return state.step % state.steps_per_epoch == 0 and state.step < state.max_steps
    return checkpointing_steps is not None and state.step % int(checkpointing_steps) == 0
