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
is an attention sink: random pairs in front of it take that role badly, and a text's pairs give
the sink back to its first token. `random`: N(0, 0.02^2) embeddings through
a default-initialised MLP, as peft does (and as the equivalence tests compare). The text's pairs
are computed once, in the first forward (no gradient), and need a model that returns a cache.

    python train_prefix.py --task rte --num_prefix 10
    accelerate launch --config_file accelerate_configs/zero3.yaml train_prefix.py --task rte

Models whose attention takes a cache: decoders (GPT-2, Llama, Qwen, ...) and BERT-style encoders
(BERT, RoBERTa, MiniLM, ...); not DistilBERT or DeBERTa.
"""

from common.args import base_parser, check_args
from common.errors import check_early, fail


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3)
    add = parser.add_argument
    add("--num_prefix", type=int, default=10, help="p, the key/value pairs each layer reads first")
    add(
        "--no_prefix_projection",
        dest="prefix_projection",
        action="store_false",
        help="train the pairs directly, not through the MLP",
    )
    add("--prefix_hidden", type=int, default=None, help="the MLP's hidden size; none: 512")
    add("--prefix_init", choices=["text", "random"], default="text", help="where the pairs start")
    add(
        "--prefix_init_text",
        default="Read the text that follows and say what it expresses.",
        help="text: its first p tokens start the prefix",
    )
    add("--prefix_learning_rate", type=float, default=1e-3, help="the prefix's")
    args = check_args(parser.parse_args(argv), "prefix")
    if args.num_prefix < 1 or args.prefix_learning_rate <= 0:
        fail("--num_prefix must be >= 1 and --prefix_learning_rate > 0")
    if args.prefix_hidden is not None and not args.prefix_projection:
        fail("--prefix_hidden sizes the projection MLP; drop it or --no_prefix_projection")
    args.prefix_hidden = args.prefix_hidden or 512
    return args


if __name__ == "__main__":
    check_early(parse_args)  # --help and bad flags answer before the imports below take seconds

import inspect
import os

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import DynamicCache, get_scheduler

import exports
from common.checkpoint import atomic_save_tensors, gathered, trainable_names, unsharded
from common.data import make_dataloaders
from common.errors import run_main, usage_errors
from common.model import (
    adamw,
    freeze_backbone,
    head_names,
    load_model,
    optimizer_groups,
    param_dtype,
    split_params,
)
from common.run import Run, make_accelerator


def cache_name(model):
    """The base model's keyword for past keys/values (transformers 5.2x renamed past_key_values to
    cache), or None when its attention reads no cache (DistilBERT, DeBERTa, ...)."""
    names = inspect.signature(model.base_model.forward).parameters
    return next((n for n in ("cache", "past_key_values") if n in names), None)


def check_supported(model):
    """A ValueError at start, not a shape error mid-step, for a model this cannot tune."""
    if cache_name(model) is None:
        raise ValueError(
            f"prefix tuning here needs a model whose attention reads a cache (GPT-2, Llama, BERT, "
            f"RoBERTa, ...); '{model.config.model_type}' is not one: use train_prompt.py, "
            "train_lora.py "
            "or train_adapter.py"
        )


def prefix_text_ids(tokenizer, text, p):
    """The first p token ids of `text` (repeated as p needs): where --prefix_init text starts."""
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError(
            "--prefix_init_text gives no tokens: pass a sentence, or --prefix_init random"
        )
    return (ids * (p // len(ids) + 1))[:p]


def is_encoder(model):
    """BERT-style (a masked-LM model type, no causal-only decoder): its forward returns no cache."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class PrefixTuning(nn.Module):
    """A frozen sequence classifier whose attention layers read p trained key/value pairs first."""

    def __init__(self, model, p=10, projection=True, hidden=512, text_ids=None):
        super().__init__()
        # config: DeepSpeed sizes its buckets
        self.model, self.config, self.p = (
            model,
            model.config,
            p,
        )
        self.cache_name = cache_name(model)
        cfg = model.config
        self.layers, d = cfg.num_hidden_layers, cfg.hidden_size
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
        width = 2 * self.layers * self.heads * self.head_dim
        dtype = param_dtype(model)
        if projection:
            self.embedding = nn.Parameter(torch.randn(p, d, dtype=dtype) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, width)).to(
                dtype
            )
        else:
            self.pairs = nn.Parameter(torch.randn(p, width, dtype=dtype) * 0.02)
        # --prefix_init text: the pairs are the model's own for these p token ids plus a learned
        # change, which starts at zero (the MLP's last layer, or the directly trained pairs).
        self.text_pairs = None  # computed in the first forward, where ZeRO-3 can gather the weights
        if text_ids is not None:
            self.register_buffer(
                "text_ids", torch.as_tensor(text_ids)[:p].reshape(1, p), persistent=False
            )
            with torch.no_grad():
                for zero in [*self.mlp[-1].parameters()] if projection else [self.pairs]:
                    zero.zero_()

    def model_pairs(self):
        """The frozen model's keys and values for text_ids, (layers, 2, heads, p, head_dim),
        computed once with dropout off and no gradient (every rank runs it: under ZeRO-3 a forward
        gathers the layers)."""
        if self.text_pairs is None:
            training = self.model.training
            with torch.no_grad():
                out = self.model.eval().base_model(input_ids=self.text_ids, use_cache=True)
            self.model.train(training)
            # the output's name in transformers 5.2x, 4.x
            cache = out.get("cache", out.get("past_key_values"))
            if cache is None:
                raise ValueError(
                    f"'{self.config.model_type}' returns no key/value cache to start the prefix "
                    "from: "
                    "use --prefix_init random"
                )
            self.text_pairs = torch.stack(
                [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]
            )
        return self.text_pairs

    def prefix(self):
        """(layers, 2, heads, p, head_dim): the keys and values of every layer."""
        pairs = self.mlp(self.embedding) if hasattr(self, "mlp") else self.pairs
        pairs = pairs.view(self.p, self.layers, 2, self.heads, self.head_dim).permute(1, 2, 3, 0, 4)
        return pairs + self.model_pairs() if hasattr(self, "text_ids") else pairs

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, **kwargs):
        batch = input_ids.shape[0]
        kv = self.prefix().to(param_dtype(self.model))
        cache = DynamicCache(
            [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        )
        mask = torch.cat([attention_mask.new_ones(batch, self.p), attention_mask], 1)
        if position_ids is not None:  # the input comes after the prefix, as after p read tokens
            kwargs["position_ids"] = position_ids + self.p
        kwargs[self.cache_name] = cache
        return self.model(
            input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=True, **kwargs
        )


def add_method(
    model,
    tokenizer,
    *,
    num_prefix,
    prefix_projection,
    prefix_hidden,
    prefix_init,
    prefix_init_text,
    **_,
):
    """Prefix tuning on a loaded model as the flags of the same names ask (others are ignored:
    main and exports.load_trained pass a run's flags). An encoder starts at random (no cache)."""
    check_supported(model)
    text_ids = None
    if prefix_init == "text" and not is_encoder(model):
        text_ids = prefix_text_ids(tokenizer, prefix_init_text, num_prefix)
    freeze_backbone(model)
    return PrefixTuning(model, num_prefix, prefix_projection, prefix_hidden, text_ids)


def computed_pairs(accelerator, model):
    """What inference needs: the pairs the prefix computes, (layers, 2, heads, p, head_dim), on the
    CPU (gathered under ZeRO-3 and FSDP2: every rank calls this)."""
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    with torch.no_grad(), gathered(split_params(plain, plain.model)[0]), unsharded(plain):
        return plain.prefix().detach().cpu().clone()


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(**vars(args))
    # owns OUTPUT_DIR
    run = Run(accelerator, "prefix", outputs=["prefix.safetensors", "peft"], **vars(args))
    set_seed(args.seed)
    tokenizer, model = load_model(extra_positions=args.num_prefix, **vars(args))

    # The method: freeze the backbone; every attention layer reads p trained key/value pairs first.
    heads = head_names(model)
    with usage_errors():  # a model whose attention reads no cache, an empty text: one line
        model = add_method(model, tokenizer, **vars(args))
    if args.prefix_init == "text" and not hasattr(model, "text_ids"):
        accelerator.print(f"prefix: random init ({model.config.model_type} returns no cache)")
    names = trainable_names(model)

    train_loader, eval_loaders = make_dataloaders(accelerator, tokenizer, True, **vars(args))
    prefix, head = split_params(model, model.model)  # the prefix (embedding and MLP), the head
    groups = [
        *optimizer_groups(prefix, args.weight_decay, lr=args.prefix_learning_rate),
        *optimizer_groups(head, args.weight_decay),
    ]
    optimizer = adamw(groups, **vars(args))
    max_steps = run.count_steps(len(train_loader))  # optimizer steps of the whole run
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    run.begin(model, dict(zip(eval_loaders, loaders)), names)  # a resume restores the states

    # Every epoch, less the batches a resumed run did, until the last step or early stopping.
    for batch in run.batches(train_loader):
        with accelerator.accumulate(model):  # the gradients sync, and the optimizer steps, every N
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            if accelerator.sync_gradients:  # one scheduler step per optimizer step
                scheduler.step()
            optimizer.zero_grad()
        run.after_batch(loss)  # count the loss; after a step: log, evaluate, save when due

    trained = run.finish()  # the final metrics, trainable.safetensors, predictions
    pairs = computed_pairs(accelerator, model)  # (a collective under ZeRO-3)
    if accelerator.is_main_process:  # the pairs alone, and with the head as a peft adapter
        atomic_save_tensors(os.path.join(args.output_dir, "prefix.safetensors"), {"prefix": pairs})
        head = exports.head_of(trained, heads, inside="model.")
        path = os.path.join(args.output_dir, "peft")
        exports.peft_prefix(path, pairs, head, args.model_name_or_path)
    run.close()  # results.json


if __name__ == "__main__":
    run_main(main)
