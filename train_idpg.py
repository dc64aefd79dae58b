"""IDPG: instance-dependent prompt generation, a prompt per input from a small generator.

Wu et al. 2022, "IDPG: An Instance-Dependent Prompt Generation Method", NAACL, https://arxiv.org/abs/2204.04497

Prompt tuning (train_prompt.py) learns one prompt for the whole task. IDPG learns a generator
that writes a prompt for each input: an encoder reads the input, its representation r (the final
hidden state of the last real token) goes through a small network G, and G(r) (t x d) is put in
front of the token embeddings of the frozen backbone, as in prompt tuning.

    x --> encoder (frozen) --> r --> G: d_enc -> 384 -> t x d --> [G(r)][x] --> frozen model

The default is "IDPG (Original)" of the original experiments (docs/original.md: GPT-2 on GLUE): a separate frozen
encoder (by default a second copy of the backbone, loaded from its path; theirs: --encoder_name_or_path gpt2)
and an MLP generator. Variants:
  --train_encoder              their "IDPG (Trained)": the encoder trains too
  --prompt_only                their "PG": t learned encoder inputs replace the instance
  --encoder_name_or_path self  the paper's choice: the backbone itself, in a first no-grad pass
  --generator phm              the paper's PHM generator, W = sum_i S_i kron A_i (--phm_n)
  --prompt_layers all          the paper's M-IDPG: before every later layer, G (shared) plus a per-layer
                               bias turns the last token's state into a prompt, added at the prompt positions
  --generator_init original    the original's generator (raw r, torch's init); the default feeds G r / RMS(r) and
                               starts as prompt tuning (G's last layer 0, its bias t embedding rows; M-IDPG adds G's
                               output before every later layer too, so it starts near prompt tuning, not at it)

A frozen encoder gives each input the same r every epoch: r of every training row is computed
once before training and kept on the device (--no_cache: every step). The original ran its frozen
encoder with dropout on while training (r changes every step): --encoder_dropout, without cache. PG runs the
encoder every step, with its dropout on in training (as the original), whatever the flag.

    python train_idpg.py --task rte      # read it beside train_prompt.py: diff the two
    accelerate launch --config_file accelerate_configs/zero3.yaml train_idpg.py --task rte
"""

import os

from common.args import base_parser, check_args, hub_or_offline, require
from common.errors import fail, parse_command_line


def parse_args(argv=None):
    parser = base_parser(__doc__)
    parser.set_defaults(learning_rate=1e-3)  # the head's; G, PG's inputs, a trained encoder: --prompt_learning_rate
    add = parser.add_argument
    add("--num_virtual_tokens", type=int, default=20, help="prompt length t")
    add("--encoder_name_or_path", default=None, help="the encoder (the backbone's tokenizer), or self; none: a copy")
    add("--train_encoder", action="store_true", help="train the encoder too (IDPG Trained)")
    add("--prompt_only", action="store_true", help="PG: t learned encoder inputs for every row")
    add("--generator", choices=["mlp", "phm"], default="mlp", help="G: an MLP, or PHM layers")
    add("--generator_hidden", type=int, default=384, help="the generator's bottleneck")
    add("--generator_init", choices=["prompt", "original"], default="prompt", help="where G starts")
    add("--phm_n", type=int, default=16, help="PHM: the number of Kronecker summands")
    add("--prompt_layers", choices=["input", "all"], default="input", help="all: M-IDPG")
    add("--no_cache", action="store_true", help="run the frozen encoder every step")
    add("--encoder_dropout", action="store_true", help="the frozen encoder's dropout on in training")
    add("--prompt_learning_rate", type=float, default=1e-4, help="G's (and PG's inputs', a trained encoder's)")
    args = check_args(parser, argv, "idpg")
    require(parser, args, "at least 1", "num_virtual_tokens", "generator_hidden", "phm_n")
    require(parser, args, "positive", "prompt_learning_rate")
    args.encoder_name_or_path = args.encoder_name_or_path or args.model_name_or_path  # (a copy: offline, same tokens)
    if args.encoder_name_or_path != "self" and os.path.isdir(args.encoder_name_or_path):  # (absolute, as the model's)
        args.encoder_name_or_path = os.path.abspath(args.encoder_name_or_path)
    if args.encoder_name_or_path == "self" and (args.train_encoder or args.prompt_only):
        fail("--encoder_name_or_path self goes with neither --train_encoder nor --prompt_only")
    return args


if __name__ == "__main__":
    args = parse_command_line(parse_args)  # --help and bad flags answer before the imports below take seconds

import math
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from common import checkpoint, data, evaluation, loop, models, results
from common.checkpoint import whole
from common.data import positions
from common.errors import first_line, run_main, stop_on_signals, usage_errors
from common.models import param_dtype
from common.prompts import pack_left, run_with_prompt, split_params, unsharded


def load_encoder(name, tokenizer, dtype=torch.float32):
    """The encoder: a bare model (no head) in `dtype`; None for 'self'. It reads the backbone's token ids, so its
    tokenizer must be `tokenizer` (the same vocabulary and special tokens, not only the same size)."""
    from transformers import AutoModel, AutoTokenizer

    if name == "self":
        return None
    if not os.path.isdir(name):
        hub_or_offline(name)  # (no network: offline at once, or a one-line error)
    try:
        encoder, theirs = AutoModel.from_pretrained(name, dtype=dtype), AutoTokenizer.from_pretrained(name)
    except OSError as e:
        fix = "pass a local folder or --encoder_name_or_path self"
        raise ValueError(f"cannot load encoder '{name}' with its tokenizer ({first_line(e)}); {fix}") from None
    same = all(getattr(theirs, k) == getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token"))
    if not same or theirs.get_vocab() != tokenizer.get_vocab():
        message = f"the encoder '{name}' has another tokenizer than the backbone (vocabulary or special tokens), so "
        message += "it would read other tokens than its ids; pick an encoder of the backbone's family, or "
        raise ValueError(message + "--encoder_name_or_path self")
    return encoder


class PHMLinear(nn.Module):
    """x W + b with W = sum_i S_i kron A_i, a parameterized hypercomplex multiplication layer (Zhang et al. 2021, who
    write A_i kron S_i: their A is our n x n S): n^3 + d_in d_out / n weights instead of d_in d_out."""

    def __init__(self, d_in, d_out, n):
        super().__init__()
        if d_in % n or d_out % n:
            raise ValueError(f"--phm_n {n} must divide the generator's sizes ({d_in} -> {d_out})")
        # S_i ~ N(0, 1/n^2), A_i ~ N(0, 2 / (d_in + d_out)) (Glorot's normal): W's entries, sums
        # of n products, then have variance 2 / (n (d_in + d_out)), Glorot's divided by n.
        self.S = nn.Parameter(torch.randn(n, n, n) / n)  # n matrices n x n: how the blocks mix
        self.A = nn.Parameter(torch.randn(n, d_in // n, d_out // n) * math.sqrt(2 / (d_in + d_out)))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        n, p, q = self.A.shape
        # (S_i kron A_i)[a p + b, c q + e] = S_i[a, c] A_i[b, e]: the einsum sums that over i as a
        # tensor [a, b, c, e], which reshapes to the (n p) x (n q) matrix.
        weight = torch.einsum("iac,ibe->abce", self.S, self.A).reshape(n * p, n * q)
        return x @ weight + self.bias


class UnitRMS(nn.Module):
    """r / RMS(r): the encoder's state at unit scale, whatever the model (SmolLM2's is about 2)."""

    def forward(self, r):
        return r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + 1e-6)


def last_token_state(encoder, input_ids=None, attention_mask=None, inputs_embeds=None):
    """The final hidden state of the last position: the last real token of a left-packed row."""
    if attention_mask is None:
        attention_mask = inputs_embeds.new_ones(inputs_embeds.shape[:2]).long()
    return encoder(
        input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
        position_ids=positions(attention_mask),
    ).last_hidden_state[:, -1]  # fmt: skip


class IDPG(nn.Module):
    """A frozen sequence classifier (`model`) with a generated prompt (G: r -> t x d) before its input embeddings.
    `encoder` reads each input (None: the backbone's body, in a first pass without prompts); `cache`: in training, r
    comes from a table of every training row's (cache_states); the others are the flags' (add_method maps them).
    Settings that cannot fit this model: a ValueError."""

    def __init__(
        self, model, encoder=None, *, num_tokens=20, generator="mlp", hidden=384, phm_n=16, prompt_only=False,
        train_encoder=False, encoder_dropout=False, cache=True, prompt_layers="input", init="prompt",
    ):  # fmt: skip
        super().__init__()
        models.freeze_backbone(model)
        if encoder is not None:
            encoder.requires_grad_(train_encoder)
        d_enc, d = (encoder or model).config.hidden_size, model.config.hidden_size
        dtype = param_dtype(model)
        if prompt_layers == "all" and d_enc != d:
            message = f"--prompt_layers all gives the generator the backbone's states: the encoder's width ({d_enc}) "
            raise ValueError(message + f"must be the backbone's ({d}); try --encoder_name_or_path self")
        self.model = model
        self.config = model.config  # DeepSpeed sizes its buckets from it
        self.encoder, self.t = encoder, num_tokens
        # IDPG: G, d_enc -> hidden -> t x d: an MLP with ReLU (the original) or PHM layers with GELU (the paper)
        if generator == "mlp":
            layers = [nn.Linear(d_enc, hidden), nn.ReLU(), nn.Linear(hidden, num_tokens * d)]
        else:
            layers = [PHMLinear(d_enc, hidden, phm_n), nn.GELU(), PHMLinear(hidden, num_tokens * d, phm_n)]
        self.generator = nn.Sequential(*([UnitRMS()] if init == "prompt" else []), *layers).to(dtype)
        if init == "prompt":  # G(r) starts as one prompt for every input (train_prompt.py's "vocab"), r's part at 0
            last, emb = self.generator[-1], model.get_input_embeddings()
            ids = torch.randint(0, model.config.vocab_size, (num_tokens,))
            with torch.no_grad(), whole([emb.weight]) as (table,):  # the table may be partitioned: a collective
                (last.weight if isinstance(last, nn.Linear) else last.A).zero_()  # G's last layer: weights 0,
                last.bias.copy_(table[ids].reshape(-1))  # bias: t rows of the embedding table
        self.instance = None
        if prompt_only:  # PG's learned encoder inputs, std 0.02
            self.instance = nn.Parameter(torch.randn(num_tokens, d_enc, dtype=dtype) / 50)
        self.layer_bias = None
        if prompt_layers == "all":  # M-IDPG: one bias per layer after the first
            layers = model.config.num_hidden_layers - 1
            self.layer_bias = nn.Parameter(torch.zeros(layers, num_tokens * d, dtype=dtype))
        self.train_encoder, self.encoder_dropout = train_encoder, encoder_dropout
        self.cache = cache and not (train_encoder or prompt_only or encoder_dropout)
        self.keys = self.states = None  # the table of cache_states: the rows' idx (sorted) and their r
        # True only in the prompted pass: M-IDPG's hooks must not fire in the first pass of
        # --encoder_name_or_path self, which runs the same layers to compute r.
        self.prompting = False
        if self.layer_bias is not None:
            blocks = next(m for m in model.base_model.modules() if isinstance(m, nn.ModuleList))
            for i, layer in enumerate(blocks[1:]):
                layer.register_forward_pre_hook(self.layer_prompt(i), with_kwargs=True)

    def layer_prompt(self, i):
        """M-IDPG: before layer i + 1, add G(the last token's state) + bias_i at the prompt."""

        def hook(module, args, kwargs):
            if not self.prompting:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            prompt = (self.generator(hidden[:, -1]) + self.layer_bias[i]).view(len(hidden), self.t, -1)
            hidden = torch.cat([hidden[:, : self.t] + prompt, hidden[:, self.t :]], 1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def represent(self, input_ids, attention_mask, idx=None):
        """r, one vector per row, as the variant computes it (from the table, by the rows' idx)."""
        encoder = self.encoder if self.encoder is not None else self.model.base_model
        if self.instance is not None:  # PG: the same learned inputs for every row
            return last_token_state(encoder, inputs_embeds=self.instance[None]).expand(len(input_ids), -1)
        if self.train_encoder:
            return last_token_state(encoder, input_ids, attention_mask)
        if self.training and self.keys is not None and idx is not None:
            # On the device: no host sync, and no collective for the others to wait on.
            return self.states[torch.searchsorted(self.keys, idx)]
        was_training = encoder.training
        encoder.train(self.training and self.encoder_dropout)  # the original's dropout in training
        with torch.no_grad():
            r = last_token_state(encoder, input_ids, attention_mask)
        encoder.train(was_training)
        return r

    @torch.no_grad()
    def cache_states(self, loader, gather=lambda tensors: tensors, batches=None, show=False):
        """The table: r of the rows of the (prepared) training loader's first `batches` batches (None: all), gathered
        from every rank (`gather` = accelerator.gather), kept on the device by idx (GPT-2's 768 floats a row: 120 MB
        for MNLI-10%); `show`: a progress bar. Training forwards then never run the encoder, so no rank must ask the
        others whether to (under ZeRO-3 a forward is a collective). Every rank calls this."""
        keys, states = [], []
        total = len(loader) if batches is None else min(batches, len(loader))
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)  # the first epoch's order: the rows the first steps train on
        bar = tqdm(loader, total=total, desc="IDPG: encoding the training rows", disable=not show)
        for i, batch in enumerate(bar):
            if i == total:
                break
            input_ids, attention_mask, _ = pack_left(batch["input_ids"], batch["attention_mask"])
            idx, r = gather((batch["idx"], self.represent(input_ids, attention_mask)))
            keys.append(idx)
            states.append(r)
        self.keys, order = torch.cat(keys).sort()  # (a row twice, from the even split of the last batch: r twice)
        self.states = torch.cat(states)[order]

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None, position_ids=None, idx=None):
        # (position_ids, if a collator made them, are made again: the prompt comes first)
        input_ids, attention_mask, token_type_ids = pack_left(input_ids, attention_mask, token_type_ids)
        r = self.represent(input_ids, attention_mask, idx)
        prompt = self.generator(r.to(param_dtype(self.model))).view(len(input_ids), self.t, -1)
        self.prompting = True
        try:
            return run_with_prompt(self.model, prompt, input_ids, attention_mask, token_type_ids, labels)
        finally:
            self.prompting = False


def add_method(
    model, tokenizer, encoder_name_or_path, num_virtual_tokens, generator, generator_hidden, phm_n, prompt_only,
    train_encoder, encoder_dropout, no_cache, prompt_layers, generator_init,
):  # fmt: skip
    """IDPG on a loaded model as the flags of the same names ask (predict.py rebuilds a run with this)."""
    encoder = load_encoder(encoder_name_or_path, tokenizer, param_dtype(model))  # in the backbone's dtype
    return IDPG(
        model, encoder, num_tokens=num_virtual_tokens, generator=generator, hidden=generator_hidden, phm_n=phm_n,
        prompt_only=prompt_only, train_encoder=train_encoder, encoder_dropout=encoder_dropout, cache=not no_cache,
        prompt_layers=prompt_layers, init=generator_init,
    )  # fmt: skip


def build(args, accelerator):
    """The task and its splits (every file read and checked first), the tokenizer and the model with the method added
    (the backbone frozen), as the flags ask; the trainable weights in fp32 (AdamW's state too), whatever the
    checkpoint's dtype."""
    task, splits = data.load_data(  # GLUE's, or your own data's files, every one read and checked
        accelerator, args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file, text_columns=args.text_columns,
        label_column=args.label_column, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half, seed=args.seed, do_predict=args.do_predict,
    )  # fmt: skip
    tokenizer, model = models.load_model(
        args.model_name_or_path, task, args.max_length, extra_positions=args.num_virtual_tokens, dtype=args.base_dtype,
        ignore_mismatched_sizes=args.ignore_mismatched_sizes,
    )  # fmt: skip

    # IDPG: freeze the backbone, generate a prompt per input and put it before the embeddings.
    with usage_errors():  # an encoder that cannot serve, settings that do not fit: one line
        model = add_method(
            model, tokenizer, encoder_name_or_path=args.encoder_name_or_path,
            num_virtual_tokens=args.num_virtual_tokens, generator=args.generator,
            generator_hidden=args.generator_hidden, phm_n=args.phm_n, prompt_only=args.prompt_only,
            train_encoder=args.train_encoder, encoder_dropout=args.encoder_dropout, no_cache=args.no_cache,
            prompt_layers=args.prompt_layers, generator_init=args.generator_init,
        )  # fmt: skip
    if args.gradient_checkpointing:  # activations recomputed in the backward pass: less memory, more time
        models.checkpoint_activations(model.model)
    models.upcast_trainable(model, accelerator)
    return task, splits, tokenizer, model


def main(args):
    # (under DeepSpeed, its JSON found from any folder; on a CPU without GPUs, FSDP2 over gloo: make_accelerator says)
    accelerator = loop.make_accelerator(
        args.output_dir, args.max_grad_norm, args.ddp_timeout, args.with_tracking, args.report_to, args.torch_compile
    )
    with loop.OutputDir(  # claimed: OUTPUT_DIR's lock held until this block ends, the checkpoint to resume checked
        accelerator, "idpg", vars(args), output_dir=args.output_dir, outputs=[], overwrite=args.overwrite_output_dir,
        resume=args.resume_from_checkpoint, predict=args.do_predict, tracking=args.with_tracking,
    ) as run_dir:  # fmt: skip
        set_seed(args.seed)
        task, splits, tokenizer, model = build(args, accelerator)
        names = checkpoint.trainable_names(model)
        accelerator.print(models.describe(model))

        # (the prompt comes first: the forward makes the positions)
        train_loader, eval_loaders = data.make_dataloaders(
            accelerator, tokenizer, splits, position_ids=False, task=task, max_length=args.max_length,
            per_device_train_batch_size=args.per_device_train_batch_size,
            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
            group_by_length=args.group_by_length, pad_to_multiple_of=args.pad_to_multiple_of,
            fixed_lengths=args.torch_compile, do_predict=args.do_predict,
        )  # fmt: skip
        generator, head = split_params(model, model.model)  # IDPG: G (PG's inputs, a trained encoder) has its rate
        groups = models.optimizer_groups(generator, args.weight_decay, lr=args.prompt_learning_rate)
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

        unwrapped = accelerator.unwrap_model(model)
        if unwrapped.cache:  # IDPG: r of every training row the run uses, once (FSDP2: outside a forward, made whole)
            needed = state.max_steps * accelerator.gradient_accumulation_steps  # (the first epoch's batches first)
            with unsharded(unwrapped):
                show = accelerator.is_local_main_process
                unwrapped.cache_states(train_loader, accelerator.gather, needed, show=show)

        start_size = results.weights_size(accelerator, model)  # did the weights move? (results.json says)
        metrics, logits, runtime = train(
            args, task, accelerator, run_dir, state, model, optimizer, scheduler, train_loader, eval_loaders, names
        )
        checkpoint.save_trainable(
            accelerator, model, names, f"{args.output_dir}/trainable.safetensors", run_dir.args_json
        )
        if args.do_predict:  # GLUE submission files for the test split
            evaluation.write_predictions(model, eval_loaders, accelerator, task, args.output_dir)
        results.write_results(
            accelerator, state, model, args.output_dir, method="idpg", task=task, model_name=args.model_name_or_path,
            metrics=metrics, logits=logits, train_loader=train_loader, eval_loaders=eval_loaders, runtime=runtime,
            start_size=start_size,
            learning_rates={"learning_rate": args.learning_rate, "prompt_learning_rate": args.prompt_learning_rate},
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
            # (batch["idx"], the rows' positions in their file, stays: the key to each row's r in the cache)
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
