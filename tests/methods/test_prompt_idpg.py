"""train_prompt.py and train_idpg.py: the methods against peft and the seed's counts, padding
invariance, every IDPG variant, and both scripts in this process and under every launch config
(single and ZeRO-3 in the default suite, the others with -m slow)."""

import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2Model,
)

from bench.tiny import gpt2 as tiny
from common.data import Collator
from predict import load_trainable
from tests.helpers import (
    ROOT,
    args_for,
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
from train_idpg import IDPG
from train_idpg import parse_args as idpg_args
from train_prompt import PromptTuning, initial_prompt
from train_prompt import parse_args as prompt_args


def test_prompt_tuning_trains_unclipped_by_default_and_idpg_clipped(tmp_path, monkeypatch):
    """Clipped at 1.0 prompt tuning lost 16.5 points on SmolLM2 SST-2: its default is no clipping; IDPG's is 1.0
    (it learned as well clipped). A value on the command line wins."""
    monkeypatch.chdir(tmp_path)
    assert prompt_args(["--task", "sst2"]).max_grad_norm == 0.0
    assert idpg_args(["--task", "sst2"]).max_grad_norm == 1.0
    assert prompt_args(["--task", "sst2", "--max_grad_norm", "1"]).max_grad_norm == 1.0


def test_prompt_tuning_equals_peft_at_the_same_prompt():
    from peft import PromptTuningConfig, get_peft_model

    prompt = torch.randn(5, 32) * 0.3
    ours = PromptTuning(tiny(), prompt.clone()).eval()
    ref = get_peft_model(tiny(), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5)).eval()
    ref.prompt_encoder["default"].embedding.weight.data.copy_(prompt)
    # unpadded: peft cannot handle padding here
    ids = torch.tensor([[5, 17, 42, 9, 3, 8], [7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = ref(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - tiny()(input_ids=ids).logits).abs().max() > 1e-4  # the prompt does something


@pytest.mark.parametrize("kind", ["prompt", "idpg"])
def test_logits_independent_of_padding_side_and_batch_makeup(kind):
    if kind == "prompt":
        model = PromptTuning(tiny(), torch.randn(4, 32) * 0.3).eval()
    else:
        torch.manual_seed(1)
        model = IDPG(tiny(), GPT2Model(tiny().config), num_tokens=4, hidden=8).eval()
    rows = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "label": 0, "idx": i}
        for i, ids in enumerate([[5, 6, 7], [9, 10, 11, 12, 13, 14], [20, 21, 22, 23]])
    ]

    def run(rows, side):
        batch = Collator(0, side)(rows)
        batch.pop("idx")
        with torch.no_grad():
            return model(**batch).logits

    right = run(rows, "right")
    torch.testing.assert_close(run(rows, "left"), right, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([run([r], "right") for r in rows]), right, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(rows[::-1], "right"), right.flip(0), atol=1e-5, rtol=0)


def test_prompt_init_from_vocab_and_text(tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    table = model.get_input_embeddings().weight
    torch.manual_seed(3)
    vocab = initial_prompt(model, tok, 7, "vocab")
    assert vocab.shape == (7, 32) and all(any(torch.equal(v, row) for row in table) for v in vocab)
    ids = tok("great movie", add_special_tokens=False)["input_ids"]
    text = initial_prompt(model, tok, 7, "text", "great movie")
    assert torch.equal(text, table[(ids * 7)[:7]])
    with pytest.raises(ValueError, match="no tokens"):
        initial_prompt(model, tok, 7, "text", "")


def test_seed_idpg_counts_at_gpt2_xl_from_configs_alone():
    """GPT2-XL backbone, GPT-2 encoder, MNLI (3 labels, bias-free head): the seed's two figures."""
    counts = {}
    for prompt_only in (False, True):
        with torch.device("meta"):
            backbone = GPT2ForSequenceClassification(GPT2Config(n_embd=1600, n_layer=48, n_head=25, num_labels=3))
            encoder = GPT2Model(GPT2Config())
            model = IDPG(backbone, encoder, prompt_only=prompt_only)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        counts[prompt_only] = (trainable, round(100 * trainable / total, 3))
    assert counts == {False: (12_620_096, 0.745), True: (12_635_456, 0.746)}


def script_args(script, tiny_gpt2, glue_dir, out, *extra):
    rates = (
        ["--prompt_learning_rate", "0.1"]
        if script == "train_prompt.py"
        else ["--prompt_learning_rate", "1e-2", "--encoder_name_or_path", tiny_gpt2, "--generator_hidden", "16"]
    )
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
        "--num_train_epochs",
        "3",
        "--eval_steps",
        "4",
        "--learning_rate",
        "2e-2",
        "--num_virtual_tokens",
        "4",
        *rates,
        *extra,
    ]


def check_losses(out):
    res = results(out)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    return res


def reload(script, tiny_gpt2, out, encoder=None, **kw):
    """A plain (not distributed) model of the method with the run's saved weights; `encoder`
    "self" for the backbone itself, else the tiny model as a separate encoder."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    model.config.pad_token_id = 0
    if script == "train_prompt.py":
        model = PromptTuning(model, torch.zeros(4, 32))
    else:
        encoder = None if encoder == "self" else AutoModel.from_pretrained(tiny_gpt2)
        model = IDPG(model, encoder, num_tokens=4, hidden=16, **kw)
    load_trainable(model, out / "trainable.safetensors")
    return model.eval()


def check_script_run(script, out, tiny_gpt2, glue_dir, atol):
    """Loss goes down; the saved weights (prompt or generator, and the head), loaded with the
    pretrained frozen weights into a plain model, reproduce the run's eval logits: so nothing
    frozen moved, and the checkpoint holds everything the method needs."""
    res = check_losses(out)
    saved = load_file(out / "trainable.safetensors")
    prefix = "prompt" if script == "train_prompt.py" else "generator."
    assert any(n.startswith(prefix) for n in saved) and all(n.startswith((prefix, "model.score.")) for n in saved)
    assert sum(t.numel() for t in saved.values()) == res["trainable_params"]
    ours = logits_of(reload(script, tiny_gpt2, out), eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=atol, rtol=0)
    check_load_trained(out, tiny_gpt2, glue_dir, atol)


@pytest.mark.parametrize("script", ["train_prompt.py", "train_idpg.py"])
def test_script_in_process(script, tiny_gpt2, glue_dir, tmp_path):
    run_in_process(script, script_args(script, tiny_gpt2, glue_dir, tmp_path / "out"))
    check_script_run(script, tmp_path / "out", tiny_gpt2, glue_dir, 1e-5)


@pytest.mark.parametrize("script", ["train_prompt.py", "train_idpg.py"])
@pytest.mark.parametrize("config", matrix(["single", "ddp", "bf16", "zero1", "zero2", "zero3", "zero3_bf16"]))
def test_script_under_every_config(script, config, tiny_gpt2, glue_dir, tmp_path):
    check_ok(launch(script, config, script_args(script, tiny_gpt2, glue_dir, str(tmp_path / "out"))))
    check_script_run(script, tmp_path / "out", tiny_gpt2, glue_dir, 5e-2 if "bf16" in config else 1e-5)


@pytest.mark.parametrize(
    "variant,flags,kw",
    [
        ("trained", ["--train_encoder"], {"train_encoder": True}),
        ("pg", ["--prompt_only"], {"prompt_only": True}),
        ("self", ["--encoder_name_or_path", "self"], {"encoder": "self"}),
        ("phm", ["--generator", "phm", "--phm_n", "4"], {"generator": "phm", "phm_n": 4}),
        (
            "m-idpg",
            ["--encoder_name_or_path", "self", "--prompt_layers", "all"],
            {"encoder": "self", "prompt_layers": "all"},
        ),
    ],
)
def test_idpg_variants_train_and_reload(variant, flags, kw, tiny_gpt2, glue_dir, tmp_path):
    from accelerate.utils import set_seed

    out = tmp_path / "out"
    run_in_process("train_idpg.py", script_args("train_idpg.py", tiny_gpt2, glue_dir, out, *flags))
    check_losses(out)
    saved = load_file(out / "trainable.safetensors")
    if variant == "trained":
        assert any(n.startswith("encoder.") for n in saved)
    if variant == "pg":
        assert "instance" in saved
    if variant == "m-idpg":
        assert saved["layer_bias"].shape == (1, 4 * 32) and saved["layer_bias"].abs().max() > 0
    model = reload("train_idpg.py", tiny_gpt2, out, **kw)
    ours = logits_of(model, eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=1e-5, rtol=0)
    check_load_trained(out, tiny_gpt2, glue_dir, 1e-5)  # every variant from its folder alone
    set_seed(42)  # the script's starting point: the generator changed
    base = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2)
    encoder = None if variant in ("self", "m-idpg") else AutoModel.from_pretrained(tiny_gpt2)
    init = IDPG(base, encoder, num_tokens=4, hidden=16, **{k: v for k, v in kw.items() if k != "encoder"})
    init = dict(init.named_parameters())
    changed = [n for n in saved if n.startswith("generator.") and not torch.equal(saved[n], init[n])]
    assert changed == [n for n in saved if n.startswith("generator.")]


def test_idpg_cache_gives_the_same_logits(tiny_gpt2, glue_dir, tmp_path):
    run_in_process("train_idpg.py", script_args("train_idpg.py", tiny_gpt2, glue_dir, tmp_path / "cached"))
    run_in_process(
        "train_idpg.py", script_args("train_idpg.py", tiny_gpt2, glue_dir, tmp_path / "uncached", "--no_cache")
    )
    # Equal up to float rounding: a cached row was encoded in another batch (another padded width).
    torch.testing.assert_close(
        saved_eval_logits(tmp_path / "cached", "sst2"),
        saved_eval_logits(tmp_path / "uncached", "sst2"),
        atol=1e-5,
        rtol=0,
    )
    for a, b in zip(results(tmp_path / "cached")["log_history"], results(tmp_path / "uncached")["log_history"]):
        assert a == pytest.approx(b, abs=1e-5)


def test_the_headline_command(tiny_gpt2, real_glue, tmp_path):
    """The README's `accelerate launch --config_file accelerate_configs/zero3.yaml train_idpg.py --task rte`,
    on 2 CPU processes with a tiny local model as backbone and encoder, offline, on real RTE rows."""
    proc = launch(
        "train_idpg.py",
        "zero3",
        [
            "--task",
            "rte",
            "--model_name_or_path",
            tiny_gpt2,
            "--encoder_name_or_path",
            tiny_gpt2,
            "--data_dir",
            real_glue,
            "--output_dir",
            str(tmp_path / "out"),
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "32",
            "--num_train_epochs",
            "1",
        ],
    )
    check_ok(proc)
    assert "final rte idpg: accuracy" in proc.stdout
    assert (
        "accelerate launch --config_file accelerate_configs/zero3.yaml train_idpg.py --task rte"
        in open(os.path.join(ROOT, "README.md")).read()
    )


def test_m_idpg_under_zero3(tiny_gpt2, glue_dir, tmp_path):
    """The per-layer hooks call the generator inside ZeRO-3's forward: it trains and reloads."""
    out = tmp_path / "out"
    check_ok(
        launch(
            "train_idpg.py",
            "zero3",
            script_args(
                "train_idpg.py",
                tiny_gpt2,
                glue_dir,
                str(out),
                "--encoder_name_or_path",
                "self",
                "--prompt_layers",
                "all",
            ),
        )
    )
    check_losses(out)
    model = reload("train_idpg.py", tiny_gpt2, out, encoder="self", prompt_layers="all")
    ours = logits_of(model, eval_batches(tiny_gpt2, glue_dir, "sst2", 32))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoder", ["self", "separate"])
def test_fresh_idpg_is_prompt_tuning(encoder):
    """The default start (--generator_init prompt): the generator's output is its last bias, rows of
    the embedding table, for every input: the logits of prompt tuning with that prompt."""
    torch.manual_seed(1)
    model = IDPG(tiny(), GPT2Model(tiny().config) if encoder == "separate" else None, num_tokens=4, hidden=8).eval()
    table = tiny().get_input_embeddings().weight
    prompt = model.generator[-1].bias.detach().view(4, 32)
    assert all(any(torch.equal(row, t) for t in table) for row in prompt)  # rows of the table
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 10, 11, 12, 13]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs = PromptTuning(tiny(), prompt.clone())(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_original_generator_init_is_the_seed_architecture():
    """--generator_init original: no scaling of r, PyTorch's default initialisation (the last
    layer's weights are not zero), the same parameters as the default."""
    torch.manual_seed(1)
    original = IDPG(tiny(), num_tokens=4, hidden=8, init="original")
    default = IDPG(tiny(), num_tokens=4, hidden=8)
    assert [type(m).__name__ for m in original.generator] == ["Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in default.generator] == ["UnitRMS", "Linear", "ReLU", "Linear"]
    assert original.generator[-1].weight.abs().min() > 0 and not default.generator[-1].weight.any()
    shapes = lambda m: sorted(tuple(p.shape) for p in m.generator.parameters())  # noqa: E731
    assert shapes(original) == shapes(default)


def test_m_idpg_changes_later_layers_only_through_the_hooks():
    """With a zero generator output and zero biases, M-IDPG is S-IDPG; a bias moves the logits."""
    torch.manual_seed(0)
    s_idpg = IDPG(tiny(), num_tokens=3, hidden=8).eval()
    torch.manual_seed(0)
    m_idpg = IDPG(tiny(), num_tokens=3, hidden=8, prompt_layers="all").eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        m_idpg.generator[-1].weight.zero_(), m_idpg.generator[-1].bias.zero_()
        s_idpg.generator[-1].weight.zero_(), s_idpg.generator[-1].bias.zero_()
        a = s_idpg(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = m_idpg(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        m_idpg.layer_bias.normal_()  # (a constant would vanish in the next LayerNorm)
        assert (m_idpg(input_ids=ids, attention_mask=torch.ones_like(ids)).logits - a).abs().max() > 1e-4


@pytest.mark.parametrize("encoder_dropout,prompt_only", [(True, False), (False, False), (False, True)])
def test_encoder_dropout_changes_r_every_training_forward(encoder_dropout, prompt_only):
    """The backbone has no dropout here, the encoder has: two training-mode forwards of the same
    batch differ only when the encoder runs in train mode (PG's always does, as the original's)."""
    encoder = GPT2Model(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=100,
            n_positions=64,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
        )
    )
    kw = dict(encoder_dropout=encoder_dropout, init="original", prompt_only=prompt_only)
    model = IDPG(tiny(), encoder, num_tokens=4, hidden=8, **kw).train()  # (the default G ignores r at first)
    assert model.cache == (not encoder_dropout and not prompt_only)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        a, b = (model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(2))
        assert (not torch.equal(a, b)) == (encoder_dropout or prompt_only)
        model.eval()  # evaluation: dropout off, the same r every time
        c, d = (model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(2))
        assert torch.equal(c, d)


def test_encoder_self_is_the_backbone_even_beside_a_folder_named_self(tiny_gpt2, tmp_path, monkeypatch):
    (tmp_path / "self").mkdir()  # (it was read as a folder, made absolute, and loaded as the encoder)
    monkeypatch.chdir(tmp_path)
    flags = ["--task", "rte", "--model_name_or_path", tiny_gpt2, "--output_dir", str(tmp_path / "out")]
    assert idpg_args([*flags, "--encoder_name_or_path", "self"]).encoder_name_or_path == "self"


def test_idpg_encodes_only_the_rows_its_steps_use(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    """A frozen encoder's table holds r of the rows the run trains on: 2 steps of 8 rows encode 16 of the 32, not the
    whole training set before step 1; an epoch or more encodes every row."""
    import train_idpg

    cached = []
    fill = train_idpg.IDPG.cache_states

    def counting(self, *args, **kwargs):
        fill(self, *args, **kwargs)
        cached.append(len(self.keys))

    monkeypatch.setattr(train_idpg.IDPG, "cache_states", counting)
    flags = ["--encoder_name_or_path", "self", "--num_virtual_tokens", "4", "--max_train_samples", "32"]
    for out, steps in (("short", "2"), ("epoch", "4")):
        run_in_process(
            "train_idpg.py", args_for(tiny_gpt2, glue_dir, tmp_path / out, *flags, "--max_train_steps", steps)
        )
    assert cached == [16, 32]
