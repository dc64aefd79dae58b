"""IDPG: instance-dependent prompt generation, a prompt per input from a small generator.

Wu et al. 2022, "IDPG: An Instance-Dependent Prompt Generation Method", NAACL,
https://arxiv.org/abs/2204.04497

Prompt tuning (train_prompt.py) learns one prompt for the whole task. IDPG learns a generator
that writes a prompt for each input: an encoder reads the input, its representation r (the final
hidden state of the last real token) goes through a small network G, and G(r) (t x d) is put in
front of the token embeddings of the frozen backbone, as in prompt tuning.

    x ──> encoder (frozen) ──> r ──> G: d_enc -> 384 -> t x d ──> [G(r)][x] ──> frozen model ──> head

Variants (defaults: the seed's "IDPG (Original)": a separate frozen GPT-2 encoder, MLP generator):
  --train_encoder         the seed's "IDPG (Trained)": the encoder trains too
  --prompt_only           the seed's control "PG": t learned encoder inputs replace the instance,
                          so every input gets the same (generated) prompt
  --encoder self          the paper's choice: the backbone itself, in a first no-grad pass
  --generator phm         the paper's PHM generator (W = sum_i S_i kron A_i, GELU); --phm_n 16
                          --generator_hidden 16
  --prompt_layers all     the paper's M-IDPG: before every later layer, G (shared) plus a per-layer
                          bias turns the previous layer's state of the last token into a prompt
                          that is added at the prompt positions (needs d_enc = d, e.g. --encoder self)

A frozen encoder gives each input the same r in every epoch, so r is computed once per example
and cached (--no_cache turns it off); every rank still runs the same forwards.

    python train_idpg.py --task rte
    accelerate launch --config_file accelerate_configs/zero3.yaml train_idpg.py --task rte
Read it beside train_prompt.py (`diff train_prompt.py train_idpg.py` shows the generator).
"""
import math
import os
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, get_scheduler

from common.checkpoint import resume, save_checkpoint, save_trainable, trainable_names, write_results
from common.data import get_task
from common.errors import fail
from common.launch import (base_parser, check_args, count_params, evaluate, freeze_backbone, load_model,
                           make_accelerator, make_dataloaders, optimizer_groups, write_predictions)


def parse_args():
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
    parser.add_argument("--phm_n", type=int, default=16, help="PHM: number of Kronecker summands")
    parser.add_argument("--prompt_layers", choices=["input", "all"], default="input",
                        help="input: S-IDPG, a prompt before the first layer; all: M-IDPG, every layer")
    parser.add_argument("--no_cache", action="store_true", help="recompute the frozen encoder's output every time")
    parser.add_argument("--prompt_learning_rate", type=float, default=3e-2,
                        help="learning rate of the generator (--learning_rate is the head's)")
    args = check_args(parser.parse_args(), "idpg")
    if args.num_virtual_tokens < 1 or args.prompt_learning_rate <= 0 or args.generator_hidden < 1:
        fail("--num_virtual_tokens and --generator_hidden must be >= 1 and --prompt_learning_rate > 0")
    if args.encoder_name_or_path == "self" and (args.train_encoder or args.prompt_only):
        fail("--encoder self reads the frozen backbone: it goes with neither --train_encoder nor --prompt_only")
    return args


class PHMLinear(nn.Module):
    """x W + b with W = sum_i S_i kron A_i (Zhang et al. 2021): n^3 + d_in d_out / n weights."""

    def __init__(self, d_in, d_out, n):
        super().__init__()
        if d_in % n or d_out % n:
            fail(f"--phm_n {n} must divide the generator's sizes ({d_in} -> {d_out})")
        self.S = nn.Parameter(torch.randn(n, n, n) / n)
        self.A = nn.Parameter(torch.randn(n, d_in // n, d_out // n) * math.sqrt(2 / (d_in + d_out)))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        n, p, q = self.A.shape
        weight = torch.einsum("iac,ibe->abce", self.S, self.A).reshape(n * p, n * q)  # sum_i S_i kron A_i
        return x @ weight + self.bias


def make_generator(args, d_enc, d):
    """G: d_enc -> hidden -> t x d (MLP with ReLU, as the seed; or PHM layers with GELU, as the paper)."""
    t, h = args.num_virtual_tokens, args.generator_hidden
    if args.generator == "mlp":
        return nn.Sequential(nn.Linear(d_enc, h), nn.ReLU(), nn.Linear(h, t * d))
    return nn.Sequential(PHMLinear(d_enc, h, args.phm_n), nn.GELU(), PHMLinear(h, t * d, args.phm_n))


def last_token_state(encoder, input_ids=None, attention_mask=None, inputs_embeds=None):
    """Final hidden state of the last position: the last real token of a left-packed row."""
    mask = attention_mask if attention_mask is not None else inputs_embeds.new_ones(inputs_embeds.shape[:2]).long()
    out = encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask,
                  position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return out.last_hidden_state[:, -1]


class IDPG(nn.Module):
    """A frozen sequence classifier with a generated prompt before its input embeddings."""

    def __init__(self, model, encoder, generator, t, instance=None, train_encoder=False, cache=False,
                 layer_bias=None):
        super().__init__()
        self.model, self.config = model, model.config  # config: DeepSpeed sizes its buckets from it
        self.encoder, self.generator, self.t = encoder, generator, t  # encoder None: the backbone itself
        self.instance, self.train_encoder = instance, train_encoder  # instance: PG's learned encoder inputs
        self.cache = {} if cache else None  # real token ids (bytes) -> representation
        self.layer_bias, self.prompting = layer_bias, False  # M-IDPG: one bias per later layer
        if layer_bias is not None:
            layers = next(m for m in model.base_model.modules() if isinstance(m, nn.ModuleList))
            for i, layer in enumerate(layers[1:]):
                layer.register_forward_pre_hook(self.layer_prompt(i), with_kwargs=True)

    def layer_prompt(self, i):
        """M-IDPG: before layer i + 1, add G(state of the last token) + bias_i at the prompt positions."""
        def hook(module, args, kwargs):
            if not self.prompting:  # the first, no-grad pass of --encoder self reads without prompts
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            prompt = (self.generator(hidden[:, -1]) + self.layer_bias[i]).view(len(hidden), self.t, -1)
            hidden = torch.cat([hidden[:, :self.t] + prompt, hidden[:, self.t:]], 1)
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        return hook

    def represent(self, input_ids, attention_mask):
        """r for each row. A frozen encoder reads in eval mode without gradients, and its output is
        taken from the cache when every rank has all its rows there (else every rank encodes:
        under ZeRO-3 the encoder's forward is a collective)."""
        encoder = self.encoder if self.encoder is not None else self.model.base_model
        if self.instance is not None:  # PG: gradients flow through the frozen encoder to the inputs
            return last_token_state(encoder, inputs_embeds=self.instance[None]).expand(len(input_ids), -1)
        if self.train_encoder:
            return last_token_state(encoder, input_ids, attention_mask)
        keys = [ids[m.bool()].cpu().numpy().tobytes() for ids, m in zip(input_ids, attention_mask)]
        cache = self.cache if self.cache is not None else {}
        missing = torch.tensor(float(any(k not in cache for k in keys)), device=input_ids.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(missing, torch.distributed.ReduceOp.MAX)
        if missing:
            was_training = encoder.training
            with torch.no_grad():
                states = last_token_state(encoder.eval(), input_ids, attention_mask)
            encoder.train(was_training)
            cache.update(zip(keys, states))
        return torch.stack([cache[k] for k in keys])

    def forward(self, input_ids, attention_mask, labels=None, token_type_ids=None, **_):
        order = attention_mask.argsort(dim=-1, stable=True)  # pads first: every row becomes left-padded
        input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        token_type_ids = None if token_type_ids is None else token_type_ids.gather(1, order)
        embeds = self.model.get_input_embeddings()(input_ids)  # calling the module works under ZeRO-3
        batch, t = input_ids.shape[0], self.t
        r = self.represent(input_ids, attention_mask)
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


def build(args, model, encoder):
    """Wrap a loaded backbone (and encoder, None for 'self') into the IDPG model of the flags."""
    freeze_backbone(model)
    if encoder is not None:
        encoder.requires_grad_(args.train_encoder)
    d_enc = (encoder or model).config.hidden_size
    dtype = model.get_input_embeddings().weight.dtype  # ZeRO-3 + bf16 casts nothing after loading
    generator = make_generator(args, d_enc, model.config.hidden_size).to(dtype)
    t = args.num_virtual_tokens
    instance = nn.Parameter(torch.randn(t, d_enc, dtype=dtype) / 50) if args.prompt_only else None
    cache = not (args.no_cache or args.train_encoder or args.prompt_only)
    layer_bias = None
    if args.prompt_layers == "all":
        if d_enc != model.config.hidden_size:
            fail(f"--prompt_layers all feeds the backbone's states to the generator: the encoder's width "
                 f"({d_enc}) must be the backbone's ({model.config.hidden_size}); try --encoder_name_or_path self")
        layer_bias = nn.Parameter(torch.zeros(model.config.num_hidden_layers - 1,
                                              args.num_virtual_tokens * model.config.hidden_size, dtype=dtype))
    return IDPG(model, encoder, generator, args.num_virtual_tokens, instance, args.train_encoder, cache, layer_bias)


def main():
    args = parse_args()
    accelerator = make_accelerator(args, "train_idpg")
    set_seed(args.seed)
    task = get_task(args.task)
    tokenizer, model = load_model(args, task)

    # The method: freeze the backbone, generate a prompt per input and put it before the embeddings.
    encoder = None
    if args.encoder_name_or_path != "self":
        try:
            encoder = AutoModel.from_pretrained(args.encoder_name_or_path)
        except OSError as e:
            fail(f"cannot load encoder '{args.encoder_name_or_path}' ({str(e).splitlines()[0][:160]}); "
                 "pass a local directory or --encoder_name_or_path self")
        if encoder.config.vocab_size != model.config.vocab_size:
            fail(f"the encoder must share the backbone's tokenizer (vocab {encoder.config.vocab_size} vs "
                 f"{model.config.vocab_size}); pick another --encoder_name_or_path or 'self'")
    model = build(args, model, encoder)
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"IDPG, {args.generator} generator, encoder {args.encoder_name_or_path}, cache "
                      f"{model.cache is not None}: trainable {trainable:,} of {total:,} "
                      f"({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, model)
    prompt = [p for n, p in model.named_parameters() if not n.startswith("model.")]  # generator (+ encoder)
    optimizer = torch.optim.AdamW([*optimizer_groups(prompt, args.weight_decay, lr=args.prompt_learning_rate),
                                   *optimizer_groups(model.model.parameters(), args.weight_decay)],
                                  lr=args.learning_rate)
    grad_accum = accelerator.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / grad_accum)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.num_warmup_steps, max_steps)
    model, optimizer, train_loader, scheduler, *loaders = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))

    (step, log_history, best), metrics = resume(accelerator, args), None

    eval_every = args.eval_steps or steps_per_epoch
    ckpt_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process)
    loss_sum, loss_count, start_step, start = torch.zeros((), device=accelerator.device), 0, step, time.perf_counter()
    for epoch in range(step // steps_per_epoch, epochs):
        model.train()
        train_loader.set_epoch(epoch)  # the same shuffle on every rank, and again after a resume
        skip = (step - epoch * steps_per_epoch) * grad_accum
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            batch.pop("idx")
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            loss_sum, loss_count = loss_sum + loss.detach().float(), loss_count + 1  # on the device: NCCL reduces it
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")

            if step % eval_every == 0 or step == max_steps:
                metrics, logits = evaluate(model, eval_loaders, accelerator, args.task)
                train_loss = accelerator.reduce(loss_sum, "mean").item() / max(loss_count, 1)
                loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                log_history.append({"step": step, "epoch": epoch, "train_loss": train_loss, **metrics})
                progress.write(f"step {step}: train_loss {train_loss:.4f} " +
                               " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if args.with_tracking:
                    accelerator.log({"train_loss": train_loss, **metrics}, step=step)
                if metrics[task.metric] > best.get(task.metric, -math.inf):
                    best = {"step": step, **metrics}
                    save_trainable(accelerator, model, names, os.path.join(args.output_dir, "best",
                                                                           "trainable.safetensors"))
            if ckpt_every and step % ckpt_every == 0:
                save_checkpoint(accelerator, args.output_dir, step,
                                {"step": step, "log_history": log_history, "best_metrics": best})
            if step >= max_steps:
                break
        if args.checkpointing_steps == "epoch" and step < max_steps:
            save_checkpoint(accelerator, args.output_dir, step,
                            {"step": step, "log_history": log_history, "best_metrics": best})
    progress.close()
    runtime = time.perf_counter() - start
    if metrics is None:  # resumed from a checkpoint taken at the last step
        metrics, logits = evaluate(model, eval_loaders, accelerator, args.task)

    save_trainable(accelerator, model, names, os.path.join(args.output_dir, "trainable.safetensors"))
    if args.do_predict:
        write_predictions(model, eval_loaders, accelerator, args)
    if accelerator.is_main_process:
        samples = (step - start_step) * args.per_device_train_batch_size * grad_accum * accelerator.num_processes
        write_results(args, "idpg", metrics, best, log_history, (trainable, total), runtime, samples, logits)
    accelerator.print(f"final {args.task} idpg: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    accelerator.end_training()  # closes trackers and the process group (a gloo rank can abort at exit otherwise)


if __name__ == "__main__":
    main()
