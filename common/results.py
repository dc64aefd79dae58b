"""The end of a run: whether it learned, results.json, the eval logits and curves.png."""

import math
import os

import torch

from common.checkpoint import atomic_save_tensors, local_part
from common.data import HELD_OUT
from common.evaluation import constant_metrics, intervals, split_keys
from common.models import count_params
from common.outputs import atomic_write_json, replacing
from common.tasks import get_task


def weights_size(accelerator, model):
    """The sum of squares of the trainable weights, over every rank's part (a collective): did they move?"""
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for p in accelerator.unwrap_model(model).parameters():
        if p.requires_grad:
            total += local_part(p).detach().double().pow(2).sum()
    return accelerator.reduce(total, "sum").item()


def learning_warnings(metrics, majority, metric, labels, moved, learning_rates, max_steps, *, interval=None,
                      regression=False, clip=None):  # fmt: skip
    """(the warnings, the verdict for the final line or None) of a run that learned nothing it shows: its weights did
    not change (`moved`: they did; a tiny --max_grad_norm `clip` is named), or its `metric` cannot be told from always
    predicting the `majority` class (its 95% `interval` holds the majority's score, or they are within two standard
    errors of an accuracy on these `labels`), or is below it; a regression's correlation must be above 0, its interval
    too. A split of one class cannot tell, and says so."""
    rates = ", ".join(f"--{k} {v:g}" for k, v in learning_rates.items())
    advice = f"try other learning rates ({rates}) or more optimizer steps (this run: {max_steps}; "
    advice += "--num_train_epochs, --max_train_samples)"
    warnings, verdict = [], None
    if not moved:  # (AdamW's steps are scale-free, until a gradient clipped this small is lost below its eps)
        why = f"; clipping the gradients to --max_grad_norm {clip:g} may be why" if clip and clip < 1e-3 else ""
        warnings.append(f"the trainable weights did not change at all: no gradient reached them{why}; {advice}")
    if len(set(labels)) == 1:
        one = f"the eval split's labels are all {labels[0]}: its {metric} says nothing of what was learned"
        return [*warnings, one], None
    ours, theirs = metrics.get(metric), majority.get(metric)
    ours = None if ours is None or math.isnan(ours) else ours
    shown = metric if ours is None else with_interval(metric, ours, interval)
    if regression and ours is None:
        verdict = f"{metric} is undefined: every prediction is the same score"
    elif regression and (interval[0] if interval else ours) <= 0:
        below = interval is not None and interval[1] < 0
        verdict = f"{shown} is below 0" if below else f"{shown} cannot be told from no correlation (0)"
    elif not regression and ours is not None and theirs is not None and not math.isnan(theirs):
        noise = 2 * math.sqrt(0.25 / len(labels)) if metric.endswith("accuracy") else 0.0
        if (interval is not None and interval[0] <= theirs <= interval[1]) or abs(ours - theirs) <= noise:
            verdict = f"{shown} cannot be told from always predicting the majority class ({theirs:.4f})"
        elif ours < theirs:
            verdict = f"{shown} is below always predicting the majority class ({theirs:.4f})"
    if verdict:
        why = "the run learned the wrong thing" if " below " in verdict else "the run learned nothing it shows"
        warnings.append(f"{verdict}: {why}; {advice}")
    return warnings, verdict


def with_interval(name, value, bounds):
    """'accuracy 0.8532 [0.8281, 0.8750]': a metric and its 95% interval, if it has one."""
    return f"{name} {value:.4f}" + (" [{:.4f}, {:.4f}]".format(*bounds) if bounds else "")


def curves_figure(log_history, metric, majority=None, title=""):
    """A matplotlib figure of a run: the training loss (its axis from 0: a small change looks small) and the eval
    `metric`, with the `majority` class's score dashed; None without matplotlib."""
    try:
        from matplotlib.figure import Figure  # (not pyplot: no window, no figure kept open)
    except ImportError:
        return None
    losses = [(h["step"], h["loss"]) for h in log_history if h.get("loss") is not None]
    evals = [(h["step"], h[metric]) for h in log_history if h.get(metric) is not None]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    left = fig.subplots()
    if losses:
        left.plot(*zip(*losses), color="C0", label="training loss")
    left.set(ylim=(0, None), xlabel="optimizer step")
    left.set_title(title, fontsize=10)
    left.set_ylabel("training loss", color="C0")
    right = left.twinx()
    if evals:
        right.plot(*zip(*evals), "o-", color="C1", label=metric)
    if majority is not None:
        right.axhline(majority, color="C1", linestyle="--", linewidth=1, label="always the majority class")
        right.legend(loc="lower right", fontsize=8)
    right.set_ylabel(f"eval {metric}", color="C1")
    fig.tight_layout()
    return fig


def write_results(accelerator, state, model, output_dir, *, method, task, model_name, metrics, logits, train_loader,
                  eval_loaders, start_size, runtime, learning_rates, max_grad_norm=None, extra=None):  # fmt: skip
    """results.json (`extra` added), the eval logits and curves.png, the warnings and the final line; then the run ends
    (end_training: trackers, process group). Every rank calls this (collectives). `start_size`: weights_size before
    training; `runtime`: its seconds; `learning_rates` {flag: value} and `max_grad_norm`: named by a warning."""
    tokens, padded, rows = accelerator.reduce(state.seen).tolist()
    moved = rows == 0 or weights_size(accelerator, model) != start_size  # (exactly: a resumed run may have no step)
    majority, task = constant_metrics(eval_loaders, task), get_task(task)
    labels, metric = list(eval_loaders[task.eval_splits[0]].dataset["label"]), task.metric
    unwrapped = accelerator.unwrap_model(model)
    trainable, total = count_params(unwrapped)
    pretrained = next(m.pretrained_params for m in unwrapped.modules() if hasattr(m, "pretrained_params"))
    bounds, no_interval = intervals(logits, eval_loaders, task)
    warnings, verdict = learning_warnings(
        metrics, majority, metric, labels, moved, learning_rates, state.max_steps, interval=bounds.get(metric),
        regression=task.is_regression, clip=max_grad_norm,
    )  # fmt: skip
    for reason in dict.fromkeys(no_interval.values()):
        names = ", ".join(name for name, why in no_interval.items() if why == reason)
        warnings.append(f"no 95% interval of {names}: {reason}; evaluate on more rows")
    low, high = bounds.get(metric) or [None, None]
    if low is not None and (high - low > 0.2 or len(labels) < 100):  # (SST-2's 872 rows: about 5 points)
        too_few = f"the eval split's {len(labels)} rows know {metric} only to within [{low:.2f}, {high:.2f}] (95%)"
        warnings.append(f"{too_few}: too few to tell this run from another; evaluate on more rows")
    if accelerator.is_main_process:  # eval rows that are training rows too (hashes: MNLI's 392,702 in about 30 MB)
        trained = {hash(tuple(ids)) for batch in train_loader.dataset.iter(4096) for ids in batch["input_ids"]}
        for split, key in split_keys(task).items():  # (CoLA's dev repeats 16 of 1,043: under 1 in 20, unnamed)
            ids = eval_loaders[split].dataset["input_ids"] if split in eval_loaders else []
            if (seen := sum(hash(tuple(row)) in trained for row in ids)) > len(ids) / 20:
                same = f"{seen} of the {len(ids)} {split} rows (scored as {key.format(metric)}) are training rows too"
                fix = "drop the training file's duplicates" if split == HELD_OUT else "remove them from a file"
                why = "the same tokens after --max_length's cut: a score on them is one of memory, not of new text"
                warnings.append(f"{same}, {why}; {fix}")
    for line in warnings:
        accelerator.print(f"warning: {line}")
    if accelerator.is_main_process:
        chosen = {}  # the test set, with the weights chosen on the validation set
        if any(k.startswith("val_") for k in state.best):
            chosen["validation_metrics"] = {k[4:]: v for k, v in state.best.items() if k.startswith("val_")}
            chosen["test_metrics"] = {k: v for k, v in state.best.items() if k != "step" and k[:4] != "val_"}
        atomic_save_tensors(os.path.join(output_dir, "eval_logits.safetensors"), logits)
        per_second = (lambda n: n / runtime) if runtime else (lambda n: 0.0)
        kind = "regression" if task.is_regression else "classification"
        results = {
            "task": task.name, "task_kind": kind, "method": method, "model": model_name, "metrics": metrics,
            "intervals": bounds, "best_metrics": state.best, **chosen, "stopped_early_at_step": state.stopped_early_at,
            "majority_metrics": majority, "warnings": warnings, "log_history": state.log_history,
            "trainable_params": trainable, "total_params": total, "pretrained_params": pretrained,
            "trainable_share": trainable / pretrained, **(extra or {}), "train_runtime_s": runtime,
            "train_samples_per_s": per_second(rows), "train_tokens": tokens, "train_padded_tokens": padded,
            "train_tokens_per_s": per_second(tokens),
        }  # fmt: skip
        atomic_write_json(os.path.join(output_dir, "results.json"), results)
        title = f"train_{method}.py on {task.name}: {os.path.basename(os.path.abspath(output_dir))}"
        fig = curves_figure(state.log_history, metric, majority.get(metric), title)
        if fig is None:
            accelerator.print("curves.png not written: matplotlib is not installed")
        else:
            with replacing(os.path.join(output_dir, "curves.png")) as tmp:
                fig.savefig(tmp, format="png")
    shown = [with_interval(k, v, bounds.get(k)) for k, v in metrics.items()]
    warned = f"; warning: {verdict}" if verdict else ""
    accelerator.print(f"final {task.name} {method}: {' '.join(shown)} (95% intervals){warned}")
    accelerator.end_training()  # closes the trackers and the process group
