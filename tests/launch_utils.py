"""Run a train_*.py script the way users do, `python script.py` or `accelerate launch` with a
shipped yaml and 2 processes (gloo on CPU), or in this process (`run_in_process`: the same main()
without the interpreter start, for the fast tests of the method logic)."""
import importlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> accelerate launch arguments (None: plain python, one process)
CONFIGS = {
    "single": None,
    "ddp": ["--config_file", "accelerate_configs/ddp.yaml", "--num_processes", "2"],
    "bf16": ["--config_file", "accelerate_configs/bf16.yaml", "--num_processes", "2"],
    "zero1": ["--config_file", "accelerate_configs/zero1.yaml", "--num_processes", "2"],
    "zero2": ["--config_file", "accelerate_configs/zero2.yaml", "--num_processes", "2"],
    "zero3": ["--config_file", "accelerate_configs/zero3.yaml", "--num_processes", "2"],
    "zero3_bf16": ["--config_file", "accelerate_configs/zero3.yaml", "--num_processes", "2",
                   "--mixed_precision", "bf16"],
    "zero3_offload": ["--config_file", "accelerate_configs/zero3_offload.yaml", "--num_processes", "2"],
    "fp16": ["--config_file", "accelerate_configs/fp16.yaml", "--num_processes", "2"],  # CPU: accelerate runs fp32
}
WORLD = {name: 1 if launch is None else 2 for name, launch in CONFIGS.items()}
DEFAULT = ("single", "zero3")  # the real launches of the default suite; the rest of the matrix is `-m slow`


def matrix(configs=CONFIGS):
    """pytest parameters for launch configs: DEFAULT in the default suite, the others marked slow."""
    return [pytest.param(c, marks=() if c in DEFAULT else pytest.mark.slow) for c in configs]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, config, args, timeout=900):
    """Run `script` under `config` (a name in CONFIGS, or accelerate launch's own arguments); returns
    the CompletedProcess (stdout and stderr captured)."""
    launch_args = config if isinstance(config, list) else CONFIGS[config]
    if launch_args is None:
        cmd = [sys.executable, script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args,
               "--main_process_port", str(free_port()), script]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_in_process(script, args):
    """Call `script`'s main(args) here, as `python script.py args` would run it (one process).
    A bad input raises common.errors.UsageError (the command line prints it as one line)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's process-wide singletons
    GradientState._reset_state()
    try:
        importlib.import_module(script[:-3]).main([str(a) for a in args])
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


def results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


def eval_batches(model_dir, glue_dir, task, max_eval_samples, max_length=128, batch_size=16):
    """The eval split as the scripts see it, batched for a plain model."""
    from transformers import AutoTokenizer

    from common.data import TASKS, Collator, load_glue, tokenize

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
    from common.data import TASKS

    return load_file(os.path.join(output_dir, "eval_logits.safetensors"))[TASKS[task].eval_splits[0]]


def logits_of(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits.float() for b in batches])
