"""Run a train_*.py script the way users do: `python script.py`, or `accelerate launch` with a
shipped yaml and 2 processes (gloo on CPU). Used by bench/support.py and the tests."""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> accelerate launch arguments (None: plain python, one process)
CONFIGS = {
    "single": None,
    "ddp": ["--config_file", "accelerate_configs/ddp.yaml", "--num_processes", "2"],
    "bf16": ["--config_file", "accelerate_configs/bf16.yaml", "--num_processes", "2"],
    "zero1": ["--config_file", "accelerate_configs/zero1.yaml", "--num_processes", "2"],
    "zero2": ["--config_file", "accelerate_configs/zero2.yaml", "--num_processes", "2"],
    "zero3": ["--config_file", "accelerate_configs/zero3.yaml", "--num_processes", "2"],
    "zero3_bf16": [
        "--config_file",
        "accelerate_configs/zero3.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "bf16",
    ],
    "zero3_offload": ["--config_file", "accelerate_configs/zero3_offload.yaml", "--num_processes", "2"],
    "fsdp": ["--config_file", "accelerate_configs/fsdp.yaml", "--num_processes", "2"],
    "fsdp_bf16": [
        "--config_file",
        "accelerate_configs/fsdp.yaml",
        "--num_processes",
        "2",
        "--mixed_precision",
        "bf16",
    ],
    "fp16": ["--config_file", "accelerate_configs/fp16.yaml", "--num_processes", "2"],  # CPU: accelerate runs fp32
}
WORLD = {name: 1 if launch is None else 2 for name, launch in CONFIGS.items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(script, config, args):
    """(the command line, its environment) that runs `script` under `config` (a name in CONFIGS, or accelerate
    launch's own arguments); the paths of the script and the config are made absolute."""
    launch_args = list(config if isinstance(config, list) else CONFIGS[config] or [])
    if "--config_file" in launch_args:
        at = launch_args.index("--config_file") + 1
        launch_args[at] = os.path.join(ROOT, launch_args[at])
    script = os.path.join(ROOT, script)
    if not launch_args:
        cmd = [sys.executable, script]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *launch_args,
            "--main_process_port",
            str(free_port()),
            script,
        ]
    # PYTHONPATH: helper programs outside the root (tests/launch/shard_probe.py) import common/ too.
    path = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
    return cmd + [str(a) for a in args], env


def launch(script, config, args, timeout=900, cwd=ROOT):
    """Run `script` under `config` (launch_command) from the folder `cwd`; returns the CompletedProcess (stdout and
    stderr captured)."""
    cmd, env = launch_command(script, config, args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
