"""Every method at GPT2-XL shape on one GPU, in the scripts' own precision: tokens/s, MFU, memory.

    python bench/gpu.py                         # the default shapes and methods (under 8 minutes on an H100)
    python bench/gpu.py --shapes 32x128 --methods full,lora,peft_lora --rounds 4
    python bench/gpu.py --profile lora          # top CUDA kernels and the GPU-busy share of one method
    python bench/gpu.py --device cpu --layers 2 --shapes 2x16 --steps 1 --warmup 0 --rounds 1 \
        --out_dir /tmp/smoke                    # a CPU smoke run

Fair by construction:
- Precision as `accelerate launch --config_file accelerate_configs/bf16.yaml` runs the scripts: fp32
  weights (the master copy the optimizer updates) under bf16 autocast; `full_pure_bf16` (bf16
  weights and optimizer state) is an extra row for reference only.
- The optimizer the scripts use on a GPU: fused AdamW, over the trainable parameters.
- Interleaved rounds (A B C ... C B A, the order reversed every other round) timed with CUDA events,
  the median step of each round, the median over rounds; each method's model is built alone (the
  previous one and its last loss freed first), so its peak memory is its own.
- Model FLOPs per step counted by torch.utils.flop_counter.FlopCounterMode on one step (matmuls and
  attention, forward and backward); MFU = FLOPs / step time / --peak_tflops.
Rows: full fine-tuning; the floor (the frozen model with gradients to its input embeddings: no PEFT
method that trains a bottom-layer parameter can be cheaper); ours and peft for LoRA (one pair on
the fused c_attn: the same math) and prompt tuning; LoRA on the q and v slices; Houlsby; Pfeiffer;
prefix; IDPG (warm cache) and M-IDPG; full fine-tuning and LoRA with gradient checkpointing (full_gc,
lora_gc: peak memory and step time against their plain rows). Random weights, no download: torch and transformers (and peft
for its rows) are all it needs.
"""

import argparse
import gc
import json
import os
import statistics
import sys

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2Model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.models import checkpoint_activations, freeze_backbone  # noqa: E402
from train_adapter import add_adapters  # noqa: E402
from train_idpg import IDPG  # noqa: E402
from train_lora import add_lora  # noqa: E402
from train_prefix import PrefixTuning  # noqa: E402
from train_prompt import PromptTuning  # noqa: E402

METHODS = [
    "full",
    "floor",
    "lora",
    "peft_lora",
    "lora_qv",
    "prompt",
    "peft_prompt",
    "houlsby",
    "pfeiffer",
    "prefix",
    "idpg",
    "m_idpg",
    "full_pure_bf16",
    "full_gc",
    "lora_gc",
]
EXTRA_TOKENS = {"prompt": 20, "peft_prompt": 20, "idpg": 20, "m_idpg": 20, "prefix": 10}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--shapes", default="32x128,8x128,8x256", help="batch x tokens, comma-separated")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the first shape (others: 1)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the card (default: H100 SXM 989, H200 989, A100 312)",
    )
    p.add_argument("--profile", default=None, metavar="METHOD", help="profile one method at the first shape")
    p.add_argument(
        "--out_dir",
        default=os.path.join("bench", "results"),
        help="one file per shape: OUT_DIR/gpu-<card>-<batch>x<tokens>.json",
    )
    return p.parse_args()


def config(layers):
    return GPT2Config(n_embd=1600, n_layer=layers, n_head=25, num_labels=3, pad_token_id=50256)


def build(method, layers, device):
    """The method's model on the device (fp32 weights; bf16 for full_pure_bf16); METHOD_gc: with gradient
    checkpointing (--gradient_checkpointing)."""
    if method.endswith("_gc"):
        model = build(method[:-3], layers, device)
        checkpoint_activations(model)
        return model
    with torch.device(device):
        model = GPT2ForSequenceClassification(config(layers))
        if method == "full_pure_bf16":
            return model.to(torch.bfloat16)
        if method == "full":
            return model
        if method == "floor":
            return model.requires_grad_(False)
        if method.startswith("peft_"):
            import peft

            kind = {
                "peft_lora": peft.LoraConfig(
                    r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="SEQ_CLS"
                ),
                "peft_prompt": peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20),
            }[method]
            return peft.get_peft_model(model, kind)
        freeze_backbone(model)
        if method in ("lora", "lora_qv"):
            add_lora(model, ["c_attn"], r=8, alpha=16, slices=["q", "v"] if method == "lora_qv" else None)
        elif method in ("houlsby", "pfeiffer"):
            add_adapters(model, method, 1600 // 16, train_layer_norms=False)
        elif method == "prefix":
            return PrefixTuning(model, 10)
        elif method == "prompt":
            return PromptTuning(model, torch.randn(20, 1600) * 0.02)
        elif method == "idpg":
            return IDPG(model, GPT2Model(GPT2Config()), num_tokens=20)
        elif method == "m_idpg":
            return IDPG(model, num_tokens=20, prompt_layers="all")
        return model


def make_batch(batch, seq, device, method):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50000, (batch, seq), generator=g).to(device)
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 3, (batch,)).to(device),
    }
    if method in ("idpg", "m_idpg"):
        out["idx"] = torch.arange(batch, device=device)  # the rows' keys in IDPG's table of r
    return out


def step_fn(method, model, batch, device):
    """One training step as the scripts run it under the bf16 config."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda") if params else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=method != "full_pure_bf16")
    embeddings = model.get_input_embeddings() if method == "floor" else None

    def step():
        with autocast:
            if method == "floor":  # gradients flow to the input embeddings only
                embeds = embeddings(batch["input_ids"]).detach().requires_grad_()
                loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
            else:
                loss = model(**batch).loss
        loss.backward()
        if optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def measure(method, layers, batch_size, seq, args, device, count_flops):
    """Median step time (CUDA events), peak memory and, once, the FLOPs of one step."""
    model = build(method, layers, device).train()
    batch = make_batch(batch_size, seq, device, method)
    if method in ("idpg", "m_idpg"):
        model.cache_states([batch])  # a warm cache, as train_idpg.py fills it before training
    step, trainable = step_fn(method, model, batch, device)
    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            import time

            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, batch, step
    return statistics.median(times), peak, flops, trainable


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def profile(method, layers, batch_size, seq, device):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(method, layers, device).train()
    batch = make_batch(batch_size, seq, device, method)
    if method in ("idpg", "m_idpg"):
        model.cache_states([batch])
    step, _ = step_fn(method, model, batch, device)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in kernels)
        span = max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)
        print(f"GPU busy: {busy / span:.1%} of the 3 steps' span ({len(kernels) / 3:.0f} kernels a step)")


def main():
    args = parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in {"A100": 312, "H100": 989, "H200": 989}.items() if k in name), 989)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    methods = args.methods.split(",")
    if args.profile:
        return profile(args.profile, args.layers, *shapes[0], device)
    short = name.split()[-1 if device.type == "cpu" else 1].lower()
    os.makedirs(args.out_dir, exist_ok=True)
    for n, (batch_size, seq) in enumerate(shapes):
        # One file per shape, rewritten after every method: a timeout or a failing method keeps the rest.
        out = os.path.join(args.out_dir, f"gpu-{short}-{batch_size}x{seq}.json")
        times = {m: [] for m in methods}
        info = {}
        errors = {}
        for r in range(args.rounds if n == 0 else 1):
            # A B C ... C B A: none always goes first
            for method in methods if r % 2 == 0 else methods[::-1]:
                if method in errors:
                    continue
                free(device)
                try:
                    t, mem, flops, trainable = measure(
                        method, args.layers, batch_size, seq, args, device, count_flops=method not in info
                    )
                except Exception as e:  # an out-of-memory, a library missing: the other rows still count
                    errors[method] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    print(f"{batch_size}x{seq} {method}: {errors[method]}", flush=True)
                    continue
                times[method].append(t)
                info.setdefault(method, {"flops": flops, "trainable": trainable, "peak_mem_gib": mem})
                print(f"{batch_size}x{seq} round {r} {method:15s} {t * 1000:8.1f} ms", flush=True)
                rows = summary(times, info, batch_size, seq, peak)
                write(out, name, args, peak, rows, errors)
        rows = summary(times, info, batch_size, seq, peak)
        write(out, name, args, peak, rows, errors)
        show(rows, out)


def summary(times, info, batch_size, seq, peak):
    """The table's rows of one shape: each method's median step over its rounds so far."""
    rows = []
    for method, measured in times.items():
        if not measured:
            continue
        step_s = statistics.median(measured)
        tokens = batch_size * seq  # the input's (prompt and prefix positions are the method's cost)
        rows.append(
            {
                "method": method,
                "batch": batch_size,
                "seq": seq,
                "step_s": step_s,
                "tokens_per_s": tokens / step_s,
                "mfu": info[method]["flops"] / step_s / (peak * 1e12),
                "flops_per_step": info[method]["flops"],
                "trainable": info[method]["trainable"],
                "peak_mem_gib": info[method]["peak_mem_gib"],
                "rounds": len(measured),
            }
        )
    return rows


def write(out, name, args, peak, rows, errors):
    result = {
        "device": name,
        "torch": torch.__version__,
        "layers": args.layers,
        "precision": "fp32 weights, bf16 autocast (full_pure_bf16: bf16 weights)",
        "optimizer": "AdamW (fused on CUDA)",
        "steps": args.steps,
        "peak_tflops": peak,
        "results": rows,
        "errors": errors,
    }
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)


def show(rows, out):
    print(f"\n{'shape':>7} {'method':15} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}  vs full  ({out})")
    full = next((x for x in rows if x["method"] == "full"), None)
    for r in rows:
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        ratio = f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else ""
        print(
            f"{r['batch']:>3}x{r['seq']:<3} {r['method']:15} {r['tokens_per_s']:10.0f} {r['mfu']:6.1%} "
            f"{mem:>9}  {ratio}"
        )


if __name__ == "__main__":
    main()
