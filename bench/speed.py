"""CPU speed and memory of every method against the floor and against the reference libraries.

Model: GPT-2-small shape (12 layers, d = 768), random weights; batch 8 x 128 tokens; fixed torch
threads. Each configuration runs in its own process (peak RSS is per process), the
configurations interleaved round by round (A B C C B A ...), and the report gives RATIOS, since
this shared machine is noisy and absolute times do not compare across runs.

The floor: the same frozen model with gradients flowing to the input embeddings (a full
activation backward, no weight gradient), at the method's total sequence length. No method with
trainable parameters at the bottom layer can be cheaper.

    python bench/speed.py                  # writes bench/results/speed.json
    python bench/speed.py --rounds 1 --steps 3 --layers 2   # a quick look
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# name -> (method, extra tokens, environment): "ref" runs in bench/refenv.py's environment
CONFIGS = {
    "floor": ("floor", 0, "ours"),
    "floor+20": ("floor", 20, "ours"),
    "floor+10": ("floor", 10, "ours"),
    "full": ("full", 0, "ours"),
    "lora": ("lora", 0, "ours"),
    "lora_fused": ("lora_fused", 0, "ours"),
    "peft_lora": ("peft_lora", 0, "ours"),
    "prompt": ("prompt", 20, "ours"),
    "peft_prompt": ("peft_prompt", 20, "ours"),
    "idpg": ("idpg", 20, "ours"),
    "prefix": ("prefix", 10, "ours"),
    "peft_prefix": ("peft_prefix", 10, "ref"),
    "houlsby": ("houlsby", 0, "ours"),
    "adapters_houlsby": ("adapters_houlsby", 0, "ref"),
    "pfeiffer": ("pfeiffer", 0, "ours"),
    "adapters_pfeiffer": ("adapters_pfeiffer", 0, "ref"),
    # the LoRA variants (python bench/speed.py --configs lora,rslora,loraplus,dora_fused,peft_dora --out
    # bench/results/speed-lora-variants.json): DoRA against peft's on the fused c_attn, rsLoRA and LoRA+ against LoRA
    "dora_fused": ("dora_fused", 0, "ours"),
    "peft_dora": ("peft_dora", 0, "ours"),
    "rslora": ("rslora", 0, "ours"),
    "loraplus": ("loraplus", 0, "ours"),
    # --gradient_checkpointing (python bench/speed.py --configs full,full_gc,lora,lora_gc --out .../speed-gc.json)
    "full_gc": ("full_gc", 0, "ours"),
    "lora_gc": ("lora_gc", 0, "ours"),
}
# (config, baseline, target ratio)
RATIOS = [
    ("lora", "floor", 1.10),
    ("lora_fused", "floor", 1.10),
    ("houlsby", "floor", 1.10),
    ("pfeiffer", "floor", 1.10),
    ("prompt", "floor+20", 1.05),
    ("prefix", "floor+10", 1.05),
    ("idpg", "prompt", 1.10),
    ("full", "floor", None),
    ("lora_fused", "peft_lora", 1.0),
    ("prompt", "peft_prompt", 1.0),
    ("prefix", "peft_prefix", 1.0),
    ("houlsby", "adapters_houlsby", 1.0),
    ("pfeiffer", "adapters_pfeiffer", 1.0),
    ("dora_fused", "peft_dora", 0.9),
    ("rslora", "lora", 1.0),
    ("loraplus", "lora", 1.0),
    ("full_gc", "full", None),
    ("lora_gc", "lora", None),
]


def build(method, layers):
    if method.endswith("_gc"):  # the same, with gradient checkpointing (as --gradient_checkpointing)
        from common.models import checkpoint_activations

        model = build(method[:-3], layers)
        checkpoint_activations(model)
        return model
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, num_labels=2, pad_token_id=0)
    model = GPT2ForSequenceClassification(config)
    if method in ("full", "floor"):
        return model.requires_grad_(method == "full")
    if method.startswith("peft_"):
        import peft

        cfg = {
            "peft_lora": peft.LoraConfig(
                r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="SEQ_CLS"
            ),
            "peft_dora": peft.LoraConfig(
                r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="SEQ_CLS", use_dora=True
            ),
            "peft_prompt": peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20),
            "peft_prefix": peft.PrefixTuningConfig(
                task_type="SEQ_CLS", num_virtual_tokens=10, prefix_projection=True, encoder_hidden_size=512
            ),
        }[method]
        return peft.get_peft_model(model, cfg)
    if method.startswith("adapters_"):
        import adapters

        adapters.init(model)
        model.add_adapter(
            "a", config=adapters.DoubleSeqBnConfig() if method.endswith("houlsby") else adapters.SeqBnConfig()
        )
        model.train_adapter("a")
        return model
    from common.models import freeze_backbone

    freeze_backbone(model)
    if method in ("lora", "lora_fused", "rslora", "loraplus", "dora_fused"):
        from train_lora import add_lora

        slices = None if method.endswith("_fused") else ["q", "v"]
        add_lora(
            model, ["c_attn"], r=8, alpha=16, slices=slices, rslora=method == "rslora", dora=method == "dora_fused"
        )
    elif method in ("houlsby", "pfeiffer"):
        from train_adapter import add_adapters

        # as AdapterHub (and --freeze_layer_norms)
        add_adapters(model, method, 768 // 16, train_layer_norms=False)
    elif method == "prompt":
        from train_prompt import PromptTuning

        return PromptTuning(model, torch.randn(20, 768) * 0.02)
    elif method == "prefix":
        from train_prefix import PrefixTuning

        return PrefixTuning(model, 10)
    elif method == "idpg":
        from train_idpg import IDPG

        return IDPG(model, GPT2Model(GPT2Config(n_layer=layers)), num_tokens=20)
    return model


def one(name, threads, layers, batch, seq, warmup, steps, **_):
    """Time one configuration in this process (keywords: the flags of the same names); print one
    JSON line."""
    import torch

    torch.set_num_threads(threads)
    method, extra, _ = CONFIGS[name]
    model = build(method, layers).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50000, (batch, seq), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (batch,))}
    # a warm cache, as after train_idpg.py's cache_states: r looked up by the rows' idx
    if method == "idpg":
        data["idx"] = torch.arange(batch)
        model.cache_states([data])
    if method == "floor":
        wide = torch.randint(1, 50000, (batch, seq + extra), generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
    if method == "loraplus":  # B at 16 x the rate, as train_lora.py --loraplus_lr_ratio 16
        faster = [p for n, p in model.named_parameters() if n.endswith(".lora_B")]
        rest = [p for p in params if all(p is not q for q in faster)]
        optimizer = torch.optim.AdamW([{"params": rest}, {"params": faster, "lr": 16e-5}], lr=1e-5)
    # What backward keeps: the bytes of the tensors autograd saves in one forward, weights left out. Exact and the
    # same every run (peak RSS moves by about 100 MiB between rounds of the same configuration).
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        saving = torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t) if step == 0 else contextlib.nullcontext()
        with saving:
            if method == "floor":  # gradients to the input embeddings only
                embeds = model.get_input_embeddings()(wide).detach().requires_grad_()
                loss = model(inputs_embeds=embeds, attention_mask=torch.ones_like(wide), labels=data["labels"]).loss
            else:
                loss = model(**data).loss
        loss.backward()
        if optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    print(
        "RESULT "
        + json.dumps(
            {
                "name": name,
                "step_s": statistics.median(times),
                "trainable": sum(p.numel() for p in params),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "saved_mib": sum(saved.values()) / 2**20,
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "speed.json"))
    args = p.parse_args()
    if args.one:
        return one(args.one, **vars(args))
    from bench.refenv import python as ref_python
    from common.outputs import atomic_write_json

    runs = {}
    names = args.configs.split(",")
    # Interleaved: every configuration once per round, the order reversed every other round
    # (A B C C B A ...): none always goes first.
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            exe = ref_python() if CONFIGS[name][2] == "ref" else sys.executable
            cmd = [exe, __file__, "--one", name] + [
                f"--{k}={getattr(args, k)}" for k in ("layers", "batch", "seq", "steps", "warmup", "threads")
            ]
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads)),
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{out.stderr[-1500:]}", file=sys.stderr)
                continue
            res = json.loads(line[7:])
            runs.setdefault(name, []).append(res)
            print(
                f"round {r} {name:18} {res['step_s']:.3f} s/step  {res['peak_rss_mib']:.0f} MiB peak, "
                f"{res['saved_mib']:.0f} MiB saved for backward",
                flush=True,
            )
    summary = {
        n: {
            "step_s": statistics.median(x["step_s"] for x in v),
            "trainable": v[0]["trainable"],
            "peak_rss_mib": max(x["peak_rss_mib"] for x in v),
            "saved_mib": v[0]["saved_mib"],
        }
        for n, v in runs.items()
    }
    ratios = [
        {
            "config": a,
            "baseline": b,
            "time_ratio": summary[a]["step_s"] / summary[b]["step_s"],
            "memory_ratio": summary[a]["peak_rss_mib"] / summary[b]["peak_rss_mib"],
            "saved_ratio": summary[a]["saved_mib"] / summary[b]["saved_mib"],
            "target": t,
        }
        for a, b, t in RATIOS
        if a in summary and b in summary
    ]
    result = {
        "shape": {k: getattr(args, k) for k in ("layers", "batch", "seq", "threads", "steps", "rounds")},
        "configs": summary,
        "ratios": ratios,
    }
    atomic_write_json(args.out, result)
    for x in ratios:
        goal = f"(target <= {x['target']:.2f})" if x["target"] else ""
        print(
            f"{x['config']:>12} / {x['baseline']:<18} time {x['time_ratio']:.3f}  "
            f"memory {x['memory_ratio']:.3f}  saved {x['saved_ratio']:.3f} {goal}"
        )


if __name__ == "__main__":
    main()
