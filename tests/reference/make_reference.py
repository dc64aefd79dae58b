"""Run inside the reference environment (transformers 4.57.6, adapters 1.3.0, peft 0.17.1; see
tests/reference/env.py). Builds tiny random models, puts AdapterHub's adapters and peft's prefix
tuning on them with random (not near-identity) weights, and saves, into OUT_DIR: each model
directory, the method's weights, fixed inputs and the reference logits."""

import json
import os
import sys

import adapters
import torch
from peft import PrefixTuningConfig, get_peft_model
from safetensors.torch import save_file

from bench import tiny  # the tests' model factories (the caller puts the repository on PYTHONPATH)

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
ids = torch.tensor([[5, 17, 42, 9, 3, 8, 11], [7, 8, 9, 10, 11, 12, 13]])
mask = torch.ones_like(ids)
save_file({"input_ids": ids, "attention_mask": mask}, os.path.join(out, "inputs.safetensors"))


def tiny_model(kind):
    return {"gpt2": tiny.gpt2, "bert": tiny.bert, "llama": tiny.llama}[kind](labels=3)


def randomize(model, words):
    g = torch.Generator().manual_seed(1)
    state = {}
    for n, p in model.named_parameters():
        if any(w in n for w in words):
            p.data = torch.randn(p.shape, generator=g) * 0.3
            state[n] = p.data.clone()
    return state


facts = {
    "transformers": __import__("transformers").__version__,
    "adapters": adapters.__version__,
    "peft": __import__("peft").__version__,
}
for kind in ("gpt2", "bert"):
    for variant, config in (
        ("houlsby", adapters.DoubleSeqBnConfig(reduction_factor=4)),
        ("pfeiffer", adapters.SeqBnConfig(reduction_factor=4)),
        ("pfeiffer-ln", adapters.SeqBnConfig(reduction_factor=4, ln_before=True)),
    ):
        model = tiny_model(kind)
        model.save_pretrained(os.path.join(out, f"{kind}-model"))
        adapters.init(model)
        model.add_adapter("ref", config=config)
        model.set_active_adapters("ref")
        weights = randomize(model, ["adapters.ref"])
        save_file(weights, os.path.join(out, f"{kind}-{variant}.safetensors"))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        save_file({"logits": logits}, os.path.join(out, f"{kind}-{variant}-logits.safetensors"))
        facts[f"{kind}-{variant}"] = sorted(weights)[:4]

# Llama: grouped key/value heads (peft sizes the pairs by them), rotary
for kind in ("gpt2", "bert", "llama"):
    base = tiny_model(kind)
    if kind == "llama":  # (the GPT-2 and BERT folders are saved above)
        base.save_pretrained(os.path.join(out, "llama-model"))
    model = get_peft_model(base, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5)).eval()
    width = model.prompt_encoder["default"].embedding.weight.shape[1]  # 2 x layers x key/value heads x head size
    prefix = torch.randn(5, width, generator=torch.Generator().manual_seed(2))
    model.prompt_encoder["default"].embedding.weight.data.copy_(prefix)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    save_file({"prefix": prefix, "logits": logits}, os.path.join(out, f"{kind}-prefix.safetensors"))
json.dump(facts, open(os.path.join(out, "facts.json"), "w"), indent=1)
print("reference written to", out)
