"""The end of a run: whether it learned, results.json, the eval logits and curves.png."""

import math
import os

import torch

from common.checkpoint import atomic_save_tensors, local_part
from common.evaluation import constant_metrics, intervals
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


def learning_warnings(
    metrics, majority, metric, labels, moved, learning_rates, max_steps, *, interval=None, regression=False, clip=None
):
    """What to say when a run learned nothing it shows. Returns (the warnings, the verdict for the final line or None).

    Its trainable weights did not change at all (`moved`: they did; a tiny --max_grad_norm `clip` is named);
    or its `metric` cannot be told from always predicting the majority class (`majority`): the metric's 95% `interval`
    holds the majority's score, or the two are within the noise of an evaluation on these `labels` (two standard
    errors of an accuracy); or it is below by more than that. A regression has no majority class: its correlation
    must be above 0, its interval too. A split of one class says so instead: it cannot tell."""
    rates = ", ".join(f"--{k} {v:g}" for k, v in learning_rates.items())
    advice = (
        f"try other learning rates ({rates}) or more optimizer steps (this run: {max_steps}; "
        "--num_train_epochs, --max_train_samples)"
    )
    warnings = []
    if not moved:
        # (AdamW's steps are scale-free, until a gradient clipped this small is lost below its eps)
        why = f"; clipping the gradients to --max_grad_norm {clip:g} may be why" if clip and clip < 1e-3 else ""
        warnings.append(f"the trainable weights did not change at all: no gradient reached them{why}; {advice}")
    if len(set(labels)) == 1:
        one = f"the eval split's labels are all {labels[0]}: its {metric} says nothing of what was learned"
        return [*warnings, one], None
    ours = metrics.get(metric)
    ours = None if ours is None or math.isnan(ours) else ours
    shown = (
        f"{metric} {ours:.4f}" + (" [{:.4f}, {:.4f}]".format(*interval) if interval else "")
        if ours is not None
        else metric
    )
    verdict = None
    if regression:
        if ours is None:
            verdict = f"{metric} is undefined: every prediction is the same score"
        elif (interval[0] if interval else ours) <= 0:
            below = interval is not None and interval[1] < 0
            verdict = f"{shown} is below 0" if below else f"{shown} cannot be told from no correlation (0)"
    else:
        theirs = majority.get(metric)
        noise = 2 * math.sqrt(0.25 / len(labels)) if metric.endswith("accuracy") else 0.0
        if ours is not None and theirs is not None and not math.isnan(theirs):
            held = interval is not None and interval[0] <= theirs <= interval[1]
            if held or abs(ours - theirs) <= noise:
                verdict = f"{shown} cannot be told from always predicting the majority class ({theirs:.4f})"
            elif ours < theirs:
                verdict = f"{shown} is below always predicting the majority class ({theirs:.4f})"
    if verdict:
        why = "the run learned the wrong thing" if " below " in verdict else "the run learned nothing it shows"
        warnings.append(f"{verdict}: {why}; {advice}")
    return warnings, verdict


def curves_figure(log_history, metric, majority=None, title=""):
    """A matplotlib figure of a run: the training loss at every logged step (its axis from 0, so a small change looks
    small) and the eval `metric` at every evaluation, with the `majority` class's score as a dashed line; None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    losses = [(h["step"], h["loss"]) for h in log_history if h.get("loss") is not None]
    evals = [(h["step"], h[metric]) for h in log_history if h.get(metric) is not None]
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        left.plot(*zip(*losses), color="C0", label="training loss")
    left.set_ylim(bottom=0)
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss", color="C0")
    right = left.twinx()
    if evals:
        right.plot(*zip(*evals), "o-", color="C1", label=metric)
    if majority is not None:
        right.axhline(majority, color="C1", linestyle="--", linewidth=1, label="always the majority class")
        right.legend(loc="lower right", fontsize=8)
    right.set_ylabel(f"eval {metric}", color="C1")
    left.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_curves(path, log_history, metric, majority=None, title=""):
    """curves_figure of these, written to `path` (a PNG); False when matplotlib is not installed."""
    fig = curves_figure(log_history, metric, majority, title)
    if fig is None:
        return False
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def write_results(
    accelerator,
    state,
    model,
    output_dir,
    *,
    method,
    task,
    model_name,
    metrics,
    logits,
    eval_loaders,
    start_size,
    runtime,
    learning_rates,
    max_grad_norm=None,
    extra=None,
):
    """results.json (the output contract every script follows, `extra` added), the final eval logits and curves.png;
    print the warnings and the final line, close the trackers. Every rank calls this (collectives).
    `start_size`: weights_size before training; `runtime`: the seconds of training (evaluation and saving left out);
    `learning_rates` {flag: value}: named by a warning, as `max_grad_norm` (the clipping) where it may be why the
    weights did not move."""
    tokens, padded, rows = accelerator.reduce(state.seen).tolist()
    moved = rows == 0 or weights_size(accelerator, model) != start_size  # (exactly: a resumed run may have no step)
    majority = constant_metrics(eval_loaders, task)
    task = get_task(task)
    labels = list(eval_loaders[task.eval_splits[0]].dataset["label"])
    unwrapped = accelerator.unwrap_model(model)
    trainable, total = count_params(unwrapped)
    pretrained = next(m.pretrained_params for m in unwrapped.modules() if hasattr(m, "pretrained_params"))
    metric = task.metric
    sure, no_interval = intervals(logits, eval_loaders, task)
    warnings, verdict = learning_warnings(
        metrics,
        majority,
        metric,
        labels,
        moved,
        learning_rates,
        state.max_steps,
        interval=sure.get(metric),
        regression=task.is_regression,
        clip=max_grad_norm,
    )
    low, high = sure.get(metric) or [None, None]
    for reason in dict.fromkeys(no_interval.values()):
        names = ", ".join(name for name, why in no_interval.items() if why == reason)
        warnings.append(f"no 95% interval of {names}: {reason}; evaluate on more rows")
    # (SST-2's 872 dev rows know an accuracy to about 5 points)
    if low is not None and (high - low > 0.2 or len(labels) < 100):
        warnings.append(
            f"the eval split's {len(labels)} rows know {metric} only to within [{low:.2f}, {high:.2f}] (95%): too few "
            "to tell this run from another; evaluate on more rows"
        )
    for line in warnings:
        accelerator.print(f"warning: {line}")
    if accelerator.is_main_process:
        selected = {}
        if any(k.startswith("val_") for k in state.best):  # the test set, with the weights chosen on validation
            selected["validation_metrics"] = {k[4:]: v for k, v in state.best.items() if k.startswith("val_")}
            selected["test_metrics"] = {k: v for k, v in state.best.items() if k != "step" and k[:4] != "val_"}
        atomic_save_tensors(os.path.join(output_dir, "eval_logits.safetensors"), logits)
        per_second = (lambda n: n / runtime) if runtime else (lambda n: 0.0)
        results = {
            "task": task.name,
            "task_kind": "regression" if task.is_regression else "classification",
            "method": method,
            "model": model_name,
            "metrics": metrics,
            "intervals": sure,
            "best_metrics": state.best,
            **selected,
            "stopped_early_at_step": state.stopped_early_at,
            "majority_metrics": majority,
            "warnings": warnings,
            "log_history": state.log_history,
            "trainable_params": trainable,
            "total_params": total,
            "pretrained_params": pretrained,  # (the model's; a trainable share is of this)
            "trainable_share": trainable / pretrained,
            **(extra or {}),
            "train_runtime_s": runtime,
            "train_samples_per_s": per_second(rows),
            "train_tokens": tokens,
            "train_padded_tokens": padded,
            "train_tokens_per_s": per_second(tokens),
        }
        atomic_write_json(os.path.join(output_dir, "results.json"), results)
        title = f"train_{method}.py on {task.name}: {os.path.basename(os.path.abspath(output_dir))}"
        curves = os.path.join(output_dir, "curves.png")
        if not draw_curves(curves, state.log_history, metric, majority.get(metric), title):
            accelerator.print("curves.png not written: matplotlib is not installed")
    shown = [
        f"{k} {v:.4f}" + (" [{:.4f}, {:.4f}]".format(*sure[k]) if sure.get(k) else "") for k, v in metrics.items()
    ]
    warned = f"; warning: {verdict}" if verdict else ""
    accelerator.print(f"final {task.name} {method}: {' '.join(shown)} (95% intervals){warned}")
    accelerator.end_training()  # closes the trackers and the process group
