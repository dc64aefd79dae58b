"""The model: loading it with its tokenizer, freezing it, counting and grouping what trains, and running it with
vectors put before the input embeddings (a prompt), with the mask and positions extended."""

import inspect
import os

import torch

from common.errors import UsageError
from common.tasks import get_task


def load_tokenizer(name):
    """The tokenizer of a model folder or hub id; a UsageError when the folder has none that works (transformers then
    builds an empty one, or fails deep inside the backend)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError:
        raise  # no such model: load_model says so
    except Exception:  # what a broken or missing tokenizer raises varies by backend
        tokenizer = None
    if tokenizer is None or len(tokenizer) < 2 or not tokenizer("a test")["input_ids"]:
        raise UsageError(
            f"'{name}' has no working tokenizer (tokenizer.json, or vocab and merges files): "
            "save the model's tokenizer into the folder (tokenizer.save_pretrained)"
        )
    return tokenizer


def load_model(
    model_name_or_path,
    task,
    max_length=128,
    extra_positions=0,
    dtype="float32",
    ignore_mismatched_sizes=False,
    fast_gelu=True,
):
    """Tokenizer and sequence-classification model for the GLUE `task` (keywords: the flags of the same names), with a
    pad token set on both (GPT-2 has none: it pads with eos; padded positions are masked). The weights load in `dtype`
    whatever the checkpoint's (hub decoders ship bf16; transformers would keep that). `extra_positions`: the positions
    a method puts before the input (virtual tokens). `fast_gelu`: GPT-2's gelu_new runs as about 8 elementwise
    kernels; gelu_pytorch_tanh is the same formula in one (logits within 1e-6, tested), so GPT-2 models load with
    it."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    name = model_name_or_path
    task = get_task(task)
    try:
        config = AutoConfig.from_pretrained(name)
        limit = getattr(config, "max_position_embeddings", None)
        if limit and max_length + extra_positions > limit:
            method = f" + {extra_positions} method positions" if extra_positions else ""
            fix = f"--max_length {limit - extra_positions} or less"
            if limit - extra_positions < 8:  # (the method's prompt or prefix alone is too long)
                fix = f"a prompt or prefix of at most {limit - 8} positions (--num_virtual_tokens, --num_prefix)"
            raise UsageError(
                f"--max_length {max_length}{method} is more than the {limit} positions of '{name}'; use {fix}"
            )
        tokenizer = load_tokenizer(name)
        options = {"num_labels": task.num_labels, "ignore_mismatched_sizes": ignore_mismatched_sizes}
        options["dtype"] = getattr(torch, dtype)
        if not task.is_regression:
            options["id2label"] = dict(enumerate(task.label_names))
            options["label2id"] = {n: i for i, n in enumerate(task.label_names)}
        if fast_gelu and getattr(config, "activation_function", None) == "gelu_new":
            options["activation_function"] = "gelu_pytorch_tanh"
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # (its load report calls the new head "MISSING ... train it")
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(name, output_loading_info=True, **options)
        finally:
            transformers.logging.set_verbosity(verbosity)
        new = [k if isinstance(k, str) else k[0] for k in [*info["missing_keys"], *info["mismatched_keys"]]]
        model.new_weights = sorted({k.split(".")[0] for k in new})  # (mismatched: (name, shapes))
        model.pretrained_params = count_params(model)[1]  # what a method's trainable share is a share of
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        needs = "your data" if task.files else f"--task {task.name}"
        raise UsageError(
            f"'{name}' has a classification head of another size than {needs} needs "
            f"({task.num_labels} outputs); pass --ignore_mismatched_sizes to start a new head"
        ) from None
    except OSError as e:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            hint = "offline (HF_HUB_OFFLINE=1, or the hub did not answer): pass a local model directory"
        else:
            hint = "pass a local model directory, or check the name and your network (HF_HUB_OFFLINE=1 fails fast)"
        first = str(e).strip().splitlines()[0][:160]
        raise UsageError(f"cannot load model '{name}' ({first}); {hint}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"the tokenizer of '{name}' has neither a pad nor an eos token; add a pad token to it and save it"
            )
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def takes_position_ids(model):
    """Whether the model's forward takes position_ids (GPT-2, Llama, BERT do; DistilBERT not)."""
    return "position_ids" in inspect.signature(model.forward).parameters


def head_names(model):
    """The classification head's module names: the top-level modules beside the backbone that hold parameters (GPT-2
    `score`, BERT `classifier`)."""
    return [n for n, c in model.named_children() if c is not model.base_model and any(True for _ in c.parameters())]


def freeze_backbone(model):
    """Freeze every weight, then unfreeze the classification head. Returns the head's names."""
    model.requires_grad_(False)
    heads = head_names(model)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    return heads


def checkpoint_activations(model):
    """Gradient checkpointing: each layer keeps only its input and recomputes its activations in the backward pass
    (less memory, about a third more time). Non-reentrant: the reentrant form gives the layers no gradients when
    their inputs do not require any, as with a frozen embedding (transformers #21381)."""
    if hasattr(model, "activation_checkpointing_enable"):  # (its name from transformers 5.2x on)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def upcast_trainable(model, accelerator):
    """The trainable weights in fp32, and so AdamW's state, whatever the dtype the model loaded in (--base_dtype: the
    frozen weights stay in it). DeepSpeed with bf16 or fp16 keeps every weight in that dtype and an fp32 master copy
    of the trained ones in its optimizer: there they are left to it."""
    if accelerator.distributed_type == "DEEPSPEED" and accelerator.mixed_precision != "no":
        return
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def precision(accelerator, model, optimizer):
    """What ran in which dtype, for results.json: the trainable and the frozen weights as the model holds them, the
    optimizer's state, the compute (accelerate's mixed precision) and, under DeepSpeed, its gradient accumulation."""
    plain = accelerator.unwrap_model(model)
    names = lambda ts: sorted({str(t.dtype).removeprefix("torch.") for t in ts})  # noqa: E731
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) or not inner.state:  # the torch optimizer under the wrappers
        if not hasattr(inner, "optimizer"):
            break
        inner = inner.optimizer
    states = [t for s in getattr(inner, "state", {}).values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    out = {
        "trainable": names(p for p in plain.parameters() if p.requires_grad),
        "frozen": names(p for p in plain.parameters() if not p.requires_grad),
        "optimizer_state": names(states),
        "mixed_precision": str(accelerator.mixed_precision),
    }
    if hasattr(model, "get_data_types"):  # a DeepSpeed engine
        out["deepspeed_grad_accum"] = names([torch.empty(0, dtype=model.get_data_types()[1])])[0]
    return out


def param_dtype(model):
    """The dtype new parameters of a method must have: the model's own. Under ZeRO-3 with bf16 the weights load already
    partitioned in bf16 and DeepSpeed casts nothing added after loading."""
    return model.get_input_embeddings().weight.dtype


def count_params(model):
    """(trainable, total), also for ZeRO-3 partitioned parameters (ds_numel is the full size)."""
    params = list(model.parameters())
    sizes = [getattr(p, "ds_numel", p.numel()) for p in params]
    return sum(n for n, p in zip(sizes, params) if p.requires_grad), sum(sizes)


def describe(model):
    """How many parameters train, as a share of the pretrained model's (its new head included: a separate frozen
    encoder, as IDPG's, is not counted), and which modules the checkpoint did not hold (a new head), as a line."""
    trainable, _ = count_params(model)
    pretrained = next(m.pretrained_params for m in model.modules() if hasattr(m, "pretrained_params"))
    new = sorted({n for m in model.modules() for n in getattr(m, "new_weights", [])})
    fresh = f"; new, not in the checkpoint, trained by this run: {', '.join(new)}" if new else ""
    share = f"{100 * trainable / pretrained:.3g}% of the model's {pretrained:,}"
    return f"trainable {trainable:,} parameters, {share}{fresh}"


def adamw(groups, lr, eps, accelerator):
    """AdamW over `groups` (optimizer_groups). On GPUs its fused kernel (one kernel for every parameter, not several
    per tensor), but not over FSDP2's sharded parameters, where it leaks host memory every step (pytorch #188174):
    there the foreach kernels. Under ZeRO-Offload (the optimizer runs on the CPU) DeepSpeed's CPU Adam, several times
    faster there than torch's, where its C++ op builds; else torch's, with a line that says why."""
    plugin = accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin else {}
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=lr, eps=eps, adamw_mode=True)
        except Exception as e:  # no compiler, no headers: what a failed build raises varies
            first = (str(e).strip().splitlines() or [""])[0][:120]
            accelerator.print(f"DeepSpeed's CPU Adam did not build ({type(e).__name__}: {first}); torch's AdamW runs")
    fused = torch.cuda.is_available() and accelerator.distributed_type != "FSDP"
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=fused)


def shape(param):
    """A parameter's shape, also when ZeRO-3 has partitioned it (its .shape is then [0])."""
    return getattr(param, "ds_shape", param.shape)


def optimizer_groups(params, weight_decay, lr=None):
    """AdamW parameter groups of the trainable ones among `params`: weight decay on matrices only, none on biases and
    norms; `lr`: their own learning rate (None: the optimizer's). Shapes are read from ds_shape when ZeRO-3 has
    partitioned a parameter (its .shape is then [0]); empty groups are left out."""
    params = [p for p in params if p.requires_grad]
    own = {} if lr is None else {"lr": lr}
    matrices = [p for p in params if len(shape(p)) >= 2]
    others = [p for p in params if len(shape(p)) < 2]
    groups = [
        {"params": matrices, "weight_decay": weight_decay, **own},
        {"params": others, "weight_decay": 0.0, **own},
    ]
    return [g for g in groups if g["params"]]
