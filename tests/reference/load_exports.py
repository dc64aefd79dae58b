"""Run inside the reference environment (tests/reference/env.py: transformers 4.57, peft 0.17.1,
adapters 1.3): load exports the scripts wrote with the other library and write its logits.

    python load_exports.py SPECS.json
SPECS.json: a list of {"base": model folder, "library": "peft" | "adapterhub", "export": folder,
"num_labels": n, "inputs": safetensors (input_ids, attention_mask), "out": safetensors to write,
"layer_norms": optional safetensors loaded after the adapter (trained layer norms)}.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

for spec in json.load(open(sys.argv[1])):
    model = AutoModelForSequenceClassification.from_pretrained(spec["base"], num_labels=spec["num_labels"])
    model.config.pad_token_id = AutoTokenizer.from_pretrained(spec["base"]).eos_token_id  # as the scripts set it
    if spec["library"] == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec["export"])
    else:
        import adapters

        adapters.init(model)
        name = model.load_adapter(spec["export"])
        model.set_active_adapters(name)
        if spec.get("layer_norms"):
            missing = model.load_state_dict(load_file(spec["layer_norms"]), strict=False)
            assert not missing.unexpected_keys, missing.unexpected_keys
    with torch.no_grad():
        logits = model.eval()(**load_file(spec["inputs"])).logits
    save_file({"logits": logits.contiguous()}, spec["out"])
print("loaded", len(json.load(open(sys.argv[1]))), "exports")
