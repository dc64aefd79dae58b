"""The model: loading it with its tokenizer, freezing it, and counting, grouping and optimizing what trains."""

import inspect
import os

import torch

from common.errors import UsageError, fail, first_line
from common.tasks import get_task


def load_model(name, task, max_length=128, extra_positions=0, dtype="float32", ignore_mismatched_sizes=False):
    """(tokenizer, classifier) for `task`, the weights in `dtype`; `extra_positions`: a method's virtual tokens."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, logging

    task = get_task(task)
    try:
        config = AutoConfig.from_pretrained(name)
        limit = getattr(config, "max_position_embeddings", None)
        if limit and max_length + extra_positions > limit:
            method = f" + {extra_positions} method positions" if extra_positions else ""
            fix = f"--max_length {limit - extra_positions} or less"
            if limit - extra_positions < 8:  # (the method's prompt or prefix alone is too long)
                fix = f"a prompt or prefix of at most {limit - 8} positions (--num_virtual_tokens, --num_prefix)"
            fail(f"--max_length {max_length}{method} is more than the {limit} positions of '{name}'; use {fix}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError:
            raise  # no such model: said below
        except Exception:  # what a broken or missing tokenizer raises varies by backend
            tokenizer = None
        if tokenizer is None or len(tokenizer) < 2 or not tokenizer("a test")["input_ids"]:
            message = f"'{name}' has no working tokenizer (tokenizer.json, or vocab and merges files): "
            raise UsageError(message + "save the model's tokenizer into the folder (tokenizer.save_pretrained)")
        options = {"num_labels": task.num_labels, "ignore_mismatched_sizes": ignore_mismatched_sizes, "dtype": dtype}
        if not task.is_regression:
            options["id2label"] = dict(enumerate(task.label_names))
            options["label2id"] = {n: i for i, n in enumerate(task.label_names)}
        if getattr(config, "activation_function", None) == "gelu_new":  # GPT-2's: about 8 elementwise kernels
            options["activation_function"] = "gelu_pytorch_tanh"  # the same formula in one kernel (tested)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # (its load report calls the new head "MISSING ... train it")
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(name, output_loading_info=True, **options)
        finally:
            logging.set_verbosity(verbosity)
        new = [k if isinstance(k, str) else k[0] for k in [*info["missing_keys"], *info["mismatched_keys"]]]
        model.new_weights = sorted({k.split(".")[0] for k in new})  # (mismatched: (name, shapes))
        model.pretrained_params = count_params(model)[1]  # what a method's trainable share is a share of
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        needs = "your data" if task.files else f"--task {task.name}"
        message = f"'{name}' has a classification head of another size than {needs} needs ({task.num_labels} outputs)"
        raise UsageError(message + "; pass --ignore_mismatched_sizes to start a new head") from None
    except OSError as e:
        hint = "pass a local model directory, or check the name and your network (HF_HUB_OFFLINE=1 fails fast)"
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            hint = "offline (HF_HUB_OFFLINE=1, or the hub did not answer): pass a local model directory"
        raise UsageError(f"cannot load model '{name}' ({first_line(e)}); {hint}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            fail(f"the tokenizer of '{name}' has neither a pad nor an eos token; add a pad token to it and save it")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def takes_position_ids(model):
    """Whether the model's forward takes position_ids (GPT-2, Llama, BERT do; DistilBERT not)."""
    return "position_ids" in inspect.signature(model.forward).parameters


def head_names(model):
    """The classification head's module names: the top-level modules with parameters beside the backbone (`score`)."""
    return [n for n, c in model.named_children() if c is not model.base_model and any(True for _ in c.parameters())]


def freeze_backbone(model):
    model.requires_grad_(False)
    for name in head_names(model):  # the classification head trains
        model.get_submodule(name).requires_grad_(True)


def checkpoint_activations(model):
    """Gradient checkpointing, non-reentrant: the reentrant one has no gradients past a frozen embedding (#21381)."""
    if hasattr(model, "activation_checkpointing_enable"):  # (its name from transformers 5.2x on)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def upcast_trainable(model, accelerator):
    """The trainable weights, and so AdamW's state, in fp32 whatever --base_dtype; not under DeepSpeed with bf16 or
    fp16, which keeps an fp32 master copy of them in its optimizer."""
    if accelerator.distributed_type == "DEEPSPEED" and accelerator.mixed_precision != "no":
        return
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def precision(accelerator, model, optimizer):
    """What ran in which dtype, for results.json (under DeepSpeed also its gradient accumulation's)."""
    plain = accelerator.unwrap_model(model)
    names = lambda ts: sorted({str(t.dtype).removeprefix("torch.") for t in ts})  # noqa: E731
    inner = optimizer  # the torch optimizer under the wrappers
    while (not isinstance(inner, torch.optim.Optimizer) or not inner.state) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    states = [t for s in getattr(inner, "state", {}).values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    out = {"trainable": names(p for p in plain.parameters() if p.requires_grad)}
    out["frozen"] = names(p for p in plain.parameters() if not p.requires_grad)
    out.update(optimizer_state=names(states), mixed_precision=str(accelerator.mixed_precision))
    if hasattr(model, "get_data_types"):  # a DeepSpeed engine
        out["deepspeed_grad_accum"] = str(model.get_data_types()[1]).removeprefix("torch.")
    return out


def param_dtype(model):
    """The dtype of a method's new parameters: the model's own (under ZeRO-3 DeepSpeed casts nothing added later)."""
    return model.get_input_embeddings().weight.dtype


def count_params(model):
    """(trainable, total), also for ZeRO-3 partitioned parameters (ds_numel is the full size)."""
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trains in sizes if trains), sum(n for n, _ in sizes)


def describe(model):
    """Trainable parameters as a share of the pretrained model's (not of IDPG's frozen encoder), and new modules."""
    trainable = count_params(model)[0]
    base = next(m.pretrained_params for m in model.modules() if hasattr(m, "pretrained_params"))
    new = sorted({n for m in model.modules() for n in getattr(m, "new_weights", [])})
    fresh = f"; new, not in the checkpoint, trained by this run: {', '.join(new)}" if new else ""
    return f"trainable {trainable:,} parameters, {100 * trainable / base:.3g}% of the model's {base:,}{fresh}"


def adamw(groups, lr, eps, accelerator):
    """AdamW, fused on GPUs but not over FSDP2's shards, where it leaks host memory every step (pytorch #188174);
    under ZeRO-Offload DeepSpeed's CPU Adam, several times faster there, where its C++ op builds."""
    plugin = accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin else {}
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, lr=lr, eps=eps, adamw_mode=True)
        except Exception as e:  # no compiler, no headers: what a failed build raises varies
            first = first_line(e, 120)
            accelerator.print(f"DeepSpeed's CPU Adam did not build ({type(e).__name__}: {first}); torch's AdamW runs")
    fused = torch.cuda.is_available() and accelerator.distributed_type != "FSDP"
    return torch.optim.AdamW(groups, lr=lr, eps=eps, fused=fused)


def shape(param):
    """A parameter's shape, also when ZeRO-3 has partitioned it (its .shape is then [0])."""
    return getattr(param, "ds_shape", param.shape)


def optimizer_groups(params, weight_decay, lr=None):
    """AdamW groups of the trainable ones among `params`: weight decay on matrices only, not on biases and norms; `lr`:
    their own learning rate (None: the optimizer's)."""
    params = [p for p in params if p.requires_grad]
    own = {} if lr is None else {"lr": lr}
    groups = [dict(params=[p for p in params if len(shape(p)) >= 2], weight_decay=weight_decay, **own)]
    groups.append(dict(params=[p for p in params if len(shape(p)) < 2], weight_decay=0.0, **own))
    return [g for g in groups if g["params"]]
