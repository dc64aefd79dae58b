"""What the tests share: running a script in this process or through its command line, the
launch matrix as pytest parameters, reading a run's outputs back, and building command lines.
Launching (bench/launch.py) and the tiny models (bench/tiny.py) live in bench/, which measures
with them too."""

import importlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bench.launch import CONFIGS, ROOT, WORLD, launch  # noqa: F401 (the tests import them from here)
from bench.tiny import FIXTURES  # noqa: F401

# the real launches of the default suite; the rest of the matrix is `-m slow`
DEFAULT = ("single", "zero3")


def matrix(configs=CONFIGS):
    """pytest parameters for launch configs: DEFAULT in the default suite, the others marked slow."""
    return [pytest.param(c, marks=() if c in DEFAULT else pytest.mark.slow) for c in configs]


def run_in_process(script, args):
    """Call `script`'s main(args) here, as `python script.py args` would run it (one process).
    A bad input raises common.errors.UsageError (the command line prints it as one line)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's process-wide singletons
    GradientState._reset_state()
    try:
        module = importlib.import_module(script[:-3])
        module.main(module.parse_args([str(a) for a in args]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def cli(script, args):
    """`python script.py args` without the interpreter start: the script's main() under run_main,
    as its `if __name__ == "__main__"` runs it. Returns (exit status, stderr)."""
    import contextlib
    import io

    from common.errors import run_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        run_main(lambda: run_in_process(script, args))
    return e.value.code, err.getvalue()


def check_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def evaluations(res):
    """The evaluations of a run's log_history (the entries of the logged steps between them hold
    only the step, the epoch and the running loss)."""
    return [h for h in res["log_history"] if "train_loss" in h]


def results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


def check_same_run(whole, resumed):
    """Two runs ended bitwise the same: log, final metrics and trainable weights."""
    a, b = results(whole), results(resumed)
    assert a["log_history"] == b["log_history"] and a["metrics"] == b["metrics"]
    wa = load_file(os.path.join(whole, "trainable.safetensors"))
    wb = load_file(os.path.join(resumed, "trainable.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return a, wa


def eval_batches(model_dir, glue_dir, task, max_eval_samples, max_length=128, batch_size=16):
    """The eval split as the scripts see it, batched for a plain model."""
    from transformers import AutoTokenizer

    from common.data import Collator, load_glue, tokenize
    from common.tasks import TASKS

    tok = AutoTokenizer.from_pretrained(model_dir)
    split = TASKS[task].eval_splits[0]
    rows = load_glue(task, glue_dir)[split]
    ds = tokenize(rows.select(range(min(max_eval_samples, len(rows)))), task, tok, max_length)
    collate = Collator(tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id, "right")
    for i in range(0, len(ds), batch_size):
        batch = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
        batch.pop("idx"), batch.pop("labels")
        yield batch


def saved_eval_logits(output_dir, task):
    from common.tasks import TASKS

    return load_file(os.path.join(output_dir, "eval_logits.safetensors"))[TASKS[task].eval_splits[0]]


def check_load_trained(output_dir, model_dir, glue_dir, atol, task="sst2", rows=32):
    """predict.load_run rebuilds the run's model from its folder alone: its logits on the
    eval rows are the run's own eval_logits."""
    from predict import load_run

    _, model = load_run(str(output_dir))
    ours = logits_of(model, eval_batches(model_dir, glue_dir, task, rows))
    torch.testing.assert_close(ours, saved_eval_logits(output_dir, task), atol=atol, rtol=0)


def logits_of(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits.float() for b in batches])


def args_for(tiny_gpt2, data, out, *switches, **flags):
    """A command line: these defaults, `flags` (name=value) replacing or adding, then `switches`."""
    values = {
        "task": "sst2",
        "model_name_or_path": tiny_gpt2,
        "data_dir": data,
        "output_dir": out,
        "max_train_samples": 32,
        "max_eval_samples": 16,
        "per_device_train_batch_size": 8,
        **flags,
    }
    return [x for k, v in values.items() for x in (f"--{k}", str(v))] + list(switches)


def one_line(code, err, expected_code=2):
    """The command line's contract: the exit status, exactly one message line, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted: ", "terminated: "))]
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    return lines[0]


def glue_copy(glue_dir, tmp_path, folder, name, text):
    """The fixtures, with one file replaced by `text` (bytes or str)."""
    data = tmp_path / "glue"
    shutil.copytree(glue_dir, data)
    path = data / folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return data
