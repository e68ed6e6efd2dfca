#!/usr/bin/env python3
"""Generate enums.json from enums-seed.txt (seed 000, the authority for enums).

The seed lists each enum as a block:

    Enum <name>

    Named value Description
    <value> <description...>
    ...

The value is the first whitespace-separated token of each line in a block.
Output: {"<enum name>": ["value", ...]} in the seed's value order, keys sorted,
indent=1, trailing newline.

Usage: gen_enums.py [OUTPUT_DIR]   (default: the directory of this script)
Python 3 standard library only.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = os.path.join(HERE, "enums-seed.txt")
HEADER = ["Named", "value", "Description"]


def parse(text):
    enums = {}
    current = None  # name of the enum whose block we are in
    seen_header = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        tokens = line.split()
        if tokens[0] == "Enum" and len(tokens) == 2:
            current = tokens[1]
            if current in enums:
                sys.exit("line %d: enum %s listed twice" % (lineno, current))
            enums[current] = []
            seen_header = False
            continue
        if current is None:
            continue  # preamble before the first enum block
        if not seen_header:
            if tokens != HEADER:
                sys.exit("line %d: expected %r after 'Enum %s', got %r"
                         % (lineno, " ".join(HEADER), current, line))
            seen_header = True
            continue
        value = tokens[0]
        if value in enums[current]:
            sys.exit("line %d: value %s listed twice in %s"
                     % (lineno, value, current))
        enums[current].append(value)
    for name, values in enums.items():
        if not values:
            sys.exit("enum %s has no values" % name)
    return enums


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else HERE
    with open(SEED, encoding="utf-8") as f:
        enums = parse(f.read())
    out = os.path.join(outdir, "enums.json")
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(enums, sort_keys=True, indent=1,
                           ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
