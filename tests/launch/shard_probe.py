"""Run under `accelerate launch` with a ZeRO-3 or FSDP2 config: prints, as JSON, how the model is
held after prepare (the tests assert that the weights are really split). bench/launch.py puts the
repository on PYTHONPATH."""

import json
import sys

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from common.args import base_parser
from common.loop import make_accelerator
from common.models import load_model


def facts(p):
    """A parameter's whole size, this rank's part, and the shape a reader outside a forward sees."""
    if isinstance(p, DTensor):  # FSDP2: a shard of rows on each rank
        return {"full": p.numel(), "local": p.to_local().numel(), "shape": list(p.to_local().shape)}
    return {"full": p.ds_numel, "local": p.ds_tensor.numel(), "shape": list(p.shape)}  # ZeRO-3


args = base_parser("probe").parse_args(sys.argv[1:])
accelerator = make_accelerator(args.output_dir)
tokenizer, model = load_model(args.model_name_or_path, args.task, args.max_length)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
loader = torch.utils.data.DataLoader(list(range(8)), batch_size=4)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
plain = accelerator.unwrap_model(model)
probe = {
    "world": accelerator.num_processes,
    "distributed_type": str(accelerator.distributed_type),
    "params": {n: facts(p) for n, p in plain.named_parameters()},
    "sharded_modules": [n for n, m in plain.named_modules() if isinstance(m, FSDPModule)],
}
if accelerator.is_main_process:
    print("PROBE " + json.dumps(probe))
accelerator.end_training()  # destroy the process group before exit (as the scripts do)
