"""Rebuild the shipped CLIP tokenizer files from OpenAI's original BPE merge list.

Run once by a maintainer, never at run time:

    python -m charfw.models._make_tokenizer path/to/bpe_simple_vocab_16e6.txt.gz

The input is the merge list OpenAI published with CLIP (MIT licence); it ships,
among others, inside the ``open_clip_torch`` wheel on PyPI as
``open_clip/bpe_simple_vocab_16e6.txt.gz``.  The output is the Hugging Face
layout (``vocab.json`` + ``merges.txt``) of the tokenizer Stable Diffusion 1.x
uses.  See ``data/README.md`` for provenance and checksums.

How CLIP numbers its tokens (this is the whole construction):

1. the 256 byte symbols, in the order of the byte -> printable-character table
   below;
2. the same 256 symbols with the end-of-word marker ``</w>`` appended;
3. one token per merge, in merge order, for the first 48,894 merges of the list
   (the first line of the file is a header);
4. ``<|startoftext|>`` and ``<|endoftext|>``.

256 + 256 + 48,894 + 2 = 49,408 tokens.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges of the published list
VOCAB_SIZE = 49408
HEADER = "#version: 0.2"


def byte_symbols() -> list[str]:
    """Printable stand-ins for the 256 byte values, in CLIP's token order.

    Bytes that are already visible Latin-1 characters stand for themselves and
    come first (in byte order); every other byte b gets chr(256 + k), k counting
    those bytes in byte order, and follows.
    """
    visible = [b for b in range(256)
               if ord("!") <= b <= ord("~") or ord("¡") <= b <= ord("¬") or ord("®") <= b <= ord("ÿ")]
    rest = [b for b in range(256) if b not in set(visible)]
    return [chr(b) for b in visible] + [chr(256 + k) for k in range(len(rest))]


def read_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(Path(bpe_gz).read_bytes()).decode("utf-8").split("\n")
    pairs = []
    for line in lines[1:1 + N_MERGES]:
        left, right = line.split()
        pairs.append((left, right))
    if len(pairs) != N_MERGES:
        raise SystemExit(f"{bpe_gz}: expected at least {N_MERGES} merges, found {len(pairs)}")
    return pairs


def build(bpe_gz: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = read_merges(bpe_gz)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"built {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    body = "\n".join([HEADER] + [f"{a} {b}" for a, b in merges]) + "\n"
    (out_dir / "merges.txt").write_text(body, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print(__doc__)
        return 2
    out = Path(argv[1]) if len(argv) == 2 else Path(__file__).parent / "data" / "tokenizer"
    vocab, merges = build(Path(argv[0]))
    write(out, vocab, merges)
    print(f"wrote {out}/vocab.json ({len(vocab)} tokens) and merges.txt ({len(merges)} merges)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
