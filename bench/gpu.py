"""Time every method at GPT2-XL shape on one GPU: random weights (no download), bf16 weights and
activations, one fixed batch. Prints and writes tokens/s, model FLOPs utilisation and peak memory.

    python bench/gpu.py                       # GPT2-XL shape, batch 8 x 256 tokens
    python bench/gpu.py --layers 2 --device cpu --dtype fp32 --batch 2 --seq 32 --steps 2   # CPU smoke run

Model FLOPs per step: 6 N T for full fine-tuning (forward 2 N T, backward 4 N T), 4 N T for the
frozen-backbone methods (no weight gradients), N the backbone's parameters and T the tokens of the
step, prompt and prefix tokens included for the methods that add them; attention's own FLOPs are
left out. MFU = model FLOPs / step time / the card's dense bf16 peak (--peak_tflops).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2Model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.launch import freeze_backbone  # noqa: E402
from train_adapter import add_adapters  # noqa: E402
from train_idpg import build_idpg  # noqa: E402
from train_lora import add_lora  # noqa: E402
from train_prefix import PrefixTuning  # noqa: E402
from train_prompt import PromptTuning  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--layers", type=int, default=48)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--device", default="cuda")
p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="fp32 for a CPU smoke run")
p.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100 SXM: 989)")
p.add_argument("--methods", default="full,lora,prefix,houlsby,pfeiffer,prompt,idpg")
p.add_argument("--out", default="bench/results/gpu.json")
args = p.parse_args()
dev, dtype = torch.device(args.device), torch.bfloat16 if args.dtype == "bf16" else torch.float32
config = GPT2Config(n_embd=1600, n_layer=args.layers, n_head=25, num_labels=3, pad_token_id=50256)


def make(method):
    """The method's model on the device, in bf16, and its extra sequence length."""
    with dev:
        model = GPT2ForSequenceClassification(config).to(dtype)
        if method == "full":
            return model, 0
        freeze_backbone(model)
        if method == "lora":
            add_lora(model, ["c_attn"], r=8, alpha=16, slices=["q", "v"])
        elif method in ("houlsby", "pfeiffer"):
            add_adapters(model, method, 1600 // 16, train_layer_norms=method == "houlsby")
        elif method == "prefix":
            return PrefixTuning(model, 10), 10
        elif method == "prompt":
            return PromptTuning(model, torch.randn(20, 1600, dtype=dtype) * 0.02), 20
        elif method == "idpg":
            return build_idpg(model, GPT2Model(GPT2Config()).to(dtype), num_tokens=20), 20
        return model.to(dtype), 0


backbone = sum(p.numel() for p in GPT2ForSequenceClassification(GPT2Config(n_embd=1600, n_layer=args.layers, n_head=25,
                                                                             num_labels=3)).transformer.parameters())
ids = torch.randint(0, 50000, (args.batch, args.seq), device=dev)
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (args.batch,),
                                                                                          device=dev)}
rows = []
for method in args.methods.split(","):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, extra = make(method)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for step in range(args.warmup + args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens = args.batch * (args.seq + extra)
    flops = (6 if method == "full" else 4) * backbone * tokens
    row = {"method": method, "step_s": step_s, "tokens_per_s": args.batch * args.seq / step_s,
           "mfu": flops / step_s / (args.peak_tflops * 1e12), "trainable": sum(q.numel() for q in params),
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}
    rows.append(row)
    print(json.dumps(row), flush=True)
    del model, optimizer, params
info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "layers": args.layers, "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "steps": args.steps,
        "peak_tflops": args.peak_tflops, "results": rows}
os.makedirs(os.path.dirname(args.out), exist_ok=True)
with open(args.out, "w") as f:
    json.dump(info, f, indent=1)
print(f"{'method':10} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'trainable':>13}")
for r in rows:
    mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
    print(f"{r['method']:10} {r['tokens_per_s']:10.0f} {r['mfu']:6.1%} {mem:>9} {r['trainable']:13,}")
