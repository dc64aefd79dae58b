"""The label a finished run gives a few sentences, from its output folder alone.

    python predict.py runs/lora-sst2 "a charming film" "a dull, tired film"
    python predict.py runs/lora-rte "A man is sleeping. ||| Nobody sleeps."   # a pair: ' ||| '

Any script's run, any variant: the model is rebuilt from OUTPUT_DIR/args.json with the run's own script's
add_method and loaded with its trained weights (load_run). Prints one line a sentence: the label, its probability
(STS-B: the score), the text.
"""

import argparse
import importlib
import inspect
import json
import os


def run_task(flags):
    """The Task a run trained on, from its args.json: GLUE's by name; your own data's from the text columns and
    labels the run wrote there (its files are not read again)."""
    from common.tasks import Task, get_task

    if flags["task"]:
        return get_task(flags["task"])
    texts, labels = tuple(flags["task_texts"]), tuple(flags["task_labels"])
    return Task("files", texts, labels, "accuracy" if labels else "pearson", "", ())


def load_run(output_dir, best=False):
    """(tokenizer, model) of a finished run of any script, rebuilt from OUTPUT_DIR/args.json: the base model, the
    method added by the add_method of the script that trained it (given the run's flags that it names), and the
    trained weights (`best`: best/trainable.safetensors), checked against the rebuilt model (names, shapes, finite
    values); in eval mode on the CPU, ready for model(**batch) on batches of common.data.Collator. The base model (and
    IDPG's encoder) must be where the run found them. What does not fit is a UsageError."""
    from common.errors import UsageError
    from common.models import load_model
    from common.outputs import read_json

    try:
        flags = read_json(os.path.join(output_dir, "args.json"))
        assert isinstance(flags, dict) and "max_length" in flags, "args.json is not a run's flags"
        task = run_task(flags)
        add_method = importlib.import_module(f"train_{flags['method']}").add_method
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError, ImportError) as e:
        raise UsageError(
            f"{output_dir} holds no run of these scripts ({type(e).__name__}: {e}); pass a run's --output_dir"
        )
    weights = os.path.join(output_dir, "best" if best else "", "trainable.safetensors")
    if not os.path.isfile(weights):
        raise UsageError(
            f"{output_dir} has no {weights}: its run has not finished (--best reads best/, written as it goes)"
        )
    check_unchanged(output_dir, flags, weights)
    if not os.path.isdir(flags["model_name_or_path"]):
        from common.args import hub_or_offline

        hub_or_offline(flags["model_name_or_path"])  # (no network: offline at once, or a one-line error)
    tokenizer, model = load_model(flags["model_name_or_path"], task, ignore_mismatched_sizes=True)
    names = [n for n in list(inspect.signature(add_method).parameters)[1:] if n != "tokenizer"]  # (the flags)
    if set(names) - set(flags):
        missing = ", ".join(sorted(set(names) - set(flags)))
        raise UsageError(f"{output_dir}/args.json lacks {missing}, which train_{flags['method']}.py needs: edited?")
    given = {"tokenizer": tokenizer} if "tokenizer" in inspect.signature(add_method).parameters else {}
    model = add_method(model, **given, **{name: flags[name] for name in names})
    load_trainable(model, weights, strict=True)
    return tokenizer, model.eval()


def load_trainable(model, path, strict=False):
    """Load a trainable.safetensors into a plain (not distributed) model: each tensor must be one of the model's
    parameters (`strict`: exactly its trainable ones, none missing), of its shape and finite; a UsageError names the
    first that does not fit. Returns the names."""
    import torch
    from safetensors.torch import load_file

    from common.errors import UsageError

    try:
        state = load_file(path)
    except Exception as e:  # missing, empty, cut short: what safetensors raises varies
        raise UsageError(f"cannot read {path} ({type(e).__name__}): the run did not finish writing it") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or not strict}
    unknown, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state)) if strict else []
    if unknown or missing:
        which = f"holds {unknown[0]}, which it does not" if unknown else f"lacks {missing[0]}, which it"
        raise UsageError(f"{path} {which} train in the rebuilt model: it is another run's, or the base model changed")
    for name, tensor in state.items():
        if tensor.shape != params[name].shape:
            shapes = f"{tuple(tensor.shape)}, the model's {tuple(params[name].shape)}"
            raise UsageError(f"{path}: {name} has the shape {shapes}: it is another run's, or the base model changed")
        if not tensor.isfinite().all():
            raise UsageError(f"{path}: {name} holds nan or infinite values; use an earlier checkpoint's")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return list(state)


def check_unchanged(output_dir, flags, weights):
    """Refuse a run whose args.json was edited since its weights were saved (they keep its text), or whose base model
    folder changed in place since it trained (args.json keeps each model folder's fingerprint): either would give
    other outputs without a word."""
    from safetensors import safe_open

    from common.checkpoint import model_fingerprint
    from common.errors import UsageError

    try:
        with safe_open(weights, "pt") as f:
            saved = (f.metadata() or {}).get("args.json")
    except Exception:  # a damaged file: load_trainable says so
        saved = None
    if saved is not None and json.loads(saved) != flags:
        was = json.loads(saved)
        key = next(k for k in sorted(set(was) | set(flags)) if was.get(k) != flags.get(k))
        raise UsageError(
            f"{output_dir}/args.json was edited since the run ({key}: {flags.get(key)!r}, trained with "
            f"{was.get(key)!r}): put it back as it was"
        )
    for flag, fingerprint in flags.get("models", {}).items():
        if os.path.isdir(flags[flag]) and model_fingerprint(flags[flag]) != fingerprint:
            raise UsageError(
                f"the model folder {flags[flag]} changed since the run trained on it (its files' fingerprint "
                "differs): put the model it trained from back there"
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("output_dir", help="a finished run's --output_dir")
    p.add_argument("texts", nargs="+", help="sentences; the two of a pair joined by ' ||| '")
    p.add_argument("--best", action="store_true", help="best/'s weights, not the final ones")
    args = p.parse_args(argv)

    import torch

    from common.data import Collator
    from common.errors import UsageError
    from common.models import takes_position_ids
    from common.outputs import read_json

    for i, text in enumerate(args.texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"text {i} is not UTF-8 (bytes your terminal could not decode); pass it as UTF-8")
        if not all(part.strip() for part in text.split("|||")):
            raise UsageError(f"text {i} is empty (or a half of its pair is); pass a sentence")
    tokenizer, model = load_run(args.output_dir, best=args.best)
    flags = read_json(f"{args.output_dir}/args.json")
    task = run_task(flags)
    rows = []
    for i, text in enumerate(args.texts):
        parts = [t.strip() for t in text.split("|||")]
        if len(parts) != len(task.text_keys):
            raise UsageError(f"'{text}' has {len(parts)} text(s); {task.name} reads {len(task.text_keys)}")
        enc = tokenizer(*parts, truncation=True, max_length=flags["max_length"])
        rows.append({**enc, "label": 0.0 if task.is_regression else 0, "idx": i})
    collate = Collator(tokenizer.pad_token_id, tokenizer.padding_side, takes_position_ids(model))
    batch = collate(rows)
    batch.pop("idx")
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits.float()
    for text, row in zip(args.texts, logits):
        if task.is_regression:  # (STS-B's from 0 to 5, as its submission files clamp it)
            print(f"{min(max(row.item(), 0.0), 5.0) if task.name == 'stsb' else row.item():.3f}\t{text}")
        else:
            p = row.softmax(-1)
            print(f"{task.label_names[p.argmax()]}\t{p.max():.3f}\t{text}")


if __name__ == "__main__":
    from common.errors import run_main

    run_main(main)
