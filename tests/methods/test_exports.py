"""Train here, use anywhere: each script's export, loaded by the library it is written for, gives
the logits of our own reload of the run's weights (1e-5, fp32). peft 0.21 (prompt tuning, LoRA)
loads beside us; peft 0.17.1 (prefix tuning) and AdapterHub `adapters` 1.3 load in the reference
environment (bench/refenv.py; those tests are marked `reference`). After a single-process run (in this process) and after a
ZeRO-3 run on 2 processes (marked slow)."""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bench.refenv import env as reference_env
from bench.refenv import python as reference_python
from bench.tiny import make_tiny_bert
from common.models import freeze_backbone
from predict import load_trainable
from tests.helpers import ROOT, check_ok, launch, run_in_process
from train_adapter import add_adapters
from train_lora import add_lora
from train_prefix import PrefixTuning, prefix_text_ids
from train_prefix import parse_args as parse_prefix_args
from train_prompt import PromptTuning


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")))


def train(script, config, model_dir, glue_dir, out, *flags):
    args = [
        "--task",
        "sst2",
        "--model_name_or_path",
        model_dir,
        "--data_dir",
        glue_dir,
        "--output_dir",
        str(out),
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--max_train_steps",
        "4",
        "--learning_rate",
        "1e-2",
        *flags,
    ]
    if config == "single":
        run_in_process(script, args)
    else:
        check_ok(launch(script, config, args))


def inputs(model_dir):
    """Four unpadded rows (all as long as the shortest): where peft's prompt pooling is right."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(
        [
            "a charming film , truly charming",
            "a dull story , simply dull",
            "a witty script",
            "a messy drama , really messy",
        ]
    )["input_ids"]
    ids = torch.tensor([row[: min(map(len, ids))] for row in ids])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def plain(model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    return model


def reference_logits(specs, tmp_path):
    """Load each export in the reference environment; its logits, in order."""
    path = tmp_path / "specs.json"
    json.dump(specs, open(path, "w"))
    proc = subprocess.run(
        [reference_python(), os.path.join(ROOT, "tests", "reference", "load_exports.py"), str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=reference_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [load_file(s["out"])["logits"] for s in specs]


def spec(model_dir, library, export, batch, tmp_path, name, layer_norms=None):
    save_file(batch, tmp_path / f"{name}-inputs.safetensors")
    return {
        "base": model_dir,
        "library": library,
        "export": str(export),
        "num_labels": 2,
        "inputs": str(tmp_path / f"{name}-inputs.safetensors"),
        "out": str(tmp_path / f"{name}-logits.safetensors"),
        "layer_norms": str(layer_norms) if layer_norms else None,
    }


def with_batch(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


SINGLE_AND_SHARDED = ["single"] + [pytest.param(c, marks=pytest.mark.slow) for c in ("zero3", "fsdp")]


@pytest.mark.parametrize("config", SINGLE_AND_SHARDED)
def test_prompt_tuning_loads_in_peft(config, tiny_gpt2, glue_dir, tmp_path):
    from peft import PeftModel

    out = tmp_path / "out"
    train("train_prompt.py", config, tiny_gpt2, glue_dir, out, "--num_virtual_tokens", "4")
    batch = inputs(tiny_gpt2)
    model = PromptTuning(plain(tiny_gpt2), torch.zeros(4, 32))
    load_trainable(model, out / "trainable.safetensors")
    theirs = with_batch(PeftModel.from_pretrained(plain(tiny_gpt2), out / "peft"), batch)
    torch.testing.assert_close(theirs, with_batch(model, batch), atol=1e-5, rtol=0)
    assert (theirs - with_batch(plain(tiny_gpt2), batch)).abs().max() > 1e-4  # the prompt and the head are used


@pytest.mark.reference
@pytest.mark.parametrize("config", SINGLE_AND_SHARDED)
def test_prefix_tuning_loads_in_peft_0_17(config, tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    train("train_prefix.py", config, tiny_gpt2, glue_dir, out, "--num_prefix", "4", "--prefix_hidden", "16")
    batch = inputs(tiny_gpt2)
    text = parse_prefix_args(["--task", "sst2"]).prefix_init_text  # the script's default init
    text_ids = prefix_text_ids(AutoTokenizer.from_pretrained(tiny_gpt2), text, 4)
    model = PrefixTuning(plain(tiny_gpt2), 4, hidden=16, text_ids=text_ids)
    load_trainable(model, out / "trainable.safetensors")
    [theirs] = reference_logits([spec(tiny_gpt2, "peft", out / "peft", batch, tmp_path, "prefix")], tmp_path)
    torch.testing.assert_close(theirs, with_batch(model, batch), atol=1e-5, rtol=0)


# (model, variant, layer norms, launch). Pfeiffer trains no layer norms.
ADAPTERS = (
    [(kind, "houlsby", norms, "single") for kind in ("gpt2", "bert") for norms in ("frozen", "trained")]
    + [(kind, "pfeiffer", "frozen", "single") for kind in ("gpt2", "bert")]
    + [
        pytest.param("gpt2", variant, "frozen", config, marks=pytest.mark.slow)
        for variant in ("houlsby", "pfeiffer")
        for config in ("zero3", "fsdp")
    ]
)


@pytest.mark.reference
@pytest.mark.parametrize("kind,variant,norms,config", ADAPTERS)
def test_adapters_load_in_adapterhub(kind, variant, norms, config, tiny_gpt2, tiny_bert, glue_dir, tmp_path, capsys):
    """Frozen layer norms: the export is everything. Trained ones (Houlsby's default) go beside it,
    in layer_norms.safetensors, and the run says so in one line."""
    model_dir = tiny_gpt2 if kind == "gpt2" else tiny_bert
    out = tmp_path / "out"
    flags = ["--variant", variant, "--reduction_factor", "4"] + (["--freeze_layer_norms"] if norms == "frozen" else [])
    train("train_adapter.py", config, model_dir, glue_dir, out, *flags)
    beside = out / "adapterhub" / "layer_norms.safetensors"
    assert beside.exists() == (variant == "houlsby" and norms == "trained")
    if config == "single" and beside.exists():
        assert "they are in adapterhub/layer_norms.safetensors" in capsys.readouterr().out
    batch = inputs(model_dir)
    model = plain(model_dir)
    freeze_backbone(model)
    add_adapters(model, variant, 8, train_layer_norms=variant == "houlsby" and norms == "trained", ln_before=None)
    load_trainable(model, out / "trainable.safetensors")
    [theirs] = reference_logits(
        [
            spec(
                model_dir,
                "adapterhub",
                out / "adapterhub",
                batch,
                tmp_path,
                "adapters",
                beside if beside.exists() else None,
            )
        ],
        tmp_path,
    )
    torch.testing.assert_close(theirs, with_batch(model, batch), atol=1e-5, rtol=0)
    assert (theirs - with_batch(plain(model_dir), batch)).abs().max() > 1e-4


def label_of_a_sentence(folder):
    """transformers' pipeline on a model folder: a label name of the task for a sentence."""
    classify = pipeline("text-classification", model=str(folder), device="cpu")
    return classify("a charming film , truly charming")[0]["label"]


@pytest.mark.parametrize("config", SINGLE_AND_SHARDED)
def test_full_fine_tuning_writes_a_model_folder(config, tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    train("train_full.py", config, tiny_gpt2, glue_dir, out)
    folder = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert folder.config.id2label == {0: "negative", 1: "positive"}
    model = plain(tiny_gpt2)
    load_trainable(model, out / "trainable.safetensors")
    batch = inputs(tiny_gpt2)
    torch.testing.assert_close(with_batch(folder, batch), with_batch(model, batch), atol=1e-5, rtol=0)
    assert label_of_a_sentence(out / "model") in ("negative", "positive")


def test_merged_lora_folder_serves_a_pipeline(tiny_gpt2, glue_dir, tmp_path):
    out, merged = tmp_path / "out", tmp_path / "merged"
    train("train_lora.py", "single", tiny_gpt2, glue_dir, out, "--lora_r", "4", "--merge_and_save", merged)
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= set(os.listdir(merged))
    model = plain(tiny_gpt2)
    freeze_backbone(model)
    add_lora(model, ["c_attn"], r=4, alpha=16, slices=["q", "v"])
    load_trainable(model, out / "trainable.safetensors")
    batch = inputs(tiny_gpt2)
    folder = AutoModelForSequenceClassification.from_pretrained(merged)
    torch.testing.assert_close(with_batch(folder, batch), with_batch(model, batch), atol=1e-5, rtol=0)
    assert label_of_a_sentence(merged) in ("negative", "positive")


def test_peft_exports_take_rows_as_outputs_md_says(tiny_gpt2, glue_dir, tmp_path):
    """docs/outputs.md, as written: peft's LoRA and prompt-tuning exports give the run's logits on rows fed one at a
    time, unpadded, and LoRA's on right-padded batches too; left padding shifts GPT-2's positions and moves them."""
    from peft import PeftModel

    from common.data import Collator
    from predict import load_run

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    texts = ["a charming film , truly charming", "a witty script", "a dull story , simply dull and long"]
    for script, flags in (("train_lora.py", []), ("train_prompt.py", ["--num_virtual_tokens", "4"])):
        out = tmp_path / script
        train(script, "single", tiny_gpt2, glue_dir, out, *flags)
        _, ours = load_run(str(out))
        theirs = PeftModel.from_pretrained(plain(tiny_gpt2), out / "peft").eval()
        collate = Collator(tok.eos_token_id)
        expected = []
        for i, text in enumerate(texts):  # one row at a time, unpadded
            batch = collate([{**tok(text), "label": 0, "idx": i}])
            batch.pop("idx"), batch.pop("labels")
            expected.append(with_batch(ours, batch))
            unpadded = {k: torch.tensor([v]) for k, v in tok(text).items()}
            torch.testing.assert_close(with_batch(theirs, unpadded), expected[-1], atol=1e-5, rtol=0)
        expected = torch.cat(expected)
        tok.padding_side = "left"
        tok.pad_token = tok.eos_token
        left = dict(tok(texts, padding=True, return_tensors="pt"))
        assert (with_batch(theirs, left) - expected).abs().max() > 1e-3  # positions shift: other logits
        if script == "train_lora.py":  # GPT-2 finds each row's last real token from pad_token_id
            tok.padding_side = "right"
            right = dict(tok(texts, padding=True, return_tensors="pt"))
            torch.testing.assert_close(with_batch(theirs, right), expected, atol=1e-5, rtol=0)
