"""Run under `accelerate launch` with a ZeRO-3 or FSDP2 config: prints, as JSON, how the model is
held after prepare (the tests assert that the weights are really split), and the process group's timeout. bench/launch.py puts the
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
    if hasattr(p, "ds_numel"):  # ZeRO-3
        return {"full": p.ds_numel, "local": p.ds_tensor.numel(), "shape": list(p.shape)}
    return {"full": p.numel(), "local": p.numel(), "shape": list(p.shape)}  # DDP: whole on every rank


args = base_parser("probe").parse_args(sys.argv[1:])
accelerator = make_accelerator(args.output_dir, ddp_timeout=args.ddp_timeout)
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
    # how long a collective waits for the other ranks (--ddp_timeout)
    "timeout_s": torch.distributed.distributed_c10d._get_default_group()
    ._get_backend(torch.device("cpu"))
    .options._timeout.total_seconds(),
}
if accelerator.is_main_process:
    print("PROBE " + json.dumps(probe))
accelerator.end_training()  # destroy the process group before exit (as the scripts do)
