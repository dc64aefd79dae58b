"""Nothing silently wrong: each way a run used to exit 0 with a wrong result, or die with a
traceback, now gives one line that says what to do and a non-zero exit, through the command line
(`cli`: the script's main() under run_main, as `python train_X.py` runs it; a real process where
signals, locks and process groups are the point).

The numbered cases are those of the issue "Nothing silently wrong".
"""

import hashlib
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

from common.outputs import atomic_write_json, finite, steps
from tests.helpers import ROOT, check_same_run, cli, evaluations, launch, results, run_in_process


def args_for(tiny_gpt2, data, out, *switches, **flags):
    """A command line: these defaults, `flags` (name=value) replacing or adding, then `switches`."""
    values = {
        "task": "sst2",
        "model_name_or_path": tiny_gpt2,
        "data_dir": data,
        "output_dir": out,
        "max_train_samples": 32,
        "max_eval_samples": 16,
        "per_device_train_batch_size": 8,
        **flags,
    }
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
    assert (
        "holds another run's checkpoints" in message and "step_12" in message and "--overwrite_output_dir" in message
    )
    code, _ = cli(
        "train_full.py", args_for(tiny_gpt2, glue_dir, out, "--learning_rate", "1e-3", "--overwrite_output_dir")
    )
    assert code == 0 and not (out / "checkpoints").exists()  # the old run's checkpoints are gone
    assert json.load(open(out / "args.json"))["learning_rate"] == 1e-3


# 2. Resume refuses other flags, naming them; resuming into another folder brings best/ along.
@pytest.mark.parametrize("changed,named", [({"lora_alpha": 32}, "--lora_alpha 16;"), ({"lora_r": 2}, "--lora_r 4;")])
def test_resume_refuses_other_flags(tiny_gpt2, glue_dir, tmp_path, changed, named):
    out = tmp_path / "out"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, lora_r=4, checkpointing_steps=2))
    message = one_line(
        *cli(
            "train_lora.py",
            args_for(tiny_gpt2, glue_dir, out, **{"lora_r": 4, **changed}, resume_from_checkpoint="latest"),
        )
    )
    assert named in message and "same flags" in message


def test_resume_refuses_another_task_or_script(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, task="rte", checkpointing_steps=2))
    message = one_line(*cli("train_lora.py", args_for(tiny_gpt2, glue_dir, out, resume_from_checkpoint="latest")))
    assert "--task rte" in message and "--task sst2" in message
    message = one_line(
        *cli("train_prompt.py", args_for(tiny_gpt2, glue_dir, out, task="rte", resume_from_checkpoint="latest"))
    )
    assert "train_lora.py" in message and "train_prompt.py" in message


def test_resuming_into_another_folder_keeps_best(tiny_gpt2, glue_dir, tmp_path):
    whole, moved = tmp_path / "whole", tmp_path / "moved"
    run_in_process(
        "train_full.py",
        args_for(
            tiny_gpt2, glue_dir, whole, "--checkpointing_steps", "2", "--eval_steps", "1", "--learning_rate", "1e-3"
        ),
    )
    run_in_process(
        "train_full.py",
        args_for(
            tiny_gpt2,
            glue_dir,
            moved,
            "--checkpointing_steps",
            "2",
            "--eval_steps",
            "1",
            "--learning_rate",
            "1e-3",
            "--resume_from_checkpoint",
            whole / "checkpoints" / "step_2",
        ),
    )
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
    (
        "cola header, 4 columns",
        "cola",
        "CoLA",
        "train.tsv",
        "sentence\tlabel\ngj04\t1\t\tA fine sentence.\n",
        "line 2: 4 fields where the header has 2",
    ),
    (
        "rte label 2",
        "rte",
        "RTE",
        "train.tsv",
        RTE_HEADER + "0\ta b\tc d\tentailment\n1\ta b\tc d\t2\n",
        "line 3: label '2' is not one of entailment, not_entailment (or 0-1)",
    ),
    (
        "missing column",
        "rte",
        "RTE",
        "train.tsv",
        "index\tsentence1\tlabel\n0\ta b\tentailment\n",
        "line 1: expected a header with the columns sentence1, sentence2",
    ),
    ("unknown label", "rte", "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc d\tmaybe\n", "label 'maybe' is not one of"),
    ("extra tab", "rte", "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc\td\tentailment\n", "line 2: 5 fields"),
    (
        "not utf-8",
        "rte",
        "RTE",
        "train.tsv",
        (RTE_HEADER + "0\ta b\tc d\tentailment\n1\tcaf").encode() + b"\xe9" + b"\tc d\tentailment\n",
        "line 3: byte 0xe9 is not UTF-8",
    ),
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
    message = one_line(
        *cli(
            "train_full.py",
            args_for(
                tiny_gpt2,
                glue_dir,
                out,
                "--learning_rate",
                "1e6",
                "--logging_steps",
                "1",
                "--checkpointing_steps",
                "1",
            ),
        )
    )
    assert "the training loss is nan at step" in message and "lower --learning_rate" in message
    step = int(message.split("at step ")[1].split(":")[0])
    assert f"the last checkpoint is {out}/checkpoints/step_{step - 1}" in message
    assert not (out / "results.json").exists() and not (out / "trainable.safetensors").exists()
    for path in (out / "checkpoints").glob("step_*/model.safetensors"):
        assert all(t.isfinite().all() for t in load_file(path).values())  # no nan weights on disk


# 7 and 11: settings that cannot work are refused before any work.
def test_a_bottleneck_of_zero_is_refused(tiny_gpt2, glue_dir, tmp_path):
    message = one_line(
        *cli("train_adapter.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o", "--reduction_factor", "100"))
    )
    assert "--reduction_factor 100 leaves no bottleneck (hidden size 32)" in message


@pytest.mark.parametrize(
    "script,flags,expected",
    [
        ("train_full.py", ["--max_length", "300"], "--max_length 300 is more than the 256 positions"),
        ("train_prompt.py", ["--max_length", "250"], "--max_length 250 + 20 method positions is more than the 256"),
    ],
)
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
    data = glue_copy(
        glue_dir,
        tmp_path,
        "RTE",
        "train.tsv",
        RTE_HEADER + f"0\t{long}\t{long[:60000]}\tentailment\n1\ta b\tc d\tnot_entailment\n",
    )
    seen = []
    call = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, text_pair=None, **kw):
        texts = [t for t in (text, text_pair) if t is not None]
        seen.extend(len(t) for part in texts for t in ([part] if isinstance(part, str) else part))
        return call(self, text, text_pair, **kw)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    code, err = cli(
        "train_full.py",
        args_for(tiny_gpt2, data, tmp_path / "out", "--max_length", "16", "--max_train_steps", "1", task="rte"),
    )
    assert code == 0, err[-2000:]
    assert seen and max(seen) <= 100 * 17  # instead of 75,000 characters


# 8. Two runs on one folder: the second is refused while the first runs; a dead run's lock is taken over.
def test_two_runs_on_one_folder(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, "train_full.py", *args_for(tiny_gpt2, glue_dir, str(out), "--num_train_epochs", "400")],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
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
    # for the message below
    inherited = (signal.getsignal(sig), signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def as_from_a_shell():  # a child inherits ignored and blocked signals: the run gets what a shell gives
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        signal.signal(sig, signal.SIG_DFL)

    proc = subprocess.Popen(
        [
            sys.executable,
            "train_full.py",
            *args_for(tiny_gpt2, glue_dir, str(out), "--num_train_epochs", "100000", "--checkpointing_steps", "5"),
        ],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stderr=open(tmp_path / "stderr", "w"),
        stdout=subprocess.DEVNULL,
        preexec_fn=as_from_a_shell,
    )
    # stderr goes to a file: a pipe nobody reads while we wait fills with progress bars and blocks the run.
    # any checkpoint: older ones are removed as newer ones land, so step_5 may be gone
    for _ in range(600):
        if steps(out):  # a finished checkpoint, not a step_N.tmp-<run id> being written
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
    proc = launch(
        "train_full.py",
        "ddp",
        args_for(tiny_gpt2, glue_dir, str(tmp_path / "o"), "--resume_from_checkpoint", str(tmp_path / "nowhere")),
    )
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: no checkpoint at '{tmp_path / 'nowhere'}'; pass OUTPUT_DIR/checkpoints/step_N or 'latest'"
    ]
    # The launcher reports the ranks' exits (with its own traceback): the first is a clean 2, none aborted.
    codes = [line.split(":")[1].split()[0] for line in proc.stderr.splitlines() if line.strip().startswith("exitcode")]
    assert codes[-1] == "2" and "-6" not in codes, proc.stderr[-3000:]  # the root cause is listed last
    assert "terminate called" not in proc.stderr and 'train_full.py", line' not in proc.stderr


# Crash recovery, every script: resumed from a checkpoint, a run ends bitwise equal to one never stopped.
SCRIPTS = {
    "train_full.py": [],
    "train_lora.py": ["--lora_r", "4"],
    "train_prefix.py": ["--num_prefix", "4"],
    "train_adapter.py": ["--reduction_factor", "4"],
    "train_prompt.py": ["--num_virtual_tokens", "4"],
    "train_idpg.py": ["--num_virtual_tokens", "4", "--generator_hidden", "8", "--encoder_name_or_path", "self"],
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_resume_is_bitwise_equal_for_every_script(script, tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = ["--num_train_epochs", "2", "--eval_steps", "3", "--checkpointing_steps", "3", *SCRIPTS[script]]
    run_in_process(script, args_for(tiny_gpt2, glue_dir, whole, *extra))
    run_in_process(
        script,
        args_for(tiny_gpt2, glue_dir, resumed, *extra, "--resume_from_checkpoint", whole / "checkpoints" / "step_3"),
    )
    check_same_run(whole, resumed)


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
    proc = subprocess.Popen(
        [sys.executable, "train_lora.py", *args_for(tiny_gpt2, glue_dir, str(killed), **extra)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):  # killed at its first checkpoint seen, long before its 240 steps end
        if steps(killed):  # a finished checkpoint, not a step_N.tmp-<run id> being written
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


@pytest.mark.slow
def test_zero3_kill_9_then_a_resume_that_evaluates_first_is_bitwise_equal(tiny_gpt2, glue_dir, tmp_path):
    """LoRA under ZeRO-3 on 2 processes, killed with SIGKILL (the launcher and both ranks) after its checkpoint at
    step 2, resumed from it in the same folder: the resumed run trains step 3 and evaluates first, where ZeRO-3's
    parameter-fetch trace once broke the next backward ("tracing error")."""
    from bench.launch import launch_command

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    flags = {"max_train_samples": 64, "num_train_epochs": 10, "checkpointing_steps": 2, "eval_steps": 3, "lora_r": 4}
    proc = launch("train_lora.py", "zero3", args_for(tiny_gpt2, glue_dir, str(whole), **flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd, env = launch_command("train_lora.py", "zero3", args_for(tiny_gpt2, glue_dir, str(killed), **flags))
    run = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    for _ in range(3000):  # killed at its first finished checkpoint, long before its 40 steps end
        if steps(killed):
            break
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "results.json").exists()
    resume = ["--resume_from_checkpoint", str(killed / "checkpoints" / "step_2")]
    proc = launch("train_lora.py", "zero3", args_for(tiny_gpt2, glue_dir, str(killed), *resume, **flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_same_run(whole, killed)


# Part two: multi-process checkpoints, evaluation order, output folders.
# 1. Checkpoints are complete on every rank before they get their final name.
@pytest.mark.parametrize("config", [pytest.param("ddp", marks=pytest.mark.slow), "zero3"])
def test_a_checkpoint_waits_for_every_rank(config, tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    proc = launch(
        "tests/cli/slow_save.py",
        config,
        [
            "train_full.py",
            *args_for(tiny_gpt2, glue_dir, str(out), "--max_train_steps", "3", "--checkpointing_steps", "1"),
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["step_1", "step_2", "step_3"]  # no temporary folder left
    for step in ("step_1", "step_2", "step_3"):
        files = set(os.listdir(out / "checkpoints" / step))
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= files, (step, files)
    # A checkpoint of 2 processes resumed on 1: one line naming both values, before any work.
    message = one_line(
        *cli(
            "train_full.py",
            args_for(
                tiny_gpt2,
                glue_dir,
                out,
                "--max_train_steps",
                "3",
                "--checkpointing_steps",
                "1",
                resume_from_checkpoint="latest",
            ),
        )
    )
    assert "--num_processes 2" in message and "--num_processes 1" in message


def test_an_incomplete_checkpoint_is_never_resumed(tiny_gpt2, glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, *flags))
    (out / "results.json").unlink()
    # zero bytes, as after a full disk
    (out / "checkpoints" / "step_4" / "model.safetensors").write_bytes(b"")
    message = one_line(
        *cli(
            "train_full.py",
            args_for(tiny_gpt2, glue_dir, out, *flags, resume_from_checkpoint=out / "checkpoints" / "step_4"),
        )
    )
    assert "step_4 cannot be resumed: model.safetensors has 0 bytes, written with" in message
    capsys.readouterr()
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, *flags, resume_from_checkpoint="latest"))
    printed = capsys.readouterr().out
    assert "skipping" in printed and "step_4: model.safetensors has 0 bytes" in printed
    assert "resumed from" in printed and "step_2 at step 2" in printed
    # A file of the right size with other bytes: refused by name (its hash), before anything loads.
    optimizer = out / "checkpoints" / "step_2" / "optimizer.bin"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)
    resume = args_for(
        tiny_gpt2,
        glue_dir,
        out,
        *flags,
        "--overwrite_output_dir",
        resume_from_checkpoint=out / "checkpoints" / "step_2",
    )
    message = one_line(*cli("train_full.py", resume))
    assert "step_2 cannot be resumed: optimizer.bin holds other bytes than it was written with" in message
    # Listed as it is now (a checkpoint written so by a failing disk or program), it does not load: one line too.
    state = json.load(open(out / "checkpoints" / "step_2" / "trainer_state.json"))
    state["files"]["optimizer.bin"][1] = hashlib.sha256(optimizer.read_bytes()).hexdigest()
    (out / "checkpoints" / "step_2" / "trainer_state.json").write_text(json.dumps(state))
    message = one_line(*cli("train_full.py", resume))
    assert message.startswith(f"error: cannot resume from {out}/checkpoints/step_2 (")


def test_resume_refuses_other_launch_settings(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "1"]
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, *flags))
    for variable, value, named in (
        ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2", "--gradient_accumulation_steps 2"),
        ("ACCELERATE_MIXED_PRECISION", "bf16", "--mixed_precision bf16"),
    ):
        monkeypatch.setenv(variable, value)
        message = one_line(
            *cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, *flags, resume_from_checkpoint="latest"))
        )
        monkeypatch.delenv(variable)
        assert named in message and "same flags" in message, message


# 2. Evaluation pairs each row's logits with its own label, whatever the file's index column says.
def shuffled(glue_dir, tmp_path, folder, name, index=None):
    """The fixtures with one file's rows in another order (header kept); `index` replaces the index column."""
    import random

    data = tmp_path / f"glue-{folder}"
    shutil.copytree(glue_dir, data)
    path = data / folder / name
    header, *rows = path.read_text().splitlines()
    random.Random(0).shuffle(rows)
    if index is not None:
        rows = [f"{index(i)}\t" + row.split("\t", 1)[1] for i, row in enumerate(rows)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return data, rows


@pytest.mark.parametrize("task,folder", [("stsb", "STS-B"), ("rte", "RTE")])
def test_metrics_do_not_depend_on_the_order_of_dev_rows(task, folder, tiny_gpt2, glue_dir, tmp_path):
    flags = {"task": task, "max_eval_samples": 100, "max_train_steps": 2}
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, tmp_path / "a", **flags))
    data, rows = shuffled(glue_dir, tmp_path, folder, "dev.tsv")
    run_in_process("train_full.py", args_for(tiny_gpt2, data, tmp_path / "b", **flags))
    a, b = results(tmp_path / "a")["metrics"], results(tmp_path / "b")["metrics"]
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in a), (a, b)
    # eval_logits are in file order: the shuffled file's rows, by their index column, are the first run's.
    original = [
        line.split("\t", 1)[0] for line in open(os.path.join(glue_dir, folder, "dev.tsv")).read().splitlines()[1:]
    ]
    order = [original.index(row.split("\t", 1)[0]) for row in rows]
    la = load_file(tmp_path / "a" / "eval_logits.safetensors")["validation"]
    lb = load_file(tmp_path / "b" / "eval_logits.safetensors")["validation"]
    torch.testing.assert_close(lb, la[order], atol=1e-5, rtol=0)


def test_duplicate_index_values_change_nothing(tiny_gpt2, glue_dir, tmp_path):
    """Every row's index is 0 (two files pasted together, say): IDPG's cached encoder states still
    belong to their own rows (the cached run equals --no_cache), and predictions carry the file's ids."""
    data, _ = shuffled(glue_dir, tmp_path, "RTE", "train.tsv", index=lambda i: 0)
    dev = (data / "RTE" / "dev.tsv").read_text().splitlines()
    (data / "RTE" / "dev.tsv").write_text("\n".join([dev[0], *["0\t" + r.split("\t", 1)[1] for r in dev[1:]]]) + "\n")
    (data / "RTE" / "test.tsv").write_text(
        "\n".join(
            [
                dev[0].rsplit("\t", 1)[0],
                *[f"{70 - i}\t" + r.split("\t", 1)[1].rsplit("\t", 1)[0] for i, r in enumerate(dev[1:])],
            ]
        )
        + "\n"
    )
    flags = [
        "--num_virtual_tokens",
        "4",
        "--generator_hidden",
        "8",
        "--encoder_name_or_path",
        tiny_gpt2,
        "--num_train_epochs",
        "2",
        "--prompt_learning_rate",
        "1e-2",
    ]
    for name, extra in (("cached", []), ("uncached", ["--no_cache"])):
        run_in_process(
            "train_idpg.py", args_for(tiny_gpt2, data, tmp_path / name, *flags, *extra, "--do_predict", task="rte")
        )
    a, b = results(tmp_path / "cached"), results(tmp_path / "uncached")
    assert [h["train_loss"] for h in evaluations(a)] == pytest.approx(
        [h["train_loss"] for h in evaluations(b)], abs=1e-6
    )
    rows = (tmp_path / "cached" / "predictions" / "RTE.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == [str(70 - i) for i in range(len(dev) - 1)]


# 3. An output folder's owner: what --overwrite_output_dir removes, and what it leaves.
def test_overwrite_removes_what_the_earlier_run_wrote_and_nothing_else(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("kept")
    run_in_process("train_adapter.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1"))
    assert (out / "adapterhub" / "layer_norms.safetensors").exists()
    run_in_process(
        "train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", "--overwrite_output_dir")
    )
    assert not (out / "adapterhub").exists() and (out / "model" / "config.json").exists()
    run_in_process(
        "train_prompt.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", "--overwrite_output_dir")
    )
    assert not (out / "model").exists() and (out / "peft").exists()
    assert (out / "notes" / "mine.txt").read_text() == "kept"


def test_a_users_own_files_are_never_removed(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    for name in ("predictions", "peft"):
        (out / name).mkdir(parents=True)
        (out / name / "mine.txt").write_text("kept")
    code, err = cli(
        "train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", "--overwrite_output_dir")
    )
    assert code == 0, err[-2000:]
    assert (out / "peft" / "mine.txt").exists() and (out / "predictions" / "mine.txt").exists()


def test_a_users_folder_in_the_way_is_refused(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    (out / "peft").mkdir(parents=True)
    (out / "peft" / "mine.txt").write_text("kept")
    message = one_line(
        *cli("train_prompt.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", "--overwrite_output_dir"))
    )
    assert f"{out}/peft exists and no run wrote it" in message and (out / "peft" / "mine.txt").exists()


def test_overwrite_without_a_manifest_is_refused(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--overwrite_output_dir")))
    assert "no manifest.json" in message and (out / "results.json").exists()


def test_resume_with_a_trailing_slash_and_overwrite_keeps_the_checkpoints(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    flags = ["--max_train_steps", "4", "--checkpointing_steps", "2"]
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, out, *flags))
    first = results(out)
    code, err = cli(
        "train_full.py",
        args_for(
            tiny_gpt2,
            glue_dir,
            out,
            *flags,
            "--overwrite_output_dir",
            resume_from_checkpoint=f"{out}/checkpoints/step_2/",
        ),
    )
    assert code == 0, err[-2000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["step_2", "step_4"]
    assert results(out)["log_history"] == first["log_history"]


def test_merge_and_save_is_checked_before_training(tiny_gpt2, glue_dir, tmp_path):
    model = tmp_path / "base"
    shutil.copytree(tiny_gpt2, model)
    before = (model / "model.safetensors").read_bytes()
    (tmp_path / "file").write_text("x")
    for target, expected in (
        (f"{model}/", "is the base model's folder"),
        (tmp_path / "file" / "merged", "is a file"),
        (tmp_path / "out" / "checkpoints" / "step_2" / "m", "lies in a run's checkpoint folder"),
    ):
        message = one_line(
            *cli("train_lora.py", args_for(str(model), glue_dir, tmp_path / "out", merge_and_save=target))
        )
        assert expected in message, message
    assert (model / "model.safetensors").read_bytes() == before and not (tmp_path / "out" / "results.json").exists()


# 5. Files are replaced by rename, never written through a link.
def test_writes_never_follow_links(tmp_path):
    from common.checkpoint import atomic_save_tensors
    from common.outputs import atomic_write_text

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for name in ("w.safetensors", "t.json"):
        path = tmp_path / name
        # the names temporary files once had
        for planted in (f"{name}.tmp", f"{name}.tmp{os.getpid()}"):
            (tmp_path / planted).symlink_to(victim)
        path.symlink_to(victim)
        if name.endswith(".json"):
            atomic_write_text(path, "new")
        else:
            atomic_save_tensors(path, {"x": torch.ones(2)})
        assert victim.read_text() == "untouched" and not path.is_symlink()
    linked = tmp_path / "hard"
    os.link(victim, linked)  # a hard link: writing in place would change the victim too
    atomic_write_text(linked, "new")
    assert victim.read_text() == "untouched" and linked.read_text() == "new"


# 6. Raw tracebacks that are now one line, before any training.
@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"checkpointing_steps": 0}, "--checkpointing_steps takes a number of steps (at least 1)"),
        ({"seed": -1}, "--seed must be from 0 to 2**32 - 1"),
        (
            {"max_eval_samples": 1, "task": "rte", "validation_dev_half": None},
            "--validation_dev_half splits the 1 dev row",
        ),
        (
            {"max_eval_samples": 1, "task": "stsb"},
            "the validation split has 1 row(s); stsb's pearson needs at least 2",
        ),
    ],
)
def test_bad_settings_are_one_line(flags, expected, tiny_gpt2, glue_dir, tmp_path):
    switches = [f"--{k}" for k, v in flags.items() if v is None]
    flags = {k: v for k, v in flags.items() if v is not None}
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, tmp_path / "out", *switches, **flags)))
    assert expected in message, message
    assert not (tmp_path / "out" / "results.json").exists()


def test_abbreviated_flags_are_refused(tiny_gpt2, glue_dir, tmp_path, capsys):
    import importlib

    for script in SCRIPTS:
        with pytest.raises(SystemExit) as e:
            importlib.import_module(script[:-3]).parse_args(
                args_for(tiny_gpt2, glue_dir, tmp_path / "out") + ["--max_train_sample", "5"]
            )
        assert e.value.code == 2 and "unrecognized arguments: --max_train_sample 5" in capsys.readouterr().err


def test_a_constant_stsb_dev_set_still_chooses_best(tiny_gpt2, glue_dir, tmp_path):
    """Pearson of constant scores is undefined (null): the first evaluation is still best, and early stopping runs."""
    dev = open(os.path.join(glue_dir, "STS-B", "dev.tsv")).read().splitlines()
    data = glue_copy(
        glue_dir,
        tmp_path,
        "STS-B",
        "dev.tsv",
        "\n".join([dev[0], *[r.rsplit("\t", 1)[0] + "\t2.5" for r in dev[1:]]]) + "\n",
    )
    out = tmp_path / "out"
    code, err = cli(
        "train_full.py",
        args_for(
            tiny_gpt2,
            data,
            out,
            "--validation_dev_half",
            task="stsb",
            eval_steps=1,
            early_stopping_patience=2,
            max_train_steps=8,
        ),
    )
    assert code == 0 and "Traceback" not in err, err[-2000:]
    res = results(out)
    assert res["best_metrics"]["step"] == 1 and res["stopped_early_at_step"] == 3 and "test_metrics" in res
    assert (out / "best" / "trainable.safetensors").exists()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_model_folder_without_a_tokenizer(kind, tiny_gpt2, glue_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model = tmp_path / "model"
    if kind == "gpt2":
        model.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(tiny_gpt2, name), model)
    else:
        LlamaForSequenceClassification(
            LlamaConfig(
                num_hidden_layers=1,
                hidden_size=16,
                num_attention_heads=2,
                num_key_value_heads=1,
                intermediate_size=32,
                vocab_size=100,
                max_position_embeddings=256,
            )
        ).save_pretrained(model)
    message = one_line(*cli("train_full.py", args_for(str(model), glue_dir, tmp_path / "out")))
    assert f"'{model}' has no working tokenizer" in message


def test_a_lock_holding_no_pid_is_taken_over(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_bytes(b"\xff garbage")
    code, err = cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1"))
    assert code == 0, err[-2000:]
    assert not (out / ".lock").exists()


def test_a_data_error_under_ddp_exits_2_on_every_rank(tiny_gpt2, glue_dir, tmp_path):
    data = glue_copy(glue_dir, tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta b\tc d\tmaybe\n")
    proc = launch("train_full.py", "ddp", args_for(tiny_gpt2, data, str(tmp_path / "o"), task="rte"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "label 'maybe' is not one of" in errors[0], proc.stderr[-3000:]
    codes = [line.split(":")[1].split()[0] for line in proc.stderr.splitlines() if line.strip().startswith("exitcode")]
    assert codes and set(codes) == {"2"}, proc.stderr[-3000:]
    # no rank's traceback
    assert 'train_full.py", line' not in proc.stderr and "gloo" not in proc.stderr.lower()


def test_an_idpg_encoder_needs_the_backbones_tokenizer(tiny_gpt2, glue_dir, tmp_path):
    """An encoder whose vocabulary has the backbone's size but other tokens is refused."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, GPT2TokenizerFast

    from bench.tiny import fixture_sentences

    size = len(AutoTokenizer.from_pretrained(tiny_gpt2))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([s[::-1] for s in fixture_sentences()], vocab_size=size, special_tokens=["<|endoftext|>"])
    other = tmp_path / "other"
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    assert len(tok) == size
    tok.save_pretrained(other)
    GPT2Model(GPT2Config(vocab_size=size, n_embd=32, n_layer=1, n_head=2, n_positions=256)).save_pretrained(other)
    message = one_line(
        *cli("train_idpg.py", args_for(tiny_gpt2, glue_dir, tmp_path / "out", encoder_name_or_path=other))
    )
    assert f"the encoder '{other}' has another tokenizer than the backbone" in message


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp", "zero3"])
def test_two_processes_resume_bitwise_from_a_middle_checkpoint(config, tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    flags = ["--num_train_epochs", "2", "--eval_steps", "3", "--checkpointing_steps", "1", "--lora_r", "4"]
    check = lambda proc: proc.returncode == 0 or pytest.fail(proc.stderr[-3000:])  # noqa: E731
    check(launch("train_lora.py", config, args_for(tiny_gpt2, glue_dir, str(whole), *flags)))
    middle = whole / "checkpoints" / "step_3"
    check(
        launch(
            "train_lora.py",
            config,
            args_for(tiny_gpt2, glue_dir, str(resumed), *flags, "--resume_from_checkpoint", str(middle)),
        )
    )
    check_same_run(whole, resumed)
