"""Run under `accelerate launch --config_file accelerate_configs/zero3.yaml`: prints, as JSON, how
ZeRO-3 holds the model after prepare (a test asserts that the weights are really partitioned).
bench/launch.py puts the repository on PYTHONPATH."""

import json
import sys

import torch

from common.args import base_parser
from common.model import load_model
from common.run import make_accelerator

args = base_parser("probe").parse_args(sys.argv[1:])
accelerator = make_accelerator(args.output_dir)
tokenizer, model = load_model(args.model_name_or_path, args.task, args.max_length)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
loader = torch.utils.data.DataLoader(list(range(8)), batch_size=4)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
facts = {
    n: {"full": p.ds_numel, "local": p.ds_tensor.numel(), "shape": list(p.shape)}
    for n, p in model.module.named_parameters()
}
if accelerator.is_main_process:
    print("PROBE " + json.dumps({"world": accelerator.num_processes, "params": facts}))
accelerator.end_training()  # destroy the process group before exit (as the scripts do)
