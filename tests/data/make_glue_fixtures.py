"""Write tests/data/glue: a few made-up rows per GLUE task, in each task's exact file format, so
that the default test suite needs nothing beside the repository.

    python tests/data/make_glue_fixtures.py     # rewrites tests/data/glue (deterministic)

The sentences are written here from templates (nothing is copied from GLUE). The formats are
GLUE's own: SST-2 with a header and a space before the tab; CoLA without a header (and its dev
file without a final newline); MRPC with a byte-order mark before its header; STS-B's ten
columns; MNLI's 12-column train and 16-column dev_matched with the label last; RTE and QNLI with
label names; QQP's six columns; WNLI's ids; a bare double quote inside a field (GLUE's files are read
with quoting off). Every task the scripts accept has its train and dev files.
"""

import os
import random

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "glue")
GOOD = ["charming", "moving", "brilliant", "engaging", "delightful", "witty", "gorgeous", "heartfelt"]
BAD = ["dull", "tedious", "clumsy", "lifeless", "boring", "messy", "shallow", "tiresome"]
THINGS = ["film", "movie", "story", "comedy", "drama", "script", "performance", "ending"]
PEOPLE = ["The teacher", "A farmer", "The old sailor", "My neighbour", "The young pianist", "A doctor"]
PLACES = ["Paris", "a small village", "the harbour", "the library", "Lisbon", "the market"]
ACTS = ["visited", "painted", "left", "described", "photographed", "walked through"]


def write(task, name, header, rows, final_newline=True, bom=False):
    path = os.path.join(OUT, task, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ([header] if header else []) + ["\t".join(str(x) for x in row) for row in rows]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        f.write(text)


def sentiment(rng, n):
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choice(GOOD if label else BAD), rng.choice(THINGS)
        rows.append((f"a {words[0]} {words[1]} , {rng.choice(['really', 'truly', 'simply'])} {words[0]} ", label))
    return rows


def unseen(dev, trained):
    """`dev` with each training row replaced by the first of its adjective's phrasings that neither split has: a
    validation split of training rows draws a warning (common/results.py)."""
    taken, rows = trained | {text for text, _ in dev}, []
    for text, label in dev:
        if text in trained:
            adj = text.split()[1]
            phrasings = (
                f"a {adj} {thing} , {adv} {adj} " for thing in sorted(THINGS) for adv in ("really", "simply", "truly")
            )
            text = next(t for t in phrasings if t not in taken)
            taken.add(text)
        rows.append((text, label))
    return rows


def pairs(rng, n):
    """(sentence1, sentence2, entailed): the second repeats the first, or names another place."""
    rows = []
    for i in range(n):
        who, act, where = rng.choice(PEOPLE), rng.choice(ACTS), rng.choice(PLACES)
        first = f"{who} {act} {where} last year."
        other = rng.choice([p for p in PLACES if p != where])
        entailed = i % 2 == 0
        rows.append((first, f"{who} {act} {where if entailed else other}.", entailed))
    return rows


def main():
    rng = random.Random(0)
    train, dev = sentiment(rng, 96), sentiment(rng, 32)
    write("SST-2", "train.tsv", "sentence\tlabel", train)
    write("SST-2", "dev.tsv", "sentence\tlabel", unseen(dev, {text for text, _ in train}))

    rte = pairs(rng, 48)
    # bare quote
    rte[3] = ('"That film was shot in Paris," the critic said.', "The film was shot in Paris.", True)
    label = lambda e: "entailment" if e else "not_entailment"  # noqa: E731
    header = "index\tsentence1\tsentence2\tlabel"
    write("RTE", "train.tsv", header, [(i, a, b, label(e)) for i, (a, b, e) in enumerate(rte[:32])])
    write("RTE", "dev.tsv", header, [(i, a, b, label(e)) for i, (a, b, e) in enumerate(rte[32:])])

    cola = [
        (
            "gj04",
            i % 2,
            "",
            f"{rng.choice(PEOPLE)} {rng.choice(ACTS)} {rng.choice(PLACES)}."
            if i % 2
            else f"{rng.choice(PLACES)} {rng.choice(ACTS)} the {rng.choice(THINGS)} {rng.choice(PEOPLE).lower()}.",
        )
        for i in range(36)
    ]
    write("CoLA", "train.tsv", None, cola[:24])
    write("CoLA", "dev.tsv", None, cola[24:], final_newline=False)

    mrpc = [(int(e), 1000 + 2 * i, 1001 + 2 * i, a, b) for i, (a, b, e) in enumerate(pairs(rng, 36))]
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write("MRPC", "train.tsv", header, mrpc[:24], bom=True)
    write("MRPC", "dev.tsv", header, mrpc[24:], bom=True)

    stsb = [
        (
            i,
            "main-captions",
            "MSRvid",
            "2012test",
            f"{i:04d}",
            "none",
            "none",
            a,
            b,
            f"{(4.0 if e else 1.5) + rng.random():.3f}",
        )
        for i, (a, b, e) in enumerate(pairs(rng, 36))
    ]
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    write("STS-B", "train.tsv", header, stsb[:24])
    write("STS-B", "dev.tsv", header, stsb[24:])

    names = ["entailment", "neutral", "contradiction"]
    mnli = [
        (a, b if i % 3 != 1 else f"{a[:-1]} with a friend.", names[0 if e else 2] if i % 3 != 1 else names[1])
        for i, (a, b, e) in enumerate(pairs(rng, 36))
    ]
    train_header = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    )
    write(
        "MNLI",
        "train.tsv",
        train_header,
        [
            (i, 100 + i, f"{100 + i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b, g, g)
            for i, (a, b, g) in enumerate(mnli[:24])
        ],
    )
    dev_header = (
        "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\t"
        "gold_label"
    )
    write(
        "MNLI",
        "dev_matched.tsv",
        dev_header,
        [(i, "", "", "", "", "", "", "", a, b, g, g, g, g, g, g) for i, (a, b, g) in enumerate(mnli[24:])],
    )

    qnli = [
        (i, f"Where did {a.split(' last')[0].lower()}?", b, label(e)) for i, (a, b, e) in enumerate(pairs(rng, 24))
    ]
    write("QNLI", "train.tsv", "index\tquestion\tsentence\tlabel", qnli[:16])
    write("QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel", [(i, *r[1:]) for i, r in enumerate(qnli[16:])])

    qqp = [
        (i, 2 * i, 2 * i + 1, f"Why {a.split(' last')[0].lower()}?", f"Why {b[:-1].lower()}?", int(e))
        for i, (a, b, e) in enumerate(pairs(rng, 36))
    ]
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    write("QQP", "train.tsv", header, qqp[:24])
    write("QQP", "dev.tsv", header, qqp[24:])

    wnli = [(i, a, b, int(e)) for i, (a, b, e) in enumerate(pairs(rng, 24))]
    write("WNLI", "train.tsv", "index\tsentence1\tsentence2\tlabel", wnli[:16])
    write("WNLI", "dev.tsv", "index\tsentence1\tsentence2\tlabel", [(i, *r[1:]) for i, r in enumerate(wnli[16:])])


if __name__ == "__main__":
    main()
