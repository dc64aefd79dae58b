"""train_lora.py: the method against the base model and peft, and the script in this process and
under every launch config (single and ZeRO-3 in the default suite, the others with -m slow)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from bench import tiny
from common.checkpoint import head_of
from common.models import freeze_backbone
from predict import load_trainable
from tests.helpers import (
    check_load_trained,
    check_ok,
    eval_batches,
    evaluations,
    launch,
    logits_of,
    matrix,
    results,
    run_in_process,
    saved_eval_logits,
)
from train_lora import LoRALinear, add_lora, add_method, merged_state, peft_export, resolve_targets


def tiny_gpt2_model(seed=0):
    return tiny.gpt2(seed, labels=3)


def tiny_bert_model(seed=0):
    return tiny.bert(seed, labels=3)


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if ".lora_" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.2


INPUTS = {
    "input_ids": torch.tensor([[5, 17, 42, 9, 3, 0, 0], [7, 8, 9, 10, 11, 12, 13]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7]),
}


def logits(model):
    with torch.no_grad():
        return model(**INPUTS).logits


def test_seed_parameter_counts_at_gpt2_xl_from_config_alone():
    cfg = GPT2Config(n_embd=1600, n_layer=48, n_head=25, num_labels=3)
    counts = {}
    for r, slices in ((24, ["q", "v"]), (16, ["q", "k", "v"])):
        with torch.device("meta"):
            model = GPT2ForSequenceClassification(cfg)
        base = sum(p.numel() for p in model.parameters())
        add_lora(model, ["c_attn"], r, 2 * r, 0.0, slices)
        counts[r] = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
        assert round(100 * counts[r] / base, 2) == 0.47
    assert counts == {24: 7_372_800, 16: 7_372_800}


@pytest.mark.parametrize(
    "make,targets,slices", [(tiny_gpt2_model, ["c_attn"], ["q", "v"]), (tiny_bert_model, ["query", "value"], None)]
)
def test_merged_weights_give_the_same_logits_and_leave_the_model_alone(make, targets, slices):
    from types import SimpleNamespace

    model = make()
    add_lora(model, targets, 4, 8, 0.0, slices)
    randomize_lora(model)
    before = logits(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_process = SimpleNamespace(unwrap_model=lambda m, **_: m, is_main_process=True)
    plain = make()
    assert plain.load_state_dict(merged_state(one_process, model), strict=False).missing_keys == []
    torch.testing.assert_close(logits(plain), before, atol=1e-5, rtol=0)
    assert any((p - dict(make().named_parameters())[n]).abs().max() > 1e-4 for n, p in plain.named_parameters())
    for n, p in model.named_parameters():  # merging wrote nothing into the LoRA model
        assert torch.equal(p, weights[n]), n


def test_targets_and_slices_errors():
    model = tiny_bert_model()
    assert resolve_targets(model) == (["query", "value"], None)
    assert resolve_targets(tiny_gpt2_model()) == (["c_attn"], ["q", "v"])
    model.config.model_type = "mystery"
    with pytest.raises(ValueError) as e:
        resolve_targets(model)
    assert "no default LoRA targets for model type 'mystery'; pass --lora_targets from:" in str(e.value)
    assert "query" in str(e.value)  # the error lists the model's projections
    for targets, slices, expect in [
        ("qkv", None, "--lora_targets qkv not in the model"),
        ("query", "q", "--lora_slices applies to a fused"),
        ("classifier", None, "--lora_targets classifier not in the model's backbone"),  # the head trains whole
    ]:
        with pytest.raises(ValueError, match=expect):
            resolve_targets(model, targets, slices)
    with pytest.raises(ValueError, match="takes distinct names"):  # q twice: two pairs, DoRA's W x taken off twice
        resolve_targets(tiny_gpt2_model(), "c_attn", "q,q")


def test_a_target_name_the_head_shares_wraps_the_backbone_alone():
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    model = add_method(RobertaForSequenceClassification(config), "dense", None, 4, 8, 0.0, False, True)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped and all(n.startswith("roberta.encoder.") for n in wrapped)
    assert type(model.classifier.dense) is torch.nn.Linear and model.classifier.dense.weight.requires_grad


def lora_args(tiny_gpt2, glue_dir, out, *extra):
    return [
        "--task",
        "sst2",
        "--model_name_or_path",
        tiny_gpt2,
        "--data_dir",
        glue_dir,
        "--output_dir",
        out,
        "--max_train_samples",
        "96",
        "--max_eval_samples",
        "32",
        "--learning_rate",
        "5e-3",
        "--num_train_epochs",
        "3",
        "--eval_steps",
        "4",
        "--lora_r",
        "4",
        *extra,
    ]


def check_lora_run(out, tiny_gpt2, glue_dir, atol, merged=None):
    res = results(out)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert losses[-1] < losses[0], losses
    # layers x (q, v) x r(in+out)
    assert res["method"] == "lora" and res["lora_params"] == 2 * 2 * 4 * (32 + 32)
    saved = load_file(out / "trainable.safetensors")
    assert saved and all(".lora_" in n or n.startswith("score.") for n in saved)
    assert sum(t.numel() for t in saved.values()) == res["trainable_params"]

    # A plain model with our LoRA and the saved weights reproduces the run's eval logits.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).eval()
    base.config.pad_token_id = 0
    pretrained = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).eval()
    model.config.pad_token_id = 0
    freeze_backbone(model)
    add_lora(model, ["c_attn"], r=4, alpha=16, slices=["q", "v"])
    load_trainable(model, out / "trainable.safetensors")
    batches = list(eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    theirs = saved_eval_logits(out, "sst2")
    torch.testing.assert_close(logits_of(model, batches), theirs, atol=atol, rtol=0)
    assert all((saved[n] != 0).any() for n in saved if n.endswith(".lora_B"))  # B left zero
    check_load_trained(out, tiny_gpt2, glue_dir, atol)

    # peft loads the exported adapter (2 slices of rank 4 = one fused pair of rank 8).
    from peft import PeftModel

    peft_cfg = json.load(open(out / "peft" / "adapter_config.json"))
    assert set(peft_cfg["rank_pattern"].values()) == {8} and set(peft_cfg["alpha_pattern"].values()) == {32}
    peft_model = PeftModel.from_pretrained(base, out / "peft").eval()
    torch.testing.assert_close(logits_of(peft_model, batches), theirs, atol=atol, rtol=0)

    if merged:  # the merged export is a plain transformers model with the same logits...
        merged_model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
        torch.testing.assert_close(logits_of(merged_model, batches), theirs, atol=1e-5, rtol=0)
        # ...whose frozen weights are the pretrained ones: nothing but LoRA and the head moved.
        merged_w = dict(merged_model.named_parameters())
        for name, w in pretrained.items():
            if name.startswith("score."):
                continue
            if name.endswith("c_attn.weight"):
                layer = model.get_submodule(name[: -len(".weight")])
                w = w.clone()
                layer.add_delta(w, layer.lora_A, layer.lora_B)
            torch.testing.assert_close(merged_w[name], w, atol=1e-6, rtol=0)


def test_train_lora_in_process(tiny_gpt2, glue_dir, tmp_path):
    run_in_process(
        "train_lora.py", lora_args(tiny_gpt2, glue_dir, tmp_path / "out", "--merge_and_save", tmp_path / "merged")
    )
    check_lora_run(tmp_path / "out", tiny_gpt2, glue_dir, 1e-5, merged=tmp_path / "merged")


@pytest.mark.parametrize("config", matrix(["single", "ddp", "bf16", "zero1", "zero2", "zero3", "zero3_bf16", "fsdp"]))
def test_train_lora_under_every_config(config, tiny_gpt2, glue_dir, tmp_path):
    merge = config in ("single", "zero3", "fsdp")
    extra = ["--merge_and_save", str(tmp_path / "merged")] if merge else []
    check_ok(launch("train_lora.py", config, lora_args(tiny_gpt2, glue_dir, str(tmp_path / "out"), *extra)))
    check_lora_run(
        tmp_path / "out",
        tiny_gpt2,
        glue_dir,
        5e-2 if "bf16" in config else 1e-5,
        merged=tmp_path / "merged" if merge else None,
    )


def test_every_lora_tensor_trains(tiny_gpt2, glue_dir, tmp_path):
    """Against the script's own starting point (same seed): every LoRA tensor and the head changed."""
    from accelerate.utils import set_seed

    out = tmp_path / "out"
    run_in_process(
        "train_lora.py",
        [
            "--task",
            "sst2",
            "--model_name_or_path",
            tiny_gpt2,
            "--data_dir",
            glue_dir,
            "--output_dir",
            out,
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "16",
            "--max_train_steps",
            "3",
            "--lora_r",
            "4",
        ],
    )
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    freeze_backbone(model)
    add_lora(model, ["c_attn"], r=4, alpha=16, slices=["q", "v"])
    start = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = load_file(out / "trainable.safetensors")
    assert set(saved) == set(start)
    for n, t in saved.items():
        assert not torch.equal(t, start[n]), f"{n} did not change"
    assert all(math.isfinite(float(t.abs().sum())) for t in saved.values())


def test_peft_export_with_mixed_slice_and_fused_targets(tmp_path):
    """q,v slices on c_attn (rank 2 x 4 in peft) beside a fused pair on c_fc (rank 4): per-module ranks."""
    from peft import PeftModel

    model = tiny_gpt2_model()
    freeze_backbone(model)
    add_lora(model, ["c_attn"], 4, 8, 0.0, ["q", "v"])
    add_lora(model, ["c_fc"], 4, 8, 0.0, None)
    randomize_lora(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    peft_export(str(tmp_path / "peft"), layers, trainable, head_of(trainable, ["score"]), "tiny")
    ref = PeftModel.from_pretrained(tiny_gpt2_model(), tmp_path / "peft").eval()
    torch.testing.assert_close(logits(ref), logits(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("slices", [None, ["q", "v"]])
def test_both_modes_backpropagate_from_the_first_layer(slices):
    """The first layer's input needs no gradient (frozen embeddings): the update must still get one."""
    model = tiny_gpt2_model()
    freeze_backbone(model)
    add_lora(model, ["c_attn"], 4, 8, 0.0, slices)
    randomize_lora(model)
    model.train()(**INPUTS, labels=torch.tensor([0, 2])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if ".lora_" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


# The LoRA variants: DoRA, rsLoRA, LoRA+ against peft at the same weights.
def peft_twin(ours, make, targets, conv1d, **variant):
    """peft's LoRA on a fresh copy of the base model, with our layers' weights copied in."""
    from peft import LoraConfig, get_peft_model

    layer = next(m for m in ours.modules() if isinstance(m, LoRALinear))
    config = LoraConfig(r=layer.r, lora_alpha=layer.alpha, target_modules=targets, fan_in_fan_out=conv1d, **variant)
    theirs = get_peft_model(make(), config)
    for name, m in ours.named_modules():
        if isinstance(m, LoRALinear):
            twin = theirs.base_model.model.get_submodule(name)
            twin.lora_A["default"].weight.data = m.lora_A.data[0].clone()
            twin.lora_B["default"].weight.data = m.lora_B.data[0].clone()
            if m.lora_magnitude is not None:
                twin.lora_magnitude_vector["default"].weight.data = m.lora_magnitude.data.clone()
    return theirs


def grads(model, pattern):
    model.zero_grad()
    model(**INPUTS).logits.pow(2).sum().backward()
    return [p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and pattern in n]


@pytest.mark.parametrize(
    "make,targets,conv1d",
    [(tiny_gpt2_model, ["c_attn"], True), (lambda: tiny.llama(0, 3), ["q_proj", "v_proj"], False)],
)
@pytest.mark.parametrize("variant", [{"use_dora": True}, {"use_rslora": True}, {"use_dora": True, "use_rslora": True}])
def test_dora_and_rslora_equal_peft_at_the_same_weights(make, targets, conv1d, variant):
    ours = make()
    freeze_backbone(ours)
    rslora, dora = variant.get("use_rslora", False), variant.get("use_dora", False)
    add_lora(ours, targets, 4, 8, 0.0, None, rslora=rslora, dora=dora)
    randomize_lora(ours)  # (B, A and the magnitudes: away from the start, where DoRA is the identity)
    theirs = peft_twin(ours, make, targets, conv1d, **variant)
    torch.testing.assert_close(logits(ours), logits(theirs), atol=1e-5, rtol=0)
    assert (logits(ours) - logits(make())).abs().max() > 1e-3  # (the update is there)
    for ours_name, their_name in (("lora_A", "lora_A"), ("lora_B", "lora_B"), ("lora_magnitude", "lora_magnitude")):
        mine, peft_grads = grads(ours, ours_name), grads(theirs, their_name)
        assert len(mine) == len(peft_grads)
        for g, h in zip(mine, peft_grads):
            torch.testing.assert_close(g[0] if g.dim() == 3 else g, h, atol=1e-5, rtol=1e-4)


def test_dora_starts_at_the_pretrained_model_and_trains_through_a_zero_column():
    model = tiny_gpt2_model()
    before = logits(model)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[:, 5] = 0  # an output column of W all zero (Conv1D: [in, out])
    zeroed = logits(model)
    freeze_backbone(model)
    add_lora(model, ["c_attn"], 4, 8, 0.0, ["q", "v"], dora=True)
    torch.testing.assert_close(logits(model), zeroed, atol=1e-6, rtol=0)  # B = 0, m = ||W||: the model as it was
    assert (zeroed - before).abs().max() > 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        loss = model(**INPUTS, labels=torch.tensor([0, 2])).loss
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad()


def test_dora_on_a_bf16_base_starts_within_m_s_rounding_and_keeps_w_s_norm():
    model = tiny_gpt2_model().to(torch.bfloat16)  # --base_dtype bfloat16: m is stored in bf16
    freeze_backbone(model)
    add_lora(model, ["c_attn"], 4, 8, 0.0, ["q", "v"], dora=True)
    layer = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        exact = layer.base_layer.weight.float().pow(2).sum(0)  # ||W||^2 of each output column, in fp32
    assert torch.equal(layer.weight_squares, exact)  # the norm W's own: what the merge and peft compute
    k = layer.lora_magnitude.float() / exact[layer.columns].sqrt()
    assert (k - 1).abs().max() <= 2**-8 and layer.lora_magnitude.dtype == torch.bfloat16  # the start: m's rounding


def test_dora_on_slices_merges_and_exports_to_peft(tmp_path):
    """GPT-2's q and v slices under DoRA: a magnitude over the adapted columns; merged into W, or exported to peft
    (k's columns get m = ||W||, a factor of 1), the logits are ours."""
    from types import SimpleNamespace

    from peft import PeftModel

    model = tiny_gpt2_model()
    freeze_backbone(model)
    add_lora(model, ["c_attn"], 4, 8, 0.0, ["q", "v"], rslora=True, dora=True)
    randomize_lora(model)
    ours = logits(model)
    one_process = SimpleNamespace(unwrap_model=lambda m, **_: m, is_main_process=True)
    plain = tiny_gpt2_model()
    assert plain.load_state_dict(merged_state(one_process, model), strict=False).missing_keys == []
    torch.testing.assert_close(logits(plain), ours, atol=1e-5, rtol=0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    peft_export(tmp_path, layers, trained, head_of(trained, ["score"]), "tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is True
    theirs = PeftModel.from_pretrained(tiny_gpt2_model(), tmp_path)
    torch.testing.assert_close(logits(theirs), ours, atol=1e-5, rtol=0)


def test_loraplus_groups_as_peft(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    """B (and DoRA's magnitudes) at ratio x the rate, A and the head at the rate: peft's create_loraplus_optimizer's
    groups, run through the script."""
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    import train_lora

    seen = {}
    build, adamw = train_lora.build, train_lora.models.adamw

    def kept_build(args, accelerator):
        seen["built"] = build(args, accelerator)
        return seen["built"]

    def kept_adamw(groups, lr, eps, accelerator):
        seen["groups"] = groups
        return adamw(groups, lr, eps, accelerator)

    monkeypatch.setattr(train_lora, "build", kept_build)
    monkeypatch.setattr(train_lora.models, "adamw", kept_adamw)
    extra = ["--use_dora", "--loraplus_lr_ratio", "16", "--max_train_steps", "1", "--learning_rate", "1e-3"]
    run_in_process("train_lora.py", lora_args(tiny_gpt2, glue_dir, tmp_path / "out", *extra))

    def kind(name):
        return "B" if "lora_B" in name else "m" if "magnitude" in name else "A" if "lora_A" in name else "head"

    def rates(model, groups):
        lr = {id(p): g.get("lr", 1e-3) for g in groups for p in g["params"]}
        out = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                out.setdefault(kind(n), set()).add(lr[id(p)])
        return out

    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    config = LoraConfig(r=4, target_modules=["c_attn"], use_dora=True, task_type="SEQ_CLS", fan_in_fan_out=True)
    theirs = get_peft_model(model, config)
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    expected = {"A": {1e-3}, "B": {16e-3}, "m": {16e-3}, "head": {1e-3}}
    assert rates(theirs, optimizer.param_groups) == expected
    assert rates(seen["built"][3], seen["groups"]) == expected


@pytest.mark.parametrize("config", matrix(["single", "zero3", "fsdp", "zero3_bf16"]))
def test_dora_and_rslora_train_reload_and_export(config, tiny_gpt2, glue_dir, tmp_path):
    """The script with --use_dora --use_rslora: it learns; predict.load_run, peft's PeftModel and the merged folder
    (DoRA folded into W) each give the run's eval logits; under ZeRO-3 and FSDP2 too (the norm's W gathered as the
    layer's, every rank alike)."""
    from peft import PeftModel

    out, merged = tmp_path / "out", tmp_path / "merged"
    args = lora_args(tiny_gpt2, glue_dir, out, "--use_dora", "--use_rslora", "--merge_and_save", merged)
    if config == "single":
        run_in_process("train_lora.py", args)
    else:
        check_ok(launch("train_lora.py", config, args))
    res = results(out)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert losses[-1] < losses[0], losses
    assert res["lora_params"] == 2 * (2 * 4 * (32 + 32) + 2 * 32)  # the pairs and the magnitudes of q and v
    atol = 5e-2 if "bf16" in config else 1e-5
    check_load_trained(out, tiny_gpt2, glue_dir, atol)
    batches = list(eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    theirs = saved_eval_logits(out, "sst2")
    config_json = json.load(open(out / "peft" / "adapter_config.json"))
    assert config_json["use_dora"] and config_json["use_rslora"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).eval()
    base.config.pad_token_id = 0
    torch.testing.assert_close(
        logits_of(PeftModel.from_pretrained(base, out / "peft"), batches), theirs, atol=atol, rtol=0
    )
    merged_model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    torch.testing.assert_close(logits_of(merged_model, batches), theirs, atol=atol, rtol=0)
