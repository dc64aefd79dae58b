"""What a copy of each train_*.py drags along: the non-blank lines of the script plus every module of the repository
it imports, directly or through another (a package's __init__.py too), the way Python would load them.

    python bench/copy_size.py            # a table
    python bench/copy_size.py --write    # and into docs/testing.md
    python bench/copy_size.py --check    # exit 1 when a script is over its budget
"""

import argparse
import ast
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = {"train_lora.py": 2100}  # the LoRA copy's budget (DoRA, rsLoRA, LoRA+ in it); every other script's is
DEFAULT_BUDGET = 2150  # (every protection kept: the copy shrinks only where nothing a user relies on is lost)
MARK, END = "<!-- bench:copy-size -->", "<!-- /bench:copy-size -->"


def module_files(name):
    """The repository's files that `import name` loads: each package's __init__.py on the way, then the module."""
    parts, files = name.split("."), []
    for i in range(1, len(parts) + 1):
        base = os.path.join(ROOT, *parts[:i])
        for candidate in (os.path.join(base, "__init__.py"), base + ".py"):
            if os.path.isfile(candidate):
                files.append(candidate)
    return files


def closure(path, seen=None):
    """`path` and every repository file it imports (at any depth, from anywhere in the file)."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            for file in module_files(name):
                closure(file, seen)
    return seen


def nonblank(path):
    return sum(1 for line in open(path) if line.strip())


def sizes():
    """{script: (its own lines, the copy's lines, the copy's files)} for every train_*.py."""
    out = {}
    for script in sorted(glob.glob(os.path.join(ROOT, "train_*.py"))):
        files = closure(script)
        out[os.path.basename(script)] = (nonblank(script), sum(nonblank(f) for f in files), len(files))
    return out


def table():
    rows = ["| script | its lines | with what it imports | files | budget |", "|---|---|---|---|---|"]
    for script, (own, total, files) in sizes().items():
        rows.append(f"| `{script}` | {own} | {total} | {files} | {BUDGET.get(script, DEFAULT_BUDGET)} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when a copy is over its budget")
    p.add_argument("--write", action="store_true", help="put the table into docs/testing.md")
    args = p.parse_args(argv)
    print(table())
    if args.write:
        path = os.path.join(ROOT, "docs", "testing.md")
        text = open(path).read()
        start, end = text.index(MARK) + len(MARK), text.index(END)
        with open(path, "w") as f:
            f.write(text[:start] + "\n" + table() + "\n" + text[end:])
    over = [s for s, (_, total, _) in sizes().items() if total > BUDGET.get(s, DEFAULT_BUDGET)]
    if args.check and over:
        print(f"over budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
