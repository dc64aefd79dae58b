"""Nothing silently wrong: each way a run used to exit 0 with a wrong result, or die with a
traceback, now gives one line that says what to do and a non-zero exit, through the command line
(`cli`: the script's main() under run_main, as `python train_X.py` runs it; a real process where
signals, locks and process groups are the point).

The numbered cases are those of the issue "Nothing silently wrong".
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from common.checkpoint import atomic_write_json, finite
from launch_utils import ROOT, cli, launch, results, run_in_process


def args_for(tiny_gpt2, data, out, *switches, **flags):
    """A command line: these defaults, `flags` (name=value) replacing or adding, then `switches`."""
    values = {"task": "sst2", "model_name_or_path": tiny_gpt2, "data_dir": data, "output_dir": out,
              "max_train_samples": 32, "max_eval_samples": 16, "per_device_train_batch_size": 8, **flags}
    return [x for k, v in values.items() for x in (f"--{k}", str(v))] + list(switches)


def one_line(code, err, expected_code=2):
    """The command line's contract: the exit status, exactly one message line, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted: ", "terminated: "))]
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, (code, err[-2000:])
    return lines[0]


def glue_copy(glue_dir, tmp_path, folder, name, text):
    """The fixtures, with one file replaced by `text` (bytes or str)."""
    data = tmp_path / "glue"
    shutil.copytree(glue_dir, data)
    path = data / folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return data


# 1. A fresh run into a folder left by a crashed run is refused; --overwrite_output_dir clears it.
def test_a_new_run_does_not_mix_with_a_crashed_runs_checkpoints(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--checkpointing_steps", "2"))
    (out / "results.json").unlink()  # as if it had crashed after its last checkpoint
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--learning_rate", "1e-3")))
    assert "holds another run's checkpoints" in message and "step_12" in message and "--overwrite_output_dir" in message
    code, _ = cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--learning_rate", "1e-3",
                                            "--overwrite_output_dir"))
    assert code == 0 and not (out / "checkpoints").exists()  # the old run's checkpoints are gone
    assert json.load(open(out / "args.json"))["learning_rate"] == 1e-3


# 2. Resume refuses other flags, naming them; resuming into another folder brings best/ along.
@pytest.mark.parametrize("changed,named", [({"lora_alpha": 32}, "--lora_alpha 16;"), ({"lora_r": 2}, "--lora_r 4;")])
def test_resume_refuses_other_flags(tiny_gpt2, glue_dir, tmp_path, changed, named):
    out = tmp_path / "out"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, lora_r=4, checkpointing_steps=2))
    message = one_line(*cli("train_lora.py", args_for(tiny_gpt2, glue_dir, out, **{"lora_r": 4, **changed},
                                                      resume_from_checkpoint="latest")))
    assert named in message and "same flags" in message


def test_resume_refuses_another_task_or_script(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, task="rte", checkpointing_steps=2))
    message = one_line(*cli("train_lora.py", args_for(tiny_gpt2, glue_dir, out, resume_from_checkpoint="latest")))
    assert "--task rte" in message and "--task sst2" in message
    message = one_line(*cli("train_prompt.py", args_for(tiny_gpt2, glue_dir, out, task="rte",
                                                        resume_from_checkpoint="latest")))
    assert "train_lora.py" in message and "train_prompt.py" in message


def test_resuming_into_another_folder_keeps_best(tiny_gpt2, glue_dir, tmp_path):
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, whole, "--checkpointing_steps", "2",
                                             "--eval_steps", "1", "--learning_rate", "1e-3"))
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, moved, "--checkpointing_steps", "2", "--eval_steps",
                                             "1", "--learning_rate", "1e-3", "--resume_from_checkpoint",
                                             whole / "checkpoints" / "step_2"))
    a, b = results(whole), results(moved)
    assert a["best_metrics"] == b["best_metrics"] and a["log_history"] == b["log_history"]
    best_a, best_b = (load_file(out / "best" / "trainable.safetensors") for out in (whole, moved))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


# 3, 4, 5, 6 and 11: data that does not fit is refused at load, naming the file and the line.
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
BAD_DATA = [
    ("no label column", "rte", "RTE", "dev.tsv", "index\tsentence1\tsentence2\n0\ta b\tc d\n", "no label column"),
    ("empty labels", "rte", "RTE", "dev.tsv", RTE_HEADER + "0\ta b\tc d\t\n", "line 2: label '' is not one of"),
    ("sts-b nan", "stsb", "STS-B", "train.tsv", None, "line 3: STS-B's score must be a number from 0 to 5, got 'nan'"),
    ("sts-b 7.5", "stsb", "STS-B", "train.tsv", None, "got '7.5'"),
    ("cola header, 4 columns", "cola", "CoLA", "train.tsv", "sentence\tlabel\ngj04\t1\t\tA fine sentence.\n",
     "line 2: 4 fields where the header has 2"),
    ("rte label 2", "rte", "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc d\tentailment\n1\ta b\tc d\t2\n",
     "line 3: label '2' is not one of entailment, not_entailment (or 0-1)"),
    ("missing column", "rte", "RTE", "train.tsv", "index\tsentence1\tlabel\n0\ta b\tentailment\n",
     "line 1: expected a header with the columns sentence1, sentence2"),
    ("unknown label", "rte", "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc d\tmaybe\n", "label 'maybe' is not one of"),
    ("extra tab", "rte", "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc\td\tentailment\n", "line 2: 5 fields"),
    ("not utf-8", "rte", "RTE", "train.tsv", (RTE_HEADER + "0\ta b\tc d\tentailment\n1\tcaf").encode() + b"\xe9" +
     b"\tc d\tentailment\n", "line 3: byte 0xe9 is not UTF-8"),
    ("header only", "rte", "RTE", "train.tsv", RTE_HEADER, "has no rows after its header"),
    ("empty", "rte", "RTE", "train.tsv", "", "is empty"),
]


@pytest.mark.parametrize("case,task,folder,name,text,expected", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_data_that_does_not_fit_is_refused(case, task, folder, name, text, expected, tiny_gpt2, glue_dir, tmp_path):
    if text is None:  # STS-B: the fixture with one score replaced
        lines = open(os.path.join(glue_dir, folder, name)).read().splitlines()
        lines[2] = lines[2].rsplit("\t", 1)[0] + "\t" + expected.rsplit("'", 2)[1]
        text = "\n".join(lines) + "\n"
    data = glue_copy(glue_dir, tmp_path, folder, name, text)
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, data, tmp_path / "out", task=task)))
    assert str(data / folder / name) in message and expected in message


def test_results_json_never_holds_nan(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"pearson": float("nan"), "history": [{"loss": float("inf")}, 1.5]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"pearson": None, "history": [{"loss": None}, 1.5]}
    assert finite({"a": (1.0, float("-inf"))}) == {"a": [1.0, None]}


# 4 and the NaN guard: a loss that is no longer finite stops the run, before anything is saved.
def test_a_nan_loss_stops_at_once(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--learning_rate", "1e6",
                                                      "--logging_steps", "1", "--checkpointing_steps", "1")))
    assert "the training loss is nan at step" in message and "lower --learning_rate" in message
    step = int(message.split("at step ")[1].split(":")[0])
    assert f"the last checkpoint is {out}/checkpoints/step_{step - 1}" in message
    assert not (out / "results.json").exists() and not (out / "trainable.safetensors").exists()
    for path in (out / "checkpoints").glob("step_*/model.safetensors"):
        assert all(t.isfinite().all() for t in load_file(path).values())  # no nan weights on disk


# 7 and 11: settings that cannot work are refused before any work.
def test_a_bottleneck_of_zero_is_refused(tiny_gpt2, glue_dir, tmp_path):
    message = one_line(*cli("train_adapter.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o", "--reduction_factor",
                                                         "100")))
    assert "--reduction_factor 100 leaves no bottleneck (hidden size 32)" in message


@pytest.mark.parametrize("script,flags,expected", [
    ("train_full.py", ["--max_length", "300"], "--max_length 300 is more than the 256 positions"),
    ("train_prompt.py", ["--max_length", "250"], "--max_length 250 + 20 method positions is more than the 256"),
])
def test_max_length_beyond_the_models_positions(tiny_gpt2, glue_dir, tmp_path, script, flags, expected):
    assert expected in one_line(*cli(script, args_for(tiny_gpt2, glue_dir, tmp_path / "o", *flags)))


def test_output_dir_that_is_a_file_or_unwritable(tiny_gpt2, glue_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, tmp_path / "file")))
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, "/proc/no-such-dir/out")))
    assert "cannot write to --output_dir /proc/no-such-dir/out" in message


# 10. A base model whose head has another size.
def test_a_head_of_another_size(tiny_gpt2, glue_dir, tmp_path):
    two_labels = tmp_path / "two-labels"
    AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).save_pretrained(two_labels)
    shutil.copy(os.path.join(tiny_gpt2, "tokenizer.json"), two_labels)
    shutil.copy(os.path.join(tiny_gpt2, "tokenizer_config.json"), two_labels)
    stsb = args_for(str(two_labels), glue_dir, tmp_path / "stsb", task="stsb")
    message = one_line(*cli("train_full.py", stsb))
    assert "has a classification head of another size than --task stsb needs (1 outputs)" in message
    assert "--ignore_mismatched_sizes" in message
    assert cli("train_full.py", stsb + ["--max_train_steps", "1", "--ignore_mismatched_sizes"])[0] == 0


# 9. A very long pair: the tokenizer sees texts cut to a bounded length.
def test_very_long_texts_are_cut_before_tokenizing(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    long = " ".join(["word"] * 15000)
    data = glue_copy(glue_dir, tmp_path, "RTE", "train.tsv",
                     RTE_HEADER + f"0\t{long}\t{long[:60000]}\tentailment\n1\ta b\tc d\tnot_entailment\n")
    seen = []
    call = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, text_pair=None, **kw):
        seen.extend(len(t) for t in (text or []) + (text_pair or []) if isinstance(t, str))
        return call(self, text, text_pair, **kw)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    code, err = cli("train_full.py", args_for(tiny_gpt2, data, tmp_path / "out", "--max_length", "16",
                                              "--max_train_steps", "1", task="rte"))
    assert code == 0, err[-2000:]
    assert seen and max(seen) <= 100 * 17  # instead of 75,000 characters


# 8. Two runs on one folder: the second is refused while the first runs; a dead run's lock is taken over.
def test_two_runs_on_one_folder(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "train_full.py", *args_for(tiny_gpt2, glue_dir, str(out),
                                                                         "--num_train_epochs", "400")],
                             cwd=ROOT, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (out / ".lock").exists():
                break
            time.sleep(0.1)
        proc = launch("train_full.py", "single", args_for(tiny_gpt2, glue_dir, str(out), "--overwrite_output_dir"))
        message = one_line(proc.returncode, proc.stderr)
        assert f"another run (pid {first.pid}) is writing to {out}" in message
    finally:
        first.kill()
        first.wait()
    assert (out / ".lock").exists()  # left by the killed run: the next run takes it over
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--overwrite_output_dir"))
    assert results(out)["method"] == "full" and not (out / ".lock").exists()


# 11. Ctrl-C and SIGTERM: one line that says where the last checkpoint is, exit 130 and 143.
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupts_say_where_the_last_checkpoint_is(tiny_gpt2, glue_dir, tmp_path, sig, code, word):
    out = tmp_path / "out"
    inherited = (signal.getsignal(sig), signal.pthread_sigmask(signal.SIG_BLOCK, []))  # for the message below

    def as_from_a_shell():  # a child inherits ignored and blocked signals: the run gets what a shell gives
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        signal.signal(sig, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "train_full.py", *args_for(
        tiny_gpt2, glue_dir, str(out), "--num_train_epochs", "100000", "--checkpointing_steps", "5")], cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=open(tmp_path / "stderr", "w"), stdout=subprocess.DEVNULL,
        preexec_fn=as_from_a_shell)
    # stderr goes to a file: a pipe nobody reads while we wait fills with progress bars and blocks the run.
    for _ in range(600):  # any checkpoint: older ones are removed as newer ones land, so step_5 may be gone
        if list((out / "checkpoints").glob("step_*[0-9]")):  # not step_N.tmp
            break
        time.sleep(0.1)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run ignored signal {sig}; this process had handler, blocked: {inherited}")
    message = one_line(proc.returncode, (tmp_path / "stderr").read_text(), expected_code=code)
    assert message.startswith(f"{word}: the last checkpoint is {out}/checkpoints/step_")
    assert "--resume_from_checkpoint latest" in message


# 12. The one-line error after the process group is up, under a distributed launch: every rank
# exits 2 (no SIGABRT from a gloo thread at exit), and one line is printed.
def test_an_error_after_the_process_group_is_up_exits_cleanly(tiny_gpt2, glue_dir, tmp_path):
    proc = launch("train_full.py", "ddp", args_for(tiny_gpt2, glue_dir, str(tmp_path / "o"),
                                                   "--resume_from_checkpoint", str(tmp_path / "nowhere")))
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: no checkpoint at '{tmp_path / 'nowhere'}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'"]
    # The launcher reports the ranks' exits (with its own traceback): the first is a clean 2, none aborted.
    codes = [line.split(":")[1].split()[0] for line in proc.stderr.splitlines() if line.strip().startswith("exitcode")]
    assert codes[-1] == "2" and "-6" not in codes, proc.stderr[-3000:]  # the root cause is listed last
    assert "terminate called" not in proc.stderr and "train_full.py\", line" not in proc.stderr


# Crash recovery, every script: resumed from a checkpoint, a run ends bitwise equal to one never stopped.
SCRIPTS = {"train_full.py": [], "train_lora.py": ["--lora_r", "4"], "train_prefix.py": ["--num_prefix", "4"],
           "train_adapter.py": ["--reduction_factor", "4"], "train_prompt.py": ["--num_virtual_tokens", "4"],
           "train_idpg.py": ["--num_virtual_tokens", "4", "--generator_hidden", "8", "--encoder_name_or_path", "self"]}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_resume_is_bitwise_equal_for_every_script(script, tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = ["--num_train_epochs", "2", "--eval_steps", "3", "--checkpointing_steps", "3", *SCRIPTS[script]]
    run_in_process(script, args_for(tiny_gpt2, glue_dir, whole, *extra))
    run_in_process(script, args_for(tiny_gpt2, glue_dir, resumed, *extra, "--resume_from_checkpoint",
                                    whole / "checkpoints" / "step_3"))
    a, b = results(whole), results(resumed)
    assert a["log_history"] == b["log_history"] and a["metrics"] == b["metrics"]
    wa, wb = load_file(whole / "trainable.safetensors"), load_file(resumed / "trainable.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # three fresh processes, about 30 s; the in-process resume test above runs by default
def test_kill_9_then_resume_is_bitwise_equal(tiny_gpt2, glue_dir, tmp_path):
    """A real kill -9 in the middle of a run (after its checkpoint at step 4), then resume 'latest'
    in the same folder: the dead run's lock is taken over and the end is the uninterrupted run's.
    All three runs are fresh processes with one thread: the same float sums, whatever this process
    (or the machine's core count) would have chosen."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = {"max_train_samples": 96, "num_train_epochs": 20, "checkpointing_steps": 4, "lora_r": 4}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def run(out, **more):  # to the end
        command = [sys.executable, "train_lora.py", *args_for(tiny_gpt2, glue_dir, str(out), **extra, **more)]
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]

    run(whole)
    proc = subprocess.Popen([sys.executable, "train_lora.py", *args_for(tiny_gpt2, glue_dir, str(killed), **extra)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # killed at its first checkpoint seen, long before its 240 steps end
        if list((killed / "checkpoints").glob("step_*[0-9]")):  # not step_N.tmp
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    run(killed, resume_from_checkpoint="latest")
    a, b = results(whole), results(killed)
    assert a["log_history"] == b["log_history"]
    wa, wb = load_file(whole / "trainable.safetensors"), load_file(killed / "trainable.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
