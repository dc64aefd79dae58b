"""Prefix tuning: learn key/value vectors that every layer's attention reads before the input.

Li and Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
https://arxiv.org/abs/2101.00190

Prompt tuning (train_prompt.py) adds vectors at the input only. Prefix tuning gives every
attention layer its own p trained (key, value) pairs, as if p tokens had been read before the
input: each token of the input attends to them in every layer. The backbone is frozen.

    layer l:  keys   [K_l^prefix (p) | K_l(x)]     the prefix is handed to the model as a cache
              values [V_l^prefix (p) | V_l(x)]     (a DynamicCache built every forward)

Training the pairs directly is unstable, so (as in the paper) they are computed from a small
embedding through an MLP, `--prefix_projection` (on by default):
    E (p x d) -> Linear(d, 512) -> Tanh -> Linear(512, 2 x layers x d) -> the pairs of every layer
Only the computed pairs are needed at inference (OUTPUT_DIR/prefix.safetensors); the checkpoint
keeps the MLP so that training can resume.

Where the prefix starts (`--prefix_init`). `text` (the default, as the paper's section 7.2 found best): the pairs
start as the keys and values the frozen model itself computes for p tokens of a real text (`--prefix_init_text`),
and the MLP (its last layer zero at first) learns the change:
    pairs = KV_model(text) + MLP(E)
so the input first reads an ordinary context. It matters in Llama-style models, whose first token is an attention
sink: random pairs in front of it take that role badly, and a text's pairs give the sink back to its first token.
The text's pairs are computed once, in the first forward (no gradient), and need a model that returns a cache.
`random`: N(0, 0.02^2) embeddings through a default-initialised MLP, as peft does (and the equivalence tests).

    python train_prefix.py --task rte --num_prefix 10
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prefix.py --task rte

Models whose attention takes a cache: decoders (GPT-2, Llama, Qwen, ...) and BERT-style encoders
(BERT, RoBERTa, MiniLM, ...); not DistilBERT or DeBERTa.
"""

from common.args import base_parser, check_args, require
from common.errors import fail, parse_command_line


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3)
    add = parser.add_argument
    add("--num_prefix", type=int, default=10, help="p, the key/value pairs each layer reads first")
    add(
        "--no_prefix_projection", dest="prefix_projection", action="store_false",
        help="train the pairs directly, not through the MLP",
    )  # fmt: skip
    add("--prefix_hidden", type=int, default=None, help="the MLP's hidden size; none: 512")
    add("--prefix_init", choices=["text", "random"], default="text", help="where the pairs start")
    add(
        "--prefix_init_text", default="Read the text that follows and say what it expresses.",
        help="text: its first p tokens start the prefix",
    )  # fmt: skip
    add("--prefix_learning_rate", type=float, default=1e-3, help="the prefix's")
    args = check_args(parser, argv, "prefix")
    require(parser, args, "at least 1", "num_prefix", "prefix_hidden")
    require(parser, args, "positive", "prefix_learning_rate")
    if args.gradient_checkpointing:
        fail(
            "prefix tuning hands its pairs to the model as a cache, which the recomputation of "
            "--gradient_checkpointing would extend a second time (peft refuses it too); train without it"
        )
    if args.prefix_hidden is not None and not args.prefix_projection:
        fail("--prefix_hidden sizes the projection MLP; drop it or --no_prefix_projection")
    args.prefix_hidden = args.prefix_hidden or 512
    return args


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import inspect
import json
import math
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, get_scheduler

from common import checkpoint, data, evaluation, loop, models, results
from common.checkpoint import whole
from common.errors import run_main, stop_on_signals, usage_errors
from common.models import param_dtype
from common.outputs import atomic_write_text
from common.prompts import split_params, unsharded


def cache_name(model):
    """The base model's keyword for past keys/values (transformers 5.2x renamed past_key_values to cache), or None
    when its attention reads no cache (DistilBERT, DeBERTa, ...)."""
    names = inspect.signature(model.base_model.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def check_supported(model):
    """A ValueError at start, not a shape error mid-step, for a model this cannot tune."""
    if cache_name(model) is None:
        raise ValueError(
            f"prefix tuning here needs a model whose attention reads a cache (GPT-2, Llama, BERT, RoBERTa, ...); "
            f"'{model.config.model_type}' is not one: use train_prompt.py, train_lora.py or train_adapter.py"
        )


def prefix_text_ids(tokenizer, text, p):
    """The first p token ids of `text` (repeated as p needs): where --prefix_init text starts."""
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError("--prefix_init_text gives no tokens: pass a sentence, or --prefix_init random")
    return (ids * (p // len(ids) + 1))[:p]


def is_encoder(model):
    """BERT-style (a masked-LM model type, no causal-only decoder): its forward returns no cache."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class PrefixTuning(nn.Module):
    """A frozen sequence classifier whose attention layers read p trained key/value pairs first."""

    def __init__(self, model, p=10, projection=True, hidden=512, text_ids=None):
        super().__init__()
        self.model, self.config, self.p = model, model.config, p  # (config: DeepSpeed sizes its buckets from it)
        self.cache_name = cache_name(model)
        cfg = model.config
        self.layers, d = cfg.num_hidden_layers, cfg.hidden_size
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
        width = 2 * self.layers * self.heads * self.head_dim
        dtype = param_dtype(model)
        if projection:
            self.embedding = nn.Parameter(torch.randn(p, d, dtype=dtype) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width)).to(dtype)
        else:
            self.pairs = nn.Parameter(torch.randn(p, width, dtype=dtype) * 0.02)
        # --prefix_init text: the pairs are the model's own for these p token ids plus a learned
        # change, which starts at zero (the MLP's last layer, or the directly trained pairs).
        self.text_pairs = None  # computed in the first forward, where ZeRO-3 can gather the weights
        if text_ids is not None:
            self.register_buffer("text_ids", torch.as_tensor(text_ids)[:p].reshape(1, p), persistent=False)
            with torch.no_grad():
                for zero in [*self.mlp[-1].parameters()] if projection else [self.pairs]:
                    zero.zero_()

    def model_pairs(self):
        """The frozen model's keys and values for text_ids, (layers, 2, heads, p, head_dim), computed once with
        dropout off and no gradient (every rank runs it: under ZeRO-3 a forward gathers the layers)."""
        if self.text_pairs is None:
            training = self.model.training
            with torch.no_grad():
                out = self.model.eval().base_model(input_ids=self.text_ids, use_cache=True)
            self.model.train(training)
            cache = out.get("cache", out.get("past_key_values"))  # the output's name in transformers 5.2x, 4.x
            if cache is None:
                raise ValueError(
                    f"'{self.config.model_type}' returns no key/value cache to start the prefix from: use "
                    "--prefix_init random"
                )
            self.text_pairs = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
        return self.text_pairs

    def prefix(self):
        """(layers, 2, heads, p, head_dim): the keys and values of every layer."""
        pairs = self.mlp(self.embedding) if hasattr(self, "mlp") else self.pairs
        pairs = pairs.view(self.p, self.layers, 2, self.heads, self.head_dim).permute(1, 2, 3, 0, 4)
        return pairs + self.model_pairs() if hasattr(self, "text_ids") else pairs

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, **kwargs):
        batch = input_ids.shape[0]
        kv = self.prefix().to(param_dtype(self.model))
        cache = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])
        mask = torch.cat([attention_mask.new_ones(batch, self.p), attention_mask], 1)
        if position_ids is not None:  # the input comes after the prefix, as after p read tokens
            kwargs["position_ids"] = position_ids + self.p
        kwargs[self.cache_name] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=True, **kwargs)


def add_method(model, tokenizer, num_prefix, prefix_projection, prefix_hidden, prefix_init, prefix_init_text):
    """Prefix tuning on a loaded model as the flags of the same names ask (predict.py rebuilds a run with this). An
    encoder starts at random (it returns no cache)."""
    check_supported(model)
    text_ids = None
    if prefix_init == "text" and not is_encoder(model):
        text_ids = prefix_text_ids(tokenizer, prefix_init_text, num_prefix)
    models.freeze_backbone(model)
    return PrefixTuning(model, num_prefix, prefix_projection, prefix_hidden, text_ids)


def computed_pairs(accelerator, model):
    """What inference needs: the pairs the prefix computes, (layers, 2, heads, p, head_dim), on the
    CPU (gathered under ZeRO-3 and FSDP2: every rank calls this)."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    with torch.no_grad(), whole(split_params(unwrapped, unwrapped.model)[0]), unsharded(unwrapped):
        return unwrapped.prefix().detach().cpu().clone()


def peft_export(path, pairs, head, base_model):
    """OUTPUT_DIR/peft: the computed key/value pairs (no MLP: prefix_projection off) and the head (by its names in
    the transformers model) as a peft adapter, for PeftModel.from_pretrained(base, path). `pairs` (layers, 2,
    key/value heads, p, head_dim) become `prompt_embeddings`, (p, layers x 2 x heads x head_dim); peft 0.17 loads
    it (peft 0.21 refuses prefix tuning on transformers 5.2x models)."""
    layers, _, heads, p, head_dim = pairs.shape
    token_dim = heads * head_dim  # peft sizes the pairs by the key/value heads
    config = {
        "peft_type": "PREFIX_TUNING", "task_type": "SEQ_CLS", "base_model_name_or_path": base_model,
        "num_virtual_tokens": p, "token_dim": token_dim, "encoder_hidden_size": token_dim, "num_layers": layers,
        "num_attention_heads": heads, "num_transformer_submodules": 1, "prefix_projection": False,
        "modules_to_save": sorted({n.split(".")[0] for n in head}), "inference_mode": True,
    }  # fmt: skip
    atomic_write_text(f"{path}/adapter_config.json", json.dumps(config, indent=2) + "\n")
    embeddings = pairs.permute(3, 0, 1, 2, 4).reshape(p, -1)
    tensors = {"prompt_embeddings": embeddings, **{f"base_model.{n}": t for n, t in head.items()}}
    checkpoint.atomic_save_tensors(f"{path}/adapter_model.safetensors", tensors)


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer and the model with the method added
    (the backbone frozen), as the flags ask; the trainable weights in fp32 (AdamW's state too), whatever the
    checkpoint's dtype. Also the head's module names."""
    task, splits = data.load_data(  # GLUE's, or your own data's files, every one read and checked
        accelerator, args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file, text_columns=args.text_columns,
        label_column=args.label_column, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half, seed=args.seed, do_predict=args.do_predict,
    )  # fmt: skip
    tokenizer, model = models.load_model(
        args.model_name_or_path, task, args.max_length, extra_positions=args.num_prefix, dtype=args.base_dtype,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
    )  # fmt: skip

    # Prefix tuning: freeze the backbone; every attention layer reads p trained key/value pairs first.
    heads = models.head_names(model)
    with usage_errors():  # a model whose attention reads no cache, an empty text: one line
        model = add_method(
            model, tokenizer, num_prefix=args.num_prefix, prefix_projection=args.prefix_projection,
            prefix_hidden=args.prefix_hidden, prefix_init=args.prefix_init, prefix_init_text=args.prefix_init_text,
        )  # fmt: skip
    if args.prefix_init == "text" and not hasattr(model, "text_ids"):
        accelerator.print(f"prefix: random init ({model.config.model_type} returns no cache)")
    if args.gradient_checkpointing:  # activations recomputed in the backward pass: less memory, more time
        models.checkpoint_activations(model.model)
    models.upcast_trainable(model, accelerator)
    return task, splits, tokenizer, model, heads


def main(args):
    # (under DeepSpeed, its JSON found from any folder; on a CPU without GPUs, FSDP2 over gloo: make_accelerator says)
    accelerator = loop.make_accelerator(
        args.output_dir, args.max_grad_norm, args.ddp_timeout, args.with_tracking, args.report_to, args.torch_compile
    )
    # Prefix tuning: its exports
    with loop.OutputDir(  # claimed: OUTPUT_DIR's lock held until this block ends, the checkpoint to resume checked
        accelerator, "prefix", vars(args), output_dir=args.output_dir, outputs=["prefix.safetensors", "peft"],
        overwrite=args.overwrite_output_dir, resume=args.resume_from_checkpoint, predict=args.do_predict,
        tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model, heads = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        accelerator.print(models.describe(model))

        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, position_ids=True, task=task, max_length=args.max_length,
            per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        prefix, head = split_params(model, model.model)  # Prefix tuning: the prefix (embedding, MLP) has its rate
        groups = models.optimizer_groups(prefix, args.weight_decay, lr=args.prefix_learning_rate)
        groups += models.optimizer_groups(head, args.weight_decay)
        optimizer = models.adamw(groups, args.learning_rate, args.adam_epsilon, accelerator)
        state = loop.TrainState(  # what the loop carries: the step, the log, the best evaluation, ...
            accelerator.device,
            *loop.count_steps(len(train_loader), accelerator, args.num_train_epochs, args.max_train_steps),
        )
        stop_on_signals(state.note)  # Ctrl-C and SIGTERM say where the last checkpoint is
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, state.max_steps)
        model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
            model, optimizer, train_loader, scheduler, *eval_loaders.values()
        )
        eval_loaders = dict(zip(eval_loaders, loaders))
        if run_dir.resume_from:  # the model, optimizer, scheduler, random states and the loop's state
            checkpoint.load_checkpoint(accelerator, run_dir.resume_from, state)
        # Only now, everything loaded and checked, does an earlier run's output make way for this run's.
        run_dir.take(task, train_loader, eval_loaders)
        evaluation.preflight(model, eval_loaders, accelerator, task)  # two batches: a broken evaluation fails now

        start_size = results.weights_size(accelerator, model)  # did the weights move? (results.json says)
        metrics, logits, runtime = train(
            args, task, accelerator, run_dir, state, model, optimizer, scheduler, train_loader, eval_loaders, names
        )
        trained = checkpoint.save_trainable(
            accelerator, model, names, f"{args.output_dir}/trainable.safetensors", run_dir.args_json
        )
        if args.do_predict:  # GLUE submission files for the test split
            evaluation.write_predictions(model, eval_loaders, accelerator, task, args.output_dir)
        pairs = computed_pairs(accelerator, model)  # Prefix tuning: its pairs (a collective under ZeRO-3 and FSDP2)
        if accelerator.is_main_process:  # the pairs alone, and with the head as a peft adapter
            checkpoint.atomic_save_tensors(f"{args.output_dir}/prefix.safetensors", {"prefix": pairs})
            head = checkpoint.head_of(trained, heads, inside="model.")
            peft_export(f"{args.output_dir}/peft", pairs, head, args.model_name_or_path)
        results.write_results(
            accelerator, state, model, args.output_dir, method="prefix", task=task, model_name=args.model_name_or_path,
            metrics=metrics, logits=logits, train_loader=train_loader, eval_loaders=eval_loaders, runtime=runtime,
            start_size=start_size,
            learning_rates={"learning_rate": args.learning_rate, "prefix_learning_rate": args.prefix_learning_rate},
            max_grad_norm=args.max_grad_norm, extra={"precision": models.precision(accelerator, model, optimizer)},
        )  # fmt: skip


def train(args, task, accelerator, run_dir, state, model, optimizer, scheduler, train_loader, eval_loaders, names):
    """The loop: every epoch, less what a resumed run did, until the last step or early stopping. Returns the last
    evaluation (metrics, logits) and the seconds spent training. `names`: the trainable weights, kept in best/."""
    best_file = loop.best_path(args.output_dir)
    best_metric = evaluation.selected_metric(task, eval_loaders)  # the metric that picks best/ and stops early
    eval_every = args.eval_steps or state.steps_per_epoch
    bar = tqdm(total=state.max_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    started, metrics = time.perf_counter(), None
    for epoch in range(state.step // state.steps_per_epoch, math.ceil(state.max_steps / state.steps_per_epoch)):
        if state.finished:  # early stopping (or a resumed run that had stopped)
            break
        model.train()
        train_loader.set_epoch(epoch)  # a new shuffle, the same on every rank and after a resume
        batches_done = (state.step - epoch * state.steps_per_epoch) * accelerator.gradient_accumulation_steps
        for batch in accelerator.skip_first_batches(train_loader, batches_done) if batches_done else train_loader:
            batch.pop("idx")  # the rows' positions in their file: not an input of the model
            with accelerator.accumulate(model):  # syncs the gradients and steps only every Nth batch
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:  # (DeepSpeed clips in its own step)
                    state.grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()  # (between those, accumulate makes this and zero_grad no-ops)
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()  # once per optimizer step (fp16: not after a step its scaler skipped)
                optimizer.zero_grad()
            state.count(loss, batch["attention_mask"])
            if not accelerator.sync_gradients:
                continue  # the gradients accumulate: no optimizer step yet
            state.step += 1
            bar.update(1)
            if state.step % args.logging_steps == 0:
                loop.log_loss(accelerator, state, bar)
            paused = time.perf_counter()  # evaluating and saving is not training time
            if state.step % eval_every == 0 or state.step == state.max_steps:
                metrics, logits = evaluation.evaluate(model, eval_loaders, accelerator, task)
                if loop.log_evaluation(accelerator, state, metrics, best_metric, bar):  # the best so far
                    checkpoint.save_trainable(accelerator, model, names, best_file, run_dir.args_json)
                loop.stop_early(state, args.early_stopping_patience, best_metric, bar)
            if loop.checkpoint_due(state, args.checkpointing_steps):
                checkpoint.save_checkpoint(accelerator, run_dir, state, best_file, args.checkpoints_total_limit)
            state.aside += time.perf_counter() - paused
            if state.finished:
                break
    bar.close()
    runtime = time.perf_counter() - started - state.aside
    if metrics is None:  # a resumed run that had no step left
        metrics, logits = evaluation.evaluate(model, eval_loaders, accelerator, task)
    return metrics, logits, runtime


if __name__ == "__main__":
    run_main(lambda: main(args))
