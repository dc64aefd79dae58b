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

Where the prefix starts (`--prefix_init`). `text` (the default, as the paper's section 7.2 found
best): the pairs start as the keys and values the frozen model itself computes for p tokens of a
real text (`--prefix_init_text`), and the MLP (its last layer zero at first) learns the change:
    pairs = KV_model(text) + MLP(E)
so the input first reads an ordinary context. It matters in Llama-style models, whose first token
is an attention sink: random pairs in front of it take that role badly (SmolLM2-135M: a random
prefix drew 46% of a middle layer's attention and left prefix tuning at the constant prediction;
a text's pairs give the sink back to its first token). `random`: N(0, 0.02^2) embeddings through
a default-initialised MLP, as peft does (and as the equivalence tests compare). The text's pairs
are computed once, in the first forward (no gradient), and need a model that returns a cache.

    python train_prefix.py --task rte --num_prefix 10
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prefix.py --task rte

Models whose attention takes a cache: decoders (GPT-2, Llama, Qwen, ...) and BERT-style encoders
(BERT, RoBERTa, MiniLM, ...); not DistilBERT or DeBERTa.
"""
import inspect
import json
import os

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn
from transformers import DynamicCache, get_scheduler

from common.checkpoint import atomic_save_tensors, atomic_write_text, gathered, trainable_names
from common.data import get_task
from common.errors import fail, run_main, usage_errors
from common.launch import (adamw, base_parser, check_args, count_params, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, split_params)
from common.run import Run


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--num_prefix", type=int, default=10, help="prefix length p (key/value pairs per layer)")
    parser.add_argument("--no_prefix_projection", dest="prefix_projection", action="store_false",
                        help="train the pairs directly instead of through the MLP")
    parser.add_argument("--prefix_hidden", type=int, default=None, help="the MLP's hidden size (default 512)")
    parser.add_argument("--prefix_init", choices=["text", "random"], default="text",
                        help="start from the model's own keys/values of --prefix_init_text (default), or at random "
                             "as peft does")
    parser.add_argument("--prefix_init_text", default="Read the text that follows and say what it expresses.",
                        help="the text whose first --num_prefix tokens (repeated if it is shorter) start the prefix")
    parser.add_argument("--prefix_learning_rate", type=float, default=1e-3,
                        help="learning rate of the prefix (--learning_rate is the head's); 1e-3: the best of 1e-4, "
                             "1e-3, 1e-2 on held-out SST-2 rows with SmolLM2-135M (README)")
    args = check_args(parser.parse_args(argv), "prefix")
    if args.num_prefix < 1 or args.prefix_learning_rate <= 0:
        fail("--num_prefix must be >= 1 and --prefix_learning_rate > 0")
    if args.prefix_hidden is not None and not args.prefix_projection:
        fail("--prefix_hidden sizes the projection MLP; drop it or --no_prefix_projection")
    args.prefix_hidden = args.prefix_hidden or 512
    return args


def cache_name(model):
    """The base model's keyword for past keys/values (transformers 5.2x renamed past_key_values to
    cache), or None when its attention reads no cache (DistilBERT, DeBERTa, ...)."""
    names = inspect.signature(model.base_model.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def check_supported(model):
    """A ValueError at start, not a shape error mid-step, for a model this cannot tune."""
    if cache_name(model) is None:
        raise ValueError(f"prefix tuning here needs a model whose attention reads a cache (GPT-2, Llama, BERT, "
                         f"RoBERTa, ...); '{model.config.model_type}' is not one: use train_prompt.py, train_lora.py "
                         "or train_adapter.py")


def prefix_text_ids(tokenizer, text, p):
    """The first p token ids of `text` (repeated as often as p needs): where --prefix_init text starts."""
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError("--prefix_init_text gives no tokens: pass a sentence, or --prefix_init random")
    return (ids * (p // len(ids) + 1))[:p]


def is_encoder(model):
    """BERT-style (a masked-LM model type that is no causal-only decoder): its forward returns no cache."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class PrefixTuning(nn.Module):
    """A frozen sequence classifier whose attention layers read p trained key/value pairs first."""

    def __init__(self, model, p=10, projection=True, hidden=512, text_ids=None):
        super().__init__()
        self.model, self.config, self.p = model, model.config, p  # config: DeepSpeed sizes its buckets
        self.cache_name = cache_name(model)
        cfg = model.config
        self.layers, d = cfg.num_hidden_layers, cfg.hidden_size
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
        width = 2 * self.layers * self.heads * self.head_dim
        dtype = model.get_input_embeddings().weight.dtype  # ZeRO-3 + bf16 casts nothing after loading
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
        """The frozen model's keys and values for text_ids, (layers, 2, heads, p, head_dim), computed once
        with dropout off and no gradient (every rank runs it: under ZeRO-3 a forward gathers the layers)."""
        if self.text_pairs is None:
            training = self.model.training
            with torch.no_grad():
                out = self.model.eval().base_model(input_ids=self.text_ids, use_cache=True)
            self.model.train(training)
            cache = out.get("cache", out.get("past_key_values"))  # the output's name in transformers 5.2x, 4.x
            if cache is None:
                raise ValueError(f"'{self.config.model_type}' returns no key/value cache to start the prefix from: "
                                 "use --prefix_init random")
            self.text_pairs = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
        return self.text_pairs

    def prefix(self):
        """(layers, 2, heads, p, head_dim): the keys and values of every layer."""
        pairs = self.mlp(self.embedding) if hasattr(self, "mlp") else self.pairs
        pairs = pairs.view(self.p, self.layers, 2, self.heads, self.head_dim).permute(1, 2, 3, 0, 4)
        return pairs + self.model_pairs() if hasattr(self, "text_ids") else pairs

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, **kwargs):
        batch = input_ids.shape[0]
        kv = self.prefix().to(self.model.get_input_embeddings().weight.dtype)
        cache = DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])
        mask = torch.cat([attention_mask.new_ones(batch, self.p), attention_mask], 1)
        if position_ids is not None:  # the input comes after the prefix, as after p read tokens
            kwargs["position_ids"] = position_ids + self.p
        kwargs[self.cache_name] = cache
        return self.model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=True, **kwargs)


def export_peft(kv, head, model, path, base_model):
    """OUTPUT_DIR/peft: a peft prefix-tuning adapter for sequence classification (the computed pairs
    `kv`, no MLP; the head with it) that peft's PeftModel.from_pretrained(base, path) loads (peft
    0.17; peft 0.21 refuses prefix tuning on transformers 5.2x's cache argument)."""
    token_dim = model.heads * model.head_dim  # peft sizes the pairs by the key/value heads
    peft_config = {"peft_type": "PREFIX_TUNING", "task_type": "SEQ_CLS", "base_model_name_or_path": base_model,
                   "num_virtual_tokens": model.p, "token_dim": token_dim, "encoder_hidden_size": token_dim,
                   "num_layers": model.layers, "num_attention_heads": model.heads, "num_transformer_submodules": 1,
                   "prefix_projection": False, "modules_to_save": sorted({n.split(".")[0] for n in head}),
                   "inference_mode": True}
    atomic_write_text(os.path.join(path, "adapter_config.json"), json.dumps(peft_config, indent=2) + "\n")
    pairs = kv.permute(3, 0, 1, 2, 4).reshape(model.p, -1)  # back to (p, layers x 2 x heads x head_dim)
    atomic_save_tensors(os.path.join(path, "adapter_model.safetensors"),
                        {"prompt_embeddings": pairs, **{f"base_model.{n}": t for n, t in head.items()}})


def save_pairs(accelerator, model, args):
    """What inference needs: the computed pairs (gathered under ZeRO-3; every rank calls this), alone
    in OUTPUT_DIR/prefix.safetensors and as a peft adapter with the head in OUTPUT_DIR/peft."""
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    with torch.no_grad(), gathered(split_params(plain, plain.model)[0]):
        kv = plain.prefix().detach().cpu().clone()
    if accelerator.is_main_process:
        atomic_save_tensors(os.path.join(args.output_dir, "prefix.safetensors"), {"prefix": kv})
        trained = load_file(os.path.join(args.output_dir, "trainable.safetensors"))
        head = {n[len("model."):]: t for n, t in trained.items() if n.startswith("model.")}
        export_peft(kv, head, plain, os.path.join(args.output_dir, "peft"), args.model_name_or_path)


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    run = Run(args, accelerator, "prefix", outputs=["prefix.safetensors", "peft"])  # owns OUTPUT_DIR: logs, weights, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task), extra_positions=args.num_prefix)

    # The method: freeze the backbone; every attention layer reads p trained key/value pairs first.
    with usage_errors():  # a model whose attention reads no cache: a one-line error
        check_supported(model)
    freeze_backbone(model)
    text_ids = None
    if args.prefix_init == "text" and is_encoder(model):
        accelerator.print(f"prefix: random init ('{model.config.model_type}' is an encoder: no cache to start from)")
    elif args.prefix_init == "text":
        with usage_errors():
            text_ids = prefix_text_ids(tokenizer, args.prefix_init_text, args.num_prefix)
    model = PrefixTuning(model, args.num_prefix, args.prefix_projection, args.prefix_hidden, text_ids)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"prefix of {args.num_prefix} pairs x {model.layers} layers (projection "
                      f"{args.prefix_projection}, {args.prefix_init} init): trainable {trainable:,} of {total:,} "
                      f"({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer)
    prefix, head = split_params(model, model.model)  # the prefix (embedding and MLP) and the classifier
    optimizer = adamw([*optimizer_groups(prefix, args.weight_decay, lr=args.prefix_learning_rate),
                       *optimizer_groups(head, args.weight_decay)], args)
    max_steps = run.count_steps(len(train_loader))  # optimizer steps of the whole run
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))
    run.begin(model, eval_loaders, names)  # after prepare: a resumed run restores the prepared states

    for epoch in run.epochs():
        model.train()
        train_loader.set_epoch(epoch)  # a new shuffle, the same on every rank and after a resume
        for batch in run.remaining(train_loader, epoch):  # a resumed run skips the batches it trained on
            batch.pop("idx")  # the row number, for putting predictions in order; not a model input
            with accelerator.accumulate(model):  # gradients sync (and the optimizer steps) every N batches
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:  # one scheduler step per optimizer step
                    scheduler.step()
                optimizer.zero_grad()
            run.add_loss(loss, batch)
            if accelerator.sync_gradients:
                run.step_done()  # evaluate, save the best weights and a checkpoint when due
            if run.stop:
                break

    run.finish()  # the final metrics, trainable.safetensors, --do_predict files
    save_pairs(accelerator, model, args)  # prefix.safetensors and OUTPUT_DIR/peft
    run.close(trainable, total)  # results.json


if __name__ == "__main__":
    run_main(main)
