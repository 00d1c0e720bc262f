#!/usr/bin/env python3
"""Writes every ```LANG block of the given Markdown files into OUTDIR, one file
per block, for the client's tests to compile: a doc that drifts from the
package fails its build.

    doc_blocks.py kotlin|swift OUTDIR FILE.md...

A block right after a line `<!-- not compiled: WHY -->` is skipped (it needs
what this machine lacks: SwiftUI, Android's Flow-era coroutines, a manifest).
Kotlin blocks get a package of their own (docs.<file>_<n>), so two blocks may
declare the same names; Swift blocks are type-checked one by one.
"""
import pathlib
import re
import sys


def blocks(text, lang):
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```" + lang:
            before = next((l for l in reversed(lines[:i]) if l.strip()), "")
            start = i + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            if not before.strip().startswith("<!-- not compiled:"):
                yield start + 1, "\n".join(lines[start:end])
            i = end
        i += 1


def main():
    lang, out, files = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    ext = {"kotlin": "kt", "swift": "swift"}[lang]
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in files:
        path = pathlib.Path(name)
        stem = re.sub(r"\W", "_", path.stem.lower())
        for line, code in blocks(path.read_text(), lang):
            count += 1
            header = f"// {path.name}, the block at line {line}\n"
            if lang == "kotlin":
                header += f"package docs.{stem}_{line}\n\n"
            (out / f"{stem}_{line}.{ext}").write_text(header + code + "\n")
    if count == 0:
        sys.exit(f"doc_blocks.py: no {lang} block in {' '.join(files)}")
    print(f"{count} {lang} blocks from the docs", file=sys.stderr)


main()
