"""The trained result in the formats other libraries load, from tensors in memory.

Each function writes one format on the main process (the scripts gather the tensors first) and
every file through common.outputs (a temporary file renamed into place). `head` is always the
classification head's tensors by their names in the transformers model ("score.weight").

transformers folder (`transformers_folder`): model.safetensors, config.json (the task's label
    names) and the tokenizer: AutoModelForSequenceClassification.from_pretrained and
    pipeline("text-classification") open it. Full fine-tuning's OUTPUT_DIR/model, LoRA's
    --merge_and_save.
peft LoRA (`peft_lora`): adapter_config.json and adapter_model.safetensors for
    PeftModel.from_pretrained(base, path). k adapted slices of a fused q|k|v projection, each of
    rank r, are one pair of rank k r: A stacked, B placed block by block (zeros for the slices left
    alone), alpha scaled by k so that alpha / rank stays the same (rank_pattern, alpha_pattern).
peft prompt tuning (`peft_prompt`): the prompt as `prompt_embeddings` and the head. peft's
    classifier reads the last position: give it unpadded or left-padded rows.
peft prefix tuning (`peft_prefix`): the computed key/value pairs (no MLP: prefix_projection off)
    as `prompt_embeddings`, (p, layers x 2 x key/value heads x head_dim), and the head; peft 0.17
    loads it (peft 0.21 refuses prefix tuning on transformers 5.2x models).
AdapterHub (`adapterhub`): adapter_config.json, head_config.json, pytorch_adapter.bin and
    pytorch_model_head.bin as `adapters` 1.3 saves them (model.load_adapter(path), then
    set_active_adapters), for GPT-2 and BERT-style models. The .bin files are pickles, as
    AdapterHub writes them. Trained layer norms have no place in that format: they go to
    layer_norms.safetensors beside it (load them with load_state_dict(..., strict=False)).
"""

import json
import os
import re
import tempfile

import torch
from safetensors.torch import save_file

from common.checkpoint import atomic_save_tensors
from common.outputs import atomic_write_text, replacing


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def head_of(trained, heads, inside=""):
    """The head's tensors among `trained`, named as in the transformers model: `heads` are its
    module names ("score"), `inside` the wrapper's attribute that holds the model ("model.")."""
    head = {}
    for name, tensor in trained.items():
        if name.startswith(inside) and name[len(inside) :].split(".")[0] in heads:
            head[name[len(inside) :]] = tensor
    return head


def transformers_folder(path, state, config, tokenizer):
    """A standard transformers model folder; each file is written beside, then renamed into it."""
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path, prefix=".tmp-") as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors")
        )
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(path, name))


def peft_lora(path, layers, trained, head, base_model):
    """`layers` {module name: LoRA layer} (its r, scale, dropout, slices, part, n_parts and
    conv1d), `trained` the trained tensors with their pairs as lora_A.i / lora_B.i."""
    state = {f"base_model.model.{n}": t for n, t in head.items()}
    ranks = {}
    any_layer = next(iter(layers.values()))
    r = any_layer.r
    alpha = any_layer.scale * r
    dropout = getattr(any_layer.dropout, "p", 0.0)  # nn.Identity when there is none
    conv1d = False
    for name, m in layers.items():
        k = len(m.slices)
        A = torch.cat([trained[f"{name}.lora_A.{i}"] for i in range(k)])
        B = torch.zeros(m.part * m.n_parts, r * k, dtype=A.dtype)
        for i, s in enumerate(m.slices):
            B[s * m.part : (s + 1) * m.part, i * r : (i + 1) * r] = trained[f"{name}.lora_B.{i}"]
        state[f"base_model.model.{name}.lora_A.weight"] = A
        state[f"base_model.model.{name}.lora_B.weight"] = B
        ranks[name] = k
        conv1d = m.conv1d
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": list(ranks),
        "fan_in_fan_out": conv1d,  # GPT-2's Conv1D stores weights [in, out]
        "bias": "none",
        "modules_to_save": sorted({n.split(".")[0] for n in head}),
        "rank_pattern": {n: r * k for n, k in ranks.items()},
        "alpha_pattern": {n: alpha * k for n, k in ranks.items()},
        "inference_mode": True,
    }
    write_json(os.path.join(path, "adapter_config.json"), config)
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"), state)


def peft_prompt(path, prompt, head, config, base_model):
    """`prompt` t x d; `config` the transformers model's."""
    peft_config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "modules_to_save": sorted({n.split(".")[0] for n in head}),
        "inference_mode": True,
    }
    write_json(os.path.join(path, "adapter_config.json"), peft_config)
    tensors = {"prompt_embeddings": prompt, **{f"base_model.{n}": t for n, t in head.items()}}
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"), tensors)


def peft_prefix(path, pairs, head, base_model):
    """`pairs` (layers, 2, key/value heads, p, head_dim): every layer's keys and values."""
    layers, _, heads, p, head_dim = pairs.shape
    token_dim = heads * head_dim  # peft sizes the pairs by the key/value heads
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": p,
        "token_dim": token_dim,
        "encoder_hidden_size": token_dim,
        "num_layers": layers,
        "num_attention_heads": heads,
        "num_transformer_submodules": 1,
        "prefix_projection": False,
        "modules_to_save": sorted({n.split(".")[0] for n in head}),
        "inference_mode": True,
    }
    write_json(os.path.join(path, "adapter_config.json"), config)
    embeddings = pairs.permute(3, 0, 1, 2, 4).reshape(p, -1)  # (p, layers x 2 x heads x head_dim)
    tensors = {"prompt_embeddings": embeddings, **{f"base_model.{n}": t for n, t in head.items()}}
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"), tensors)


# AdapterHub's names (adapters 1.3): the layers' path in the model, and its name for each place an
# adapter wraps in a layer (train_adapter.py's LAYOUT). Other model types are not exported.
ADAPTERHUB = {
    "gpt2": (
        "transformer.h",
        {
            "attn.c_proj": "attention_adapters",
            "mlp.c_proj": "output_adapters",
            "": "output_adapters",
        },
    ),
    **{
        t: (
            f"{t}.encoder.layer",
            {
                "attention.output.dense": "attention.output",
                "output.dense": "output",
                "output.LayerNorm": "output",
            },
        )
        for t in ("bert", "roberta")
    },
}


def adapterhub_config(variant, reduction_factor, ln_before=False):
    """AdapterHub's configuration of our adapters: Houlsby is its DoubleSeqBnConfig, Pfeiffer its
    SeqBnConfig, with every field as adapters 1.3 writes it."""
    houlsby = variant == "houlsby"
    return {
        "adapter_residual_before_ln": False,
        "cross_adapter": False,
        "dropout": 0.0,
        "factorized_phm_W": True,
        "factorized_phm_rule": False,
        "hypercomplex_nonlinearity": "glorot-uniform",
        "init_weights": "bert",
        "init_weights_seed": None,
        "inv_adapter": None,
        "inv_adapter_reduction_factor": None,
        "is_parallel": False,
        "learn_phm": True,
        "leave_out": [],
        "ln_after": False,
        "ln_before": ln_before,
        "mh_adapter": houlsby,
        "non_linearity": "swish" if houlsby else "relu",
        "original_ln_after": True,
        "original_ln_before": not houlsby,
        "output_adapter": True,
        "phm_bias": True,
        "phm_c_init": "normal",
        "phm_dim": 4,
        "phm_init_range": 0.0001,
        "phm_layer": False,
        "phm_rank": 1,
        "reduction_factor": reduction_factor,
        "residual_before_ln": True,
        "scaling": 1.0,
        "shared_W_phm": False,
        "shared_phm_rule": True,
        "stochastic_depth": 0.0,
        "use_gating": False,
    }


def class_name(model):
    """The model's class name; FSDP2 gives a sharded model a class of its own, FSDP<name>, that
    derives from it."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule)).__name__


def adapterhub(path, trained, head, model, variant, m, base_model, name="glue"):
    """`trained` the trained tensors (ours: LAYERS.i.PLACE.adapter.down.weight ...), `model` the
    transformers model (its type, sizes and labels). Returns how many tensors went to
    layer_norms.safetensors (0: the export is the whole trained state)."""
    layers, places = ADAPTERHUB[model.config.model_type]
    ours = re.compile(
        rf"{re.escape(layers)}\.(\d+)\.(?:(.*)\.)?adapter\.(norm|down|up)\.(weight|bias)$"
    )
    normed = any(ours.match(k) and ours.match(k)[3] == "norm" for k in trained)  # ln_before
    # AdapterHub's adapter_down is Sequential([LayerNorm (with ln_before), Linear, activation]);
    # with ln_before it also holds the LayerNorm as adapter_norm_before.
    theirs = {
        "norm": ["adapter_norm_before", "adapter_down.0"],
        "up": ["adapter_up"],
        "down": ["adapter_down.1" if normed else "adapter_down.0"],
    }
    state = {}
    norms = {}
    for key, tensor in trained.items():
        found = ours.match(key)
        if found:
            layer, place, part, kind = found.groups()
            for module in theirs[part]:
                state[f"{layers}.{layer}.{places[place or '']}.adapters.{name}.{module}.{kind}"] = (
                    tensor
                )
        elif key not in head:
            norms[key] = tensor
    d = model.config.hidden_size
    about = {
        "hidden_size": d,
        "model_class": class_name(model),
        "model_name": base_model,
        "model_type": model.config.model_type,
        "version": "adapters.1.3.0",
    }
    write_json(
        os.path.join(path, "adapter_config.json"),
        {"config": adapterhub_config(variant, d / m, normed), "name": name, **about},
    )
    labels = {"label2id": model.config.label2id, "num_labels": model.config.num_labels}
    write_json(
        os.path.join(path, "head_config.json"), {"config": None, "name": None, **labels, **about}
    )
    for file, tensors in (("pytorch_adapter.bin", state), ("pytorch_model_head.bin", head)):
        with replacing(os.path.join(path, file)) as tmp:
            torch.save(tensors, tmp)
    if norms:
        atomic_save_tensors(os.path.join(path, "layer_norms.safetensors"), norms)
    return len(norms)


def load_trained(output_dir, best=False):
    """(tokenizer, model) of a finished run, rebuilt from OUTPUT_DIR/args.json by the run's own
    script (its add_method, with the run's flags) and loaded with its trained weights
    (`best`: best/trainable.safetensors), in eval mode on the CPU: ready for model(**batch) on
    batches of common.data.Collator, for every script and variant. The base model (and IDPG's
    encoder) must be where the run found them."""
    import importlib

    from common.checkpoint import load_trainable
    from common.model import load_model
    from common.outputs import read_json

    flags = read_json(os.path.join(output_dir, "args.json"))
    method = flags.get("method") or read_json(os.path.join(output_dir, "results.json"))["method"]
    script = importlib.import_module(f"train_{method}")
    tokenizer, model = load_model(**flags)
    model = script.add_method(model, tokenizer, **flags)
    weights = os.path.join(output_dir, "best" if best else "", "trainable.safetensors")
    load_trainable(model, weights)
    return tokenizer, model.eval()
