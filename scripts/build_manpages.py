"""Build the shipped out-of-domain evaluation set: English prose sentences from Debian's `manpages`.

    sudo apt-get install manpages man-db      # the Linux man-pages project, sections 1, 4, 5, 7, 8
    python scripts/build_manpages.py           # writes nas_bert/data/manpages.jsonl.xz

Nothing trains or chooses on this set: it is the check that a student which learned from WordNet
glosses still behaves like its teacher on other text (technical documentation).

Each page is rendered with man(1) to plain text at an unlimited line width, so a paragraph is one
line. From the descriptive sections (not NAME, SYNOPSIS, EXAMPLES, SEE ALSO, ...) the paragraphs
are split into sentences; a sentence is kept when it has 6-40 words, ends with a full stop, is
mostly letters and is not a duplicate. At most `--per-page` sentences come from one page (the
first ones in hash order), then `--max` sentences are kept in hash order. The order depends only
on the text, so a rebuild from the same package version gives the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

MAN_DIRS = ("man1", "man4", "man5", "man7", "man8")
SKIP_SECTIONS = {"NAME", "SYNOPSIS", "EXAMPLES", "EXAMPLE", "SEE ALSO", "COLOPHON", "AUTHORS", "AUTHOR",
                 "COPYRIGHT", "FILES", "VERSIONS", "STANDARDS", "HISTORY", "BUGS", "REPORTING BUGS"}
SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "nas_bert" / "data" / "manpages.jsonl.xz"


def package_pages() -> list[Path]:
    """The man pages the `manpages` package installed (dpkg's file list), in a stable order."""
    try:
        files = subprocess.run(["dpkg", "-L", "manpages"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit("error: Debian's manpages package is not installed; run `sudo apt-get install manpages man-db`")
    pages = [Path(p) for p in files.splitlines() if p.endswith(".gz") and Path(p).parent.name in MAN_DIRS]
    return sorted(p for p in pages if p.is_file() and not p.is_symlink())


def render(page: Path) -> str:
    """The page as plain text, one paragraph per line."""
    env = {**os.environ, "MANWIDTH": "100000", "MAN_KEEP_FORMATTING": "0", "LC_ALL": "C.UTF-8"}
    out = subprocess.run(
        ["man", "-l", "-E", "ascii", str(page)], check=False, capture_output=True, text=True, env=env
    ).stdout
    return re.sub(r".\x08", "", out)  # overstrikes (bold, underline) if col is not used


def paragraphs(text: str) -> list[str]:
    """Prose paragraphs of the descriptive sections: lines indented as body text."""
    keep, out = False, []
    for line in text.splitlines():
        if line and not line[0].isspace():  # a section heading
            keep = line.strip() not in SKIP_SECTIONS
            continue
        body = line.strip()
        if keep and line.startswith("       ") and not line.startswith("            ") and len(body) > 40:
            out.append(re.sub(r"^\S+\s{2,}", "", body))  # a tagged paragraph ("Term   text"): the text
    return out


def good(sentence: str) -> bool:
    words = sentence.split()
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return (6 <= len(words) <= 40 and sentence.endswith(".") and sentence[0].isupper() and words[0] != "o" and letters >= 0.85 * len(sentence)
            and not re.search(r"[{};=<>]|\s{2,}|\.\.\.", sentence))


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max", type=int, default=3000, help="sentences kept")
    ap.add_argument("--per-page", type=int, default=40, help="at most this many sentences from one page")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    seen: set[str] = set()
    rows = []
    pages = package_pages()
    for page in pages:
        name = page.name.removesuffix(".gz")
        found = []
        for para in paragraphs(render(page)):
            for s in SENTENCE_END.split(para):
                s = " ".join(s.split())
                if good(s) and s.lower() not in seen:
                    seen.add(s.lower())
                    found.append({"text": s, "page": name, "section": page.parent.name[3:]})
        rows += sorted(found, key=lambda r: key(r["text"]))[: args.per_page]
    rows = sorted(rows, key=lambda r: key(r["text"]))[: args.max]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    n_pages = len({r["page"] for r in rows})
    print(f"{len(rows)} sentences from {n_pages} of {len(pages)} pages -> {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
