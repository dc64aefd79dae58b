"""IDPG: instance-dependent prompt generation, a prompt per input from a small generator.

Wu et al. 2022, "IDPG: An Instance-Dependent Prompt Generation Method", NAACL,
https://arxiv.org/abs/2204.04497

Prompt tuning (train_prompt.py) learns one prompt for the whole task. IDPG learns a generator
that writes a prompt for each input: an encoder reads the input, its representation r (the final
hidden state of the last real token) goes through a small network G, and G(r) (t x d) is put in
front of the token embeddings of the frozen backbone, as in prompt tuning.

    x ──> encoder (frozen) ──> r ──> G: d_enc -> 384 -> t x d ──> [G(r)][x] ──> frozen model ──> head

Variants (defaults: the seed's "IDPG (Original)": a separate frozen GPT-2 encoder, MLP generator):
  --train_encoder            the seed's "IDPG (Trained)": the encoder trains too
  --prompt_only              the seed's "PG": t learned encoder inputs replace the instance
  --encoder_name_or_path self     the paper's choice: the backbone itself, in a first no-grad pass
  --generator phm --phm_n 16 --generator_hidden 16     the paper's PHM generator (sum_i S_i kron A_i)
  --prompt_layers all        the paper's M-IDPG: before every later layer, G (shared) plus a per-layer
                             bias turns the last token's state into a prompt added at the prompt positions
  --generator_init original  the original's generator as it was; the default starts as prompt tuning
                             (G's last layer zero, embedding rows as its bias) from r at unit scale

A frozen encoder gives each input the same r every epoch: r of every training row is computed
once before training and kept on the device (--no_cache: every step). The original ran its frozen
encoder with dropout on while training (r changes every step): --encoder_dropout, without cache.

    python train_idpg.py --task rte      # read it beside train_prompt.py: `diff train_prompt.py train_idpg.py`
    accelerate launch --config_file accelerate_configs/zero3.yaml train_idpg.py --task rte
"""
import math

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

from common.checkpoint import gathered, trainable_names
from common.data import get_task, pack_left
from common.errors import fail, run_main, usage_errors
from common.launch import (adamw, base_parser, check_args, count_params, freeze_backbone, load_encoder, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, split_params)
from common.run import Run


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(learning_rate=1e-3)
    parser.add_argument("--num_virtual_tokens", type=int, default=20, help="prompt length t")
    parser.add_argument("--encoder_name_or_path", default="gpt2",
                        help="the encoder that reads each input (it must share the backbone's tokenizer), "
                             "or 'self': the backbone itself in a first no-grad pass")
    parser.add_argument("--train_encoder", action="store_true", help="train the encoder too (IDPG Trained)")
    parser.add_argument("--prompt_only", action="store_true",
                        help="PG: t learned encoder inputs replace the instance (one prompt for all inputs)")
    parser.add_argument("--generator", choices=["mlp", "phm"], default="mlp")
    parser.add_argument("--generator_hidden", type=int, default=384, help="the generator's bottleneck")
    parser.add_argument("--generator_init", choices=["prompt", "original"], default="prompt",
                        help="prompt: start as prompt tuning (last layer zero, its bias rows of the embedding "
                             "table) from r at unit RMS; original: the original's generator as it was (PyTorch's "
                             "default initialisation, raw r)")
    parser.add_argument("--phm_n", type=int, default=16, help="PHM: number of Kronecker summands")
    parser.add_argument("--prompt_layers", choices=["input", "all"], default="input",
                        help="input: S-IDPG, a prompt before the first layer; all: M-IDPG, every layer")
    parser.add_argument("--no_cache", action="store_true", help="recompute the frozen encoder's output every time")
    parser.add_argument("--encoder_dropout", action="store_true",
                        help="run the frozen encoder in train mode while training (its dropout on, so r changes "
                             "every step), as the original did; turns the cache off")
    parser.add_argument("--prompt_learning_rate", type=float, default=1e-4,
                        help="learning rate of the generator (--learning_rate is the head's; README: why 1e-4)")
    args = check_args(parser.parse_args(argv), "idpg")
    if args.num_virtual_tokens < 1 or args.prompt_learning_rate <= 0 or args.generator_hidden < 1:
        fail("--num_virtual_tokens and --generator_hidden must be >= 1 and --prompt_learning_rate > 0")
    if args.encoder_name_or_path == "self" and (args.train_encoder or args.prompt_only):
        fail("--encoder_name_or_path self reads the frozen backbone: it goes with neither --train_encoder nor "
             "--prompt_only")
    return args


class PHMLinear(nn.Module):
    """x W + b with W = sum_i S_i kron A_i, a parameterized hypercomplex multiplication layer (Zhang et
    al. 2021): n^3 + d_in d_out / n weights instead of d_in d_out."""

    def __init__(self, d_in, d_out, n):
        super().__init__()
        if d_in % n or d_out % n:
            raise ValueError(f"--phm_n {n} must divide the generator's sizes ({d_in} -> {d_out})")
        # S_i ~ N(0, 1/n^2) and A_i ~ N(0, 2 / (d_in + d_out)) (Glorot's normal): W's entries, sums of n
        # products, then have variance 2 / (n (d_in + d_out)), Glorot's divided by n.
        self.S = nn.Parameter(torch.randn(n, n, n) / n)  # n matrices n x n: how the blocks mix
        self.A = nn.Parameter(torch.randn(n, d_in // n, d_out // n) * math.sqrt(2 / (d_in + d_out)))  # the blocks
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        n, p, q = self.A.shape
        # (S_i kron A_i)[a p + b, c q + e] = S_i[a, c] A_i[b, e]: the einsum sums that over i as a tensor
        # [a, b, c, e], which reshapes to the (n p) x (n q) matrix.
        weight = torch.einsum("iac,ibe->abce", self.S, self.A).reshape(n * p, n * q)
        return x @ weight + self.bias


class UnitRMS(nn.Module):
    """r / RMS(r): the encoder's state at unit scale, whatever the model (SmolLM2's RMS is about 2)."""

    def forward(self, r):
        return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6)


def make_generator(d_enc, d, num_tokens, kind="mlp", hidden=384, phm_n=16, normalize=False):
    """G: d_enc -> hidden -> t x d (MLP with ReLU, as the seed; or PHM layers with GELU, as the paper),
    after UnitRMS with `normalize`."""
    first = [UnitRMS()] if normalize else []
    if kind == "mlp":
        return nn.Sequential(*first, nn.Linear(d_enc, hidden), nn.ReLU(), nn.Linear(hidden, num_tokens * d))
    return nn.Sequential(*first, PHMLinear(d_enc, hidden, phm_n), nn.GELU(),
                         PHMLinear(hidden, num_tokens * d, phm_n))


def start_as_prompt_tuning(generator, model, num_tokens):
    """G's last layer: zero weights, t rows of the embedding table as bias (train_prompt.py's "vocab"
    start). G(r) is then that prompt for every input; the input-dependent part grows from zero."""
    last, emb = generator[-1], model.get_input_embeddings()
    ids = torch.randint(0, model.config.vocab_size, (num_tokens,))
    with torch.no_grad(), gathered([emb.weight]):  # the table may be partitioned (ZeRO-3): a collective
        (last.weight if isinstance(last, nn.Linear) else last.A).zero_()
        last.bias.copy_(emb.weight[ids].reshape(-1))


def last_token_state(encoder, input_ids=None, attention_mask=None, inputs_embeds=None):
    """Final hidden state of the last position: the last real token of a left-packed row."""
    mask = attention_mask if attention_mask is not None else inputs_embeds.new_ones(inputs_embeds.shape[:2]).long()
    out = encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask,
                  position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return out.last_hidden_state[:, -1]


class IDPG(nn.Module):
    """A frozen sequence classifier (`model`) with a generated prompt (`generator`: r -> t x d) before its
    input embeddings. `encoder` reads each input (None: the backbone's body, in a first pass without
    prompts); `instance`: PG's learned encoder inputs, read instead; `train_encoder`: the encoder trains;
    `encoder_dropout`: a frozen encoder keeps its dropout on while training; `cache`: while training,
    r from a table of every training row's (cache_states); `layer_bias`: M-IDPG's per-layer biases."""

    def __init__(self, model, generator, num_tokens, *, encoder=None, instance=None, train_encoder=False,
                 encoder_dropout=False, cache=False, layer_bias=None):
        super().__init__()
        self.model, self.config = model, model.config  # config: DeepSpeed sizes its buckets from it
        self.generator, self.t, self.encoder = generator, num_tokens, encoder
        self.instance, self.train_encoder, self.layer_bias = instance, train_encoder, layer_bias
        self.encoder_dropout, self.cache = encoder_dropout, cache
        self.keys = self.states = None  # the table of cache_states: rows' idx (sorted) and their r
        # True only during the prompted pass: M-IDPG's hooks (below) must not fire in --encoder_name_or_path
        # self's first pass, which runs the same layers to compute r.
        self.prompting = False
        if layer_bias is not None:
            layers = next(m for m in model.base_model.modules() if isinstance(m, nn.ModuleList))
            for i, layer in enumerate(layers[1:]):
                layer.register_forward_pre_hook(self.layer_prompt(i), with_kwargs=True)

    def layer_prompt(self, i):
        """M-IDPG: before layer i + 1, add G(state of the last token) + bias_i at the prompt positions."""
        def hook(module, args, kwargs):
            if not self.prompting:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            prompt = (self.generator(hidden[:, -1]) + self.layer_bias[i]).view(len(hidden), self.t, -1)
            hidden = torch.cat([hidden[:, :self.t] + prompt, hidden[:, self.t:]], 1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        return hook

    def represent(self, input_ids, attention_mask, idx=None):
        """r, one vector per row, as the variant computes it (from the table: the rows' idx given)."""
        encoder = self.encoder if self.encoder is not None else self.model.base_model
        if self.instance is not None:  # PG: the same learned inputs for every row; gradients reach them
            return last_token_state(encoder, inputs_embeds=self.instance[None]).expand(len(input_ids), -1)
        if self.train_encoder:
            return last_token_state(encoder, input_ids, attention_mask)
        if self.training and self.keys is not None and idx is not None:
            return self.states[torch.searchsorted(self.keys, idx)]  # on the device: no sync, no collective
        was_training = encoder.training
        encoder.train(self.training and self.encoder_dropout)  # the original: dropout on while training
        with torch.no_grad():
            r = last_token_state(encoder, input_ids, attention_mask)
        encoder.train(was_training)
        return r

    @torch.no_grad()
    def cache_states(self, loader, gather=lambda tensors: tensors):
        """The table: r of every row of the (prepared) training loader, once, gathered from every rank
        (`gather` = accelerator.gather) and kept on the device by idx: rows x d_enc values (GPT-2's 768
        floats: 120 MB for MNLI-10%). Training forwards then never run the encoder, so no rank has to
        ask the others whether to (under ZeRO-3 its forward is a collective). Every rank calls this."""
        keys, states = [], []
        for batch in loader:
            input_ids, attention_mask, _ = pack_left(batch["input_ids"], batch["attention_mask"])
            idx, r = gather((batch["idx"], self.represent(input_ids, attention_mask)))
            keys.append(idx)
            states.append(r)
        keys, states = torch.cat(keys), torch.cat(states)
        order = keys.argsort()  # (a row twice, from the even split of the last batch, has the same r twice)
        self.keys, self.states = keys[order], states[order]

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None, idx=None, **_):
        input_ids, attention_mask, token_type_ids = pack_left(input_ids, attention_mask, token_type_ids)
        embeds = self.model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
        batch, t = input_ids.shape[0], self.t
        r = self.represent(input_ids, attention_mask, idx)
        prompt = self.generator(r.to(embeds.dtype)).view(batch, t, -1)
        mask = torch.cat([attention_mask.new_ones(batch, t), attention_mask], 1)
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # prompt 0..t-1, then the tokens
        if token_type_ids is not None:
            extra["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, t), token_type_ids], 1)
        self.prompting = True
        try:
            return self.model(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=mask, labels=labels,
                              **extra)
        finally:
            self.prompting = False


def build_idpg(model, encoder=None, *, num_tokens=20, generator="mlp", hidden=384, phm_n=16, prompt_only=False,
               train_encoder=False, encoder_dropout=False, cache=True, prompt_layers="input", init="prompt"):
    """The IDPG of these settings around a loaded backbone (and encoder; None: the backbone reads).
    `init`: "prompt" starts as prompt tuning from r at unit scale; "original": the original's
    generator as it was (PyTorch's initialisation, raw r). Settings that cannot fit: a ValueError."""
    freeze_backbone(model)
    if encoder is not None:
        encoder.requires_grad_(train_encoder)
    d_enc, d = (encoder or model).config.hidden_size, model.config.hidden_size
    dtype = model.get_input_embeddings().weight.dtype  # ZeRO-3 + bf16 casts nothing after loading
    g = make_generator(d_enc, d, num_tokens, generator, hidden, phm_n, normalize=init == "prompt").to(dtype)
    if init == "prompt":
        start_as_prompt_tuning(g, model, num_tokens)
    instance = nn.Parameter(torch.randn(num_tokens, d_enc, dtype=dtype) / 50) if prompt_only else None  # std 0.02
    layer_bias = None
    if prompt_layers == "all":
        if d_enc != d:
            raise ValueError(f"--prompt_layers all feeds the backbone's states to the generator: the encoder's width "
                             f"({d_enc}) must be the backbone's ({d}); try --encoder_name_or_path self")
        layer_bias = nn.Parameter(torch.zeros(model.config.num_hidden_layers - 1, num_tokens * d, dtype=dtype))
    return IDPG(model, g, num_tokens, encoder=encoder, instance=instance, train_encoder=train_encoder,
                encoder_dropout=encoder_dropout, cache=cache and not (train_encoder or prompt_only or encoder_dropout),
                layer_bias=layer_bias)


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    run = Run(args, accelerator, "idpg")  # owns OUTPUT_DIR: logs, best weights, checkpoints, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task), extra_positions=args.num_virtual_tokens)

    # The method: freeze the backbone, generate a prompt per input and put it before the embeddings.
    with usage_errors():  # an encoder that cannot serve, settings that do not fit: a one-line error
        encoder = load_encoder(args.encoder_name_or_path, tokenizer)
        model = build_idpg(model, encoder, num_tokens=args.num_virtual_tokens, generator=args.generator,
                           hidden=args.generator_hidden, phm_n=args.phm_n, prompt_only=args.prompt_only,
                           train_encoder=args.train_encoder, encoder_dropout=args.encoder_dropout,
                           cache=not args.no_cache, prompt_layers=args.prompt_layers, init=args.generator_init)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"IDPG, {args.generator} generator, encoder {args.encoder_name_or_path}, cache "
                      f"{model.cache}: trainable {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, position_ids=False)  # made in forward
    generator_params, head = split_params(model, model.model)  # generator (+ PG's inputs, a trained encoder)
    optimizer = adamw([*optimizer_groups(generator_params, args.weight_decay, lr=args.prompt_learning_rate),
                       *optimizer_groups(head, args.weight_decay)], args)
    max_steps = run.count_steps(len(train_loader))  # optimizer steps of the whole run
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))
    run.begin(model, eval_loaders, names)  # after prepare: a resumed run restores the prepared states
    if accelerator.unwrap_model(model).cache:  # r of every training row, once (a frozen encoder in eval mode)
        accelerator.unwrap_model(model).cache_states(train_loader, accelerator.gather)

    for epoch in run.epochs():
        model.train()
        train_loader.set_epoch(epoch)  # a new shuffle, the same on every rank and after a resume
        for batch in run.remaining(train_loader, epoch):  # a resumed run skips the batches it trained on
            # (the batch keeps its rows' idx: IDPG looks their r up in its table by it)
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
    run.close(trainable, total)  # results.json


if __name__ == "__main__":
    run_main(main)
