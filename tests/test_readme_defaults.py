"""The README states defaults as "`--flag` (value"; each must be what the script's parser gives.
(A default once moved in the README and the help text, not in the parser.)"""
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train_full.py", "train_lora.py", "train_prefix.py", "train_adapter.py", "train_prompt.py",
           "train_idpg.py"]


def stated_defaults():
    """(line number, flag, value, scripts the line speaks of): a section titled with a script speaks
    of it; elsewhere a line speaks of every script."""
    stated, scripts = [], SCRIPTS
    with open(os.path.join(ROOT, "README.md")) as f:
        for number, line in enumerate(f, 1):
            if line.startswith("## "):
                named = re.findall(r"`(train_\w+\.py)`", line)
                scripts = named[:1] or SCRIPTS
            for flag, value in re.findall(r"`--(\w+)` \(([\w.+-]+)[;,)]", line):
                stated.append((number, flag, value, scripts))
    return stated


def same(value, default):
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return value == str(default)


def test_the_readme_states_defaults():
    assert len(stated_defaults()) >= 10


@pytest.mark.parametrize("number,flag,value,scripts", stated_defaults(), ids=lambda x: str(x)[:20])
def test_readme_default_is_the_parser_default(number, flag, value, scripts):
    checked = []
    for script in scripts:
        args = vars(importlib.import_module(script[:-3]).parse_args(["--task", "sst2"]))
        if flag in args:
            assert same(value, args[flag]), f"README.md:{number} says --{flag} ({value}); {script} has {args[flag]}"
            checked.append(script)
    assert checked, f"README.md:{number} names --{flag}, which none of {scripts} has"
