"""The end of a run: whether it learned, results.json, the eval logits and curves.png."""

import math
import os

import torch

from common.checkpoint import atomic_save_tensors, local_part
from common.evaluation import constant_metrics, intervals
from common.loop import comparable
from common.models import count_params
from common.outputs import LOCK, atomic_write_json, replacing
from common.tasks import get_task


def weights_size(accelerator, model):
    """The sum of squares of the trainable weights, over every rank's part (a collective): did they move?"""
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for p in accelerator.unwrap_model(model).parameters():
        if p.requires_grad:
            total += local_part(p).detach().double().pow(2).sum()
    return accelerator.reduce(total, "sum").item()


def learning_warnings(metrics, majority, metric, labels, moved, learning_rates, max_steps):
    """What to say when a run learned nothing, or worse: its trainable weights did not change at all (`moved`: they
    did), or its `metric` is within 1 point of always predicting the majority class (`majority`), or below it by more
    than the noise of an evaluation on these `labels` (the eval split's; two standard errors of an accuracy). A split
    of one class says so instead: it cannot tell."""
    rates = ", ".join(f"--{k} {v:g}" for k, v in learning_rates.items())
    advice = (
        f"try other learning rates ({rates}) or more optimizer steps (this run: {max_steps}; "
        "--num_train_epochs, --max_train_samples)"
    )
    warnings = [] if moved else [f"the trainable weights did not change at all: no gradient reached them; {advice}"]
    if len(set(labels)) == 1:
        return warnings + [
            f"the eval split's labels are all {labels[0]}: its {metric} says nothing of what was learned"
        ]
    ours, theirs = comparable(metrics.get(metric)), comparable(majority.get(metric))
    noise = 2 * math.sqrt(0.25 / len(labels))
    if math.isfinite(ours) and math.isfinite(theirs) and abs(ours - theirs) <= 0.01:
        warnings.append(
            f"{metric} {ours:.4f} is within 1 point of always predicting the majority class ({theirs:.4f}): the run "
            f"learned nothing it shows; {advice}"
        )
    elif math.isfinite(ours) and math.isfinite(theirs) and ours < theirs - noise:
        warnings.append(
            f"{metric} {ours:.4f} is below always predicting the majority class ({theirs:.4f}) by more than the "
            f"noise of {len(labels)} eval rows ({noise:.3f}): the run learned the wrong thing; {advice}"
        )
    return warnings


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
    extra=None,
):
    """results.json (the output contract every script follows, `extra` added), the final eval logits and curves.png;
    print the warnings and the final line, close the trackers and free OUTPUT_DIR. Every rank calls this (collectives).
    `start_size`: weights_size before training; `runtime`: the seconds of training (evaluation and saving left out);
    `learning_rates` {flag: value}: named by a warning."""
    counts = torch.stack([state.tokens, state.tokens.new_tensor(state.padded), state.tokens.new_tensor(state.rows)])
    tokens, padded, rows = accelerator.reduce(counts).tolist()
    moved = rows == 0 or weights_size(accelerator, model) != start_size  # (exactly: a resumed run may have no step)
    majority = constant_metrics(eval_loaders, task)
    task = get_task(task)
    labels = list(eval_loaders[task.eval_splits[0]].dataset["label"])
    trainable, total = count_params(accelerator.unwrap_model(model))
    metric = task.metric
    sure = intervals(logits, eval_loaders, task)
    warnings = learning_warnings(metrics, majority, metric, labels, moved, learning_rates, state.max_steps)
    low, high = sure.get(metric, [0.0, 0.0])
    if high - low > 0.2 or len(labels) < 100:  # (SST-2's 872 dev rows know an accuracy to about 5 points)
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
        os.remove(os.path.join(output_dir, LOCK))
    shown = [f"{k} {v:.4f}" + (" [{:.4f}, {:.4f}]".format(*sure[k]) if k in sure else "") for k, v in metrics.items()]
    accelerator.print(f"final {task.name} {method}: {' '.join(shown)} (95% intervals)")
    accelerator.end_training()  # closes the trackers and the process group
