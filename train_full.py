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

from common.args import base_parser, check_args
from common.errors import check_early


def parse_args(argv=None):
    parser = base_parser(__doc__)
    # Full fine-tuning adds no flags of its own; each PEFT script adds its method's flags here.
    return check_args(parser.parse_args(argv), "full")


if __name__ == "__main__":
    check_early(parse_args)  # --help and bad flags answer before the imports below take seconds

import os

from accelerate.utils import set_seed
from transformers import get_scheduler

import exports
from common.checkpoint import trainable_names
from common.data import make_dataloaders
from common.errors import run_main
from common.model import adamw, load_model, optimizer_groups, takes_position_ids
from common.run import Run, make_accelerator


def add_method(model, tokenizer, **_):
    """Full fine-tuning adds nothing: every parameter trains (for exports.load_trained)."""
    return model


def main(argv=None):
    args = parse_args(argv)
    accelerator = make_accelerator(**vars(args))
    run = Run(accelerator, "full", outputs=["model"], **vars(args))  # owns OUTPUT_DIR
    set_seed(args.seed)
    tokenizer, model = load_model(**vars(args))

    # The method: nothing to add. Every parameter trains and is saved.
    names = trainable_names(model)

    positions = takes_position_ids(model)
    train_loader, eval_loaders = make_dataloaders(accelerator, tokenizer, positions, **vars(args))
    optimizer = adamw(optimizer_groups(model.parameters(), args.weight_decay), **vars(args))
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

    trained = run.finish()  # the final metrics, trainable.safetensors (every weight), predictions
    if accelerator.is_main_process:  # OUTPUT_DIR/model: a standard transformers folder
        config = accelerator.unwrap_model(model).config
        exports.transformers_folder(
            os.path.join(args.output_dir, "model"), trained, config, tokenizer
        )
    run.close()  # results.json


if __name__ == "__main__":
    run_main(main)
