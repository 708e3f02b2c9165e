"""Build nas_bert/data/wordnet.jsonl.xz from the WordNet 3.0 database files.

Get the database from Debian's ``wordnet-base`` package::

    apt-get update && apt-get download wordnet-base && dpkg -x wordnet-base_*.deb /tmp/wn
    python scripts/build_wordnet.py --dict /tmp/wn/usr/share/wordnet

One JSON record per synset (117,659 in WordNet 3.0)::

    {"synset": "n00001740", "offset": 1740, "pos": "n", "lexname": "noun.Tops", "label": 3,
     "lemmas": ["entity"], "gloss": "...", "split": "train"}

``label`` is the lexicographer file number (0..44) from the ``lexnames`` file. Debian
omits that file, so it falls back to the table in the lexnames(5WN) man page of the same
package; both must agree with ``nas_bert.data.corpus.LEXNAMES``. ``split`` comes from
``nas_bert.data.corpus.split_of``: crc32(synset id) % 100 < 90 train, 90..94 validation,
95..99 test. Records are written in crc32 order of their ids so that the first N rows of
any split are a representative mix (demo caps take the first rows); the output is
byte-for-byte reproducible (xz stores no timestamps).
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

from nas_bert.data import LEXNAMES, split_of

EXPECTED_SYNSETS = 117_659
MAX_BYTES = 5_000_000
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Syntactic markers glued to some adjective lemmas, e.g. "long(a)", "alive(p)".
ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
LEXNAME_LINE = re.compile(r"^(\d{2})\s+([a-z]+\.[A-Za-z]+)\s")
REPO = Path(__file__).resolve().parent.parent


def read_lexnames(dict_dir: Path) -> list[str]:
    """Lexicographer file names by number, from ``lexnames`` or the lexnames(5WN) man page."""
    candidates = [
        dict_dir / "lexnames",
        dict_dir.parent / "man" / "man5" / "lexnames.5WN.gz",
        dict_dir.parent / "man" / "man5" / "lexnames.5WN",
    ]
    for path in candidates:
        if not path.is_file():
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            pairs = [m.groups() for line in f if (m := LEXNAME_LINE.match(line))]
        names = [name for _, name in sorted((int(num), name) for num, name in pairs)]
        if [int(num) for num, _ in pairs] != list(range(len(pairs))) or len(names) != 45:
            sys.exit(f"{path}: expected lexicographer files numbered 00..44, got {len(names)}")
        if tuple(names) != LEXNAMES:
            sys.exit(f"{path} disagrees with nas_bert.data.corpus.LEXNAMES")
        print(f"lexnames from {path}")
        return names
    sys.exit(f"no lexnames file in {dict_dir} nor a lexnames(5WN) man page beside it")


def parse_data_file(path: Path, lexnames: list[str]) -> list[dict]:
    """Synset records of one data.* file (see wndb(5WN) for the line format)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            head, sep, gloss = line.partition("| ")
            fields = head.split()
            offset, lex_filenum, pos = int(fields[0]), int(fields[1]), fields[2]
            n_words = int(fields[3], 16)
            lemmas = [
                ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]
            ]
            if pos not in "nvasr" or len(lemmas) != n_words or not sep:
                sys.exit(f"{path}: malformed line at offset {fields[0]}")
            synset = f"{pos}{offset:08d}"
            records.append(
                {
                    "synset": synset,
                    "offset": offset,
                    "pos": pos,
                    "lexname": lexnames[lex_filenum],
                    "label": lex_filenum,
                    "lemmas": lemmas,
                    "gloss": gloss.strip(),
                    "split": split_of(synset),
                }
            )
    return records


def licence_text(dict_dir: Path) -> str:
    """WordNet 3.0 licence: Debian's copyright stanza, else the data file header."""
    copyright_file = dict_dir.parent / "doc" / "wordnet-base" / "copyright"
    if copyright_file.is_file():
        text = copyright_file.read_text(encoding="utf-8")
        m = re.search(r"^License: WordNet3\.0\n((?: .*\n)+)", text, re.MULTILINE)
        if m:
            lines = [ln[1:] for ln in m.group(1).splitlines()]
            return "\n".join("" if ln == "." else ln.rstrip() for ln in lines).strip() + "\n"
    with open(dict_dir / "data.noun", encoding="utf-8") as f:
        header = [ln for ln in f if ln.startswith("  ")]
    return "\n".join(re.sub(r"^\s+\d+\s?", "", ln).rstrip() for ln in header).strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dict", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=REPO / "nas_bert/data/wordnet.jsonl.xz")
    args = parser.parse_args()

    lexnames = read_lexnames(args.dict)
    records = [r for name in DATA_FILES for r in parse_data_file(args.dict / name, lexnames)]
    if len(records) != EXPECTED_SYNSETS:
        sys.exit(f"expected {EXPECTED_SYNSETS} synsets, parsed {len(records)}")
    if len({r["synset"] for r in records}) != len(records):
        sys.exit("duplicate synset ids")
    records.sort(key=lambda r: (zlib.crc32(r["synset"].encode("utf-8")), r["synset"]))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    size = tmp.stat().st_size
    if size >= MAX_BYTES:
        tmp.unlink()
        sys.exit(f"{args.out.name} would be {size:,} bytes, over the {MAX_BYTES:,} limit")
    os.replace(tmp, args.out)

    lic = args.out.parent / "LICENSE.wordnet"
    lic.write_text(
        "This licence applies to wordnet.jsonl.xz in this folder, which is derived from\n"
        "WordNet 3.0, Princeton University (https://wordnet.princeton.edu/).\n\n"
        + licence_text(args.dict),
        encoding="utf-8",
    )

    splits = Counter(r["split"] for r in records)
    print(f"wrote {args.out} ({size:,} bytes) and {lic}")
    print(f"synsets: {len(records):,}; lexnames: {len({r['lexname'] for r in records})}")
    print("per split: " + ", ".join(f"{s} {splits[s]:,}" for s in ("train", "validation", "test")))
    print(
        "per pos: "
        + ", ".join(f"{p} {c:,}" for p, c in sorted(Counter(r["pos"] for r in records).items()))
    )


if __name__ == "__main__":
    main()
