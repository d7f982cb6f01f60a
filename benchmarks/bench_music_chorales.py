"""music21's Bach chorales as genforge reads them: how each key was found, the fermatas, and how
often the fallback for a file without a stated mode (key signature + music21's analysis picks
major or relative minor) agrees with the key the other files state.

    python benchmarks/bench_music_chorales.py [--check N]

Prints a markdown block (the numbers in benchmarks/results/music/table.md). The first run parses
all 433 scores (minutes; cached after); ``--check N`` re-parses N four-part chorales that state
their key, hides the mode (a bare key signature) and reads the key again.
"""

from __future__ import annotations

import argparse
import collections


def corpus_stats() -> list[str]:
    from genforge.data.music_chorales import load_bach_chorales

    names, chorales, report = load_bach_chorales(progress=False)
    sources = collections.Counter(c.key_source for c in chorales)
    modes = collections.Counter(c.key.split()[1] for c in chorales)
    fallback = [f"{n} ({c.key})" for n, c in zip(names, chorales, strict=True) if c.key_source != "score"]
    return [f"- kept {len(chorales)} four-part chorales; {report}",
            f"- key source: {dict(sources)}; from the signature + analysis: {', '.join(fallback) or 'none'}",
            f"- modes: {dict(modes)}",
            f"- chorales with soprano fermatas: {sum(bool(c.fermata.any()) for c in chorales)}; ending under one: "
            f"{sum(bool(c.fermata[-1]) for c in chorales)}; fermata phrases per chorale (mean): "
            f"{sum(int((c.fermata & ~_shift(c.fermata)).sum()) for c in chorales) / len(chorales):.1f}"]


def _shift(f):
    import numpy as np

    return np.r_[False, f[:-1]]


def fallback_agreement(n: int) -> str:
    from music21 import corpus
    from music21 import key as m21key

    from genforge.data.music_chorales import chorale_key

    agree, total, differs = 0, 0, []
    for path in sorted(corpus.getComposer("bach")):
        score = corpus.parse(str(path))
        if len(score.parts) != 4:
            continue
        stated, source = chorale_key(score)
        if source != "score":
            continue
        for part in score.parts:  # hide the mode: a bare key signature with the same sharps
            for k in list(part.recurse().getElementsByClass(m21key.KeySignature)):
                k.activeSite.replace(k, m21key.KeySignature(k.sharps))
        guess, _ = chorale_key(score)
        total, agree = total + 1, agree + (guess == stated)
        if guess != stated:
            differs.append(f"{path.name}: {stated} read as {guess}")
        if total == n:
            break
    return f"- fallback agreement on the first {total} chorales that state their key: {agree}/{total}; " \
           f"differs: {'; '.join(differs) or 'none'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", type=int, default=60, help="chorales to re-read with the mode hidden (0: none)")
    args = ap.parse_args()
    lines = corpus_stats()
    if args.check:
        lines.append(fallback_agreement(args.check))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
