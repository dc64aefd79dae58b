"""One reference-library run for bench/accuracy.py and bench/accuracy_smollm2.py: the same model,
data, budget and learning rates as our script's run, with the method built by HF `peft` or
AdapterHub `adapters`.

    python bench/reference_train.py --library peft --method lora --task sst2 --seed 0 ...

AdapterHub and peft's prefix tuning need transformers 4.57, so bench/accuracy.py runs those in
the reference environment (tests/reference_env.py), where `datasets` does not import: the data
is read with common.data.read_tsv and tokenised here. Prints one JSON line: the dev metrics.
"""

import argparse
import json
import math
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common.data import Collator, LengthGroupedSampler, read_tsv  # noqa: E402
from common.metrics import glue_metrics  # noqa: E402
from common.tasks import TASKS, TSV_FILES  # noqa: E402

LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}  # as train_lora.py's defaults
HEAD = {"bert": "classifier", "gpt2": "score", "llama": "score"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--library", choices=["peft", "adapters"], required=True)
    p.add_argument("--method", choices=["lora", "prefix", "prompt", "houlsby", "pfeiffer"], required=True)
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_train_samples", type=int, required=True)
    p.add_argument("--num_train_epochs", type=int, default=1)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--per_device_train_batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, required=True, help="the classification head's")
    p.add_argument("--method_learning_rate", type=float, required=True, help="the method's parameters'")
    p.add_argument("--num_virtual_tokens", type=int, default=20)
    p.add_argument("--num_prefix", type=int, default=10)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=float, default=16)
    p.add_argument("--reduction_factor", type=int, default=16)
    p.add_argument(
        "--group_by_length",
        action="store_true",
        help="batches of rows of similar lengths (common.data.LengthGroupedSampler)",
    )
    p.add_argument("--max_grad_norm", type=float, default=0.0, help="clip the gradients' norm to this; 0: no clipping")
    return p.parse_args()


def add_method(
    model, library, method, lora_r=8, lora_alpha=16, num_prefix=10, num_virtual_tokens=20, reduction_factor=16, **_
):
    """The reference library's method on the model (keywords: the flags of the same names);
    afterwards only it and the head train."""
    if library == "peft":
        from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        config = {
            "lora": lambda: LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=0.0,
                target_modules=LORA_TARGETS[model.config.model_type],
            ),
            "prefix": lambda: PrefixTuningConfig(
                task_type=TaskType.SEQ_CLS,
                num_virtual_tokens=num_prefix,
                prefix_projection=True,
                encoder_hidden_size=512,
            ),
            "prompt": lambda: PromptTuningConfig(
                task_type=TaskType.SEQ_CLS,
                num_virtual_tokens=num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            ),
        }[method]()
        return get_peft_model(model, config)
    import adapters

    adapters.init(model)
    config = {"houlsby": adapters.DoubleSeqBnConfig, "pfeiffer": adapters.SeqBnConfig}[method]
    model.add_adapter("bench", config=config(reduction_factor=reduction_factor))
    model.train_adapter("bench")  # freezes everything else, the HF head included
    getattr(model, HEAD[model.config.model_type]).requires_grad_(True)
    return model


def rows(path, task, tokenizer, max_length):
    data = read_tsv(task, path)
    enc = tokenizer(*[data[k] for k in TASKS[task].text_keys], truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [
        {**{k: enc[k][i] for k in keys}, "label": data["label"][i], "idx": data["idx"][i]}
        for i in range(len(data["label"]))
    ]


def main():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    args = parse_args()
    torch.manual_seed(args.seed)
    task = TASKS[args.task]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:  # as our scripts: pad with eos (masked)
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=task.num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = add_method(model, **vars(args)).to(device)
    folder = os.path.join(args.data_dir, task.tsv_dir)
    train = rows(os.path.join(folder, "train.tsv"), args.task, tokenizer, args.max_length)[: args.max_train_samples]
    dev = rows(os.path.join(folder, TSV_FILES[task.eval_splits[0]]), args.task, tokenizer, args.max_length)
    # peft's prompt tuning hands the model embeddings, and a decoder's classifier then reads the last
    # position: pad on the left so that it is a real token (as train_prompt.py packs its rows).
    side = "left" if args.method == "prompt" and model.config.model_type == "llama" else tokenizer.padding_side
    collate = Collator(tokenizer.pad_token_id, side, positions=False)
    order = {"shuffle": True, "generator": torch.Generator().manual_seed(args.seed)}
    if args.group_by_length:  # few pads between peft's prompt and the text
        lengths = [len(r["input_ids"]) for r in train]
        order = {"sampler": LengthGroupedSampler(lengths, args.per_device_train_batch_size, args.seed)}
    loader = DataLoader(train, batch_size=args.per_device_train_batch_size, collate_fn=collate, **order)
    is_head = lambda name: HEAD[model.config.model_type] in name.split(".")  # noqa: E731
    head = [p for n, p in model.named_parameters() if p.requires_grad and is_head(n)]
    method = [p for n, p in model.named_parameters() if p.requires_grad and not is_head(n)]
    optimizer = torch.optim.AdamW(
        [{"params": method, "lr": args.method_learning_rate}, {"params": head, "lr": args.learning_rate}],
        weight_decay=0.0,
    )
    steps = args.num_train_epochs * math.ceil(len(train) / args.per_device_train_batch_size)
    scheduler = get_scheduler("linear", optimizer, 0, steps)
    model.train()
    for _ in range(args.num_train_epochs):
        for batch in loader:
            batch.pop("idx")
            batch = {k: v.to(device) for k, v in batch.items()}
            model(**batch).loss.backward()
            if args.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dev, batch_size=64, collate_fn=collate):
            batch.pop("idx")
            labels.append(batch.pop("labels"))
            batch = {k: v.to(device) for k, v in batch.items()}
            preds.append(model(**batch).logits.argmax(-1).cpu())
    metrics = glue_metrics(args.task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
    print(json.dumps({"metrics": metrics, "trainable_params": sum(p.numel() for p in head + method)}))


if __name__ == "__main__":
    main()
