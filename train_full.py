"""Full fine-tuning of a sequence classifier on a GLUE task: the baseline of every PEFT script.

Every weight of the pretrained model is trained, with a classification head on top
(GPT-2 pools the hidden state of the last real token of each row). It is the most accurate
and the most expensive method: the optimizer keeps two fp32 moments for each weight, and a
checkpoint is the whole model. The PEFT scripts share this loop and change what is trained.

    python train_full.py --task rte                                   # one process
    accelerate launch --config_file accelerate_configs/ddp.yaml train_full.py --task rte
    accelerate launch --config_file accelerate_configs/zero3.yaml train_full.py --task rte \
        --model_name_or_path gpt2-xl

Outputs in --output_dir: results.json (final and best metrics, parameter counts, speed),
model/ (a standard transformers folder: from_pretrained, pipeline), trainable.safetensors (here:
every weight), best/trainable.safetensors, args.json, and checkpoints/step_N when
--checkpointing_steps is set.
"""
import os

from accelerate.utils import set_seed
from transformers import get_scheduler

from common.checkpoint import save_model_folder, trainable_names
from common.data import get_task
from common.errors import run_main
from common.launch import (adamw, base_parser, check_args, count_params, load_model, make_accelerator,
                           make_dataloaders, optimizer_groups, takes_position_ids)
from common.run import Run


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    # Full fine-tuning adds no flags of its own; each PEFT script adds its method's flags here.
    return check_args(parser.parse_args(argv), "full")


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    run = Run(args, accelerator, "full", outputs=["model"])  # owns OUTPUT_DIR: logs, weights, results
    set_seed(args.seed)
    tokenizer, model = load_model(args, get_task(args.task))

    # The method: nothing to add. Every parameter trains and is saved.
    names = trainable_names(model)
    trainable, total = count_params(model)
    accelerator.print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    train_loader, eval_loaders = make_dataloaders(args, accelerator, tokenizer, takes_position_ids(model))
    optimizer = adamw(optimizer_groups(model.parameters(), args.weight_decay), args)
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
    # OUTPUT_DIR/model: a standard transformers folder, for from_pretrained and pipeline() (gathered under ZeRO-3)
    save_model_folder(accelerator, model, tokenizer, os.path.join(args.output_dir, "model"))
    run.close(trainable, total)  # results.json


if __name__ == "__main__":
    run_main(main)
