"""Our adapters and prefix tuning against AdapterHub `adapters` 1.3 and peft's prefix tuning, at the
same weights, run in their own environment (transformers 4.57, tests/reference_env.py)."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from tests.reference.env import make_reference
from train_adapter import add_adapters
from train_prefix import PrefixTuning

pytestmark = pytest.mark.reference  # (a venv of their own: python -m pytest -m reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory.mktemp("reference"))


# AdapterHub's names -> ours (train_adapter.LAYOUT)
RENAMES = {  # applied after dropping "adapters.ref."
    ("gpt2", "houlsby"): [
        (r"attention_adapters\.", "attn.c_proj.adapter."),
        (r"output_adapters\.", "mlp.c_proj.adapter."),
    ],
    ("gpt2", "pfeiffer"): [(r"output_adapters\.", "adapter.")],
    ("gpt2", "pfeiffer-ln"): [(r"output_adapters\.", "adapter.")],
    ("bert", "houlsby"): [
        (r"(\d+)\.attention\.output\.adapter_", r"\1.attention.output.dense.adapter.adapter_"),
        (r"(\d+)\.output\.adapter_", r"\1.output.dense.adapter.adapter_"),
    ],
    ("bert", "pfeiffer"): [(r"(\d+)\.output\.adapter_", r"\1.output.LayerNorm.adapter.adapter_")],
    ("bert", "pfeiffer-ln"): [(r"(\d+)\.output\.adapter_", r"\1.output.LayerNorm.adapter.adapter_")],
}


def ours(name, kind, variant):
    name = name.replace("adapters.ref.", "")
    for pattern, repl in RENAMES[(kind, variant)]:
        name = re.sub(pattern, repl, name)
    # adapter_down is [LayerNorm (ln_before), Linear, activation]; the LayerNorm is also adapter_norm_before
    down = "adapter_down.1." if variant.endswith("-ln") else "adapter_down.0."
    name = name.replace("adapter_norm_before.", "norm.")
    return name.replace(down, "down.").replace("adapter_up.", "up.")


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer", "pfeiffer-ln"])
def test_adapters_equal_adapterhub(reference, kind, variant):
    facts = json.load(open(reference / "facts.json"))
    assert (facts["adapters"], facts["transformers"]) == ("1.3.0", "4.57.6")
    inputs = load_file(reference / "inputs.safetensors")
    theirs = load_file(reference / f"{kind}-{variant}-logits.safetensors")["logits"]
    model = AutoModelForSequenceClassification.from_pretrained(reference / f"{kind}-model").eval()
    with torch.no_grad():
        base = model(**inputs).logits
    add_adapters(model, variant.removesuffix("-ln"), 8, train_layer_norms=False, ln_before=variant.endswith("-ln"))
    weights = {ours(n, kind, variant): t for n, t in load_file(reference / f"{kind}-{variant}.safetensors").items()}
    params = dict(model.named_parameters())
    assert set(weights) == {n for n in params if ".adapter." in n}
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
        logits = model(**inputs).logits
    assert (theirs - base).abs().max() > 1e-3  # the reference adapters are active and not near-identity
    torch.testing.assert_close(logits, theirs, atol=1e-5, rtol=0)


# Llama: grouped key/value heads, rotary positions
@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_prefix_equals_peft(reference, kind):
    inputs = load_file(reference / "inputs.safetensors")
    ref = load_file(reference / f"{kind}-prefix.safetensors")
    model = PrefixTuning(
        AutoModelForSequenceClassification.from_pretrained(reference / f"{kind}-model"), 5, projection=False
    ).eval()
    with torch.no_grad():
        model.pairs.copy_(ref["prefix"])
        logits = model(**inputs).logits
        base = model.model(**inputs).logits
    assert (ref["logits"] - base).abs().max() > 1e-3
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
