"""The printed form of an audit (``genforge audit``): a few lines per measure, each saying what
it counts and in which space, beside the held-out baseline where there is one."""

from __future__ import annotations


def _f(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def _memorization(m: dict, modality: str) -> list[str]:
    if modality == "image":
        lines = [f"nearest training image ({m['space']}), {m['samples']} samples:",
                 f"  min {_f(m['min_distance'])}, median {_f(m['median_distance'])}"]
        if "heldout_min_distance" in m:
            lines.append(f"  held-out test images: min {_f(m['heldout_min_distance'])}, median "
                         f"{_f(m['heldout_median_distance'])} (what unseen real images score)")
        lines.append(f"near-copies (distance < {m['threshold']:g}): {m['near_copies']} of {m['samples']}"
                     + (f" (held-out images: {m['heldout_near_copies']} of {m['heldout_images']})"
                        if "heldout_near_copies" in m else ""))
        return lines
    if modality == "text":
        lines = [f"longest verbatim overlap with the training text ({m['training_chars']:,} characters): "
                 f"{m['longest_overlap']} characters (sample {m['longest_overlap_sample'] + 1}): "
                 f"{m['longest_overlap_text'][:80]!r}",
                 f"character {m['ngram']}-grams found in the training text: {_f(m['ngram_share'], '.1%')}",
                 f"samples with >= {m['threshold']} characters verbatim: {m['copies']} of {m['samples']}"]
        if "heldout_longest_overlap" in m:
            lines.append(f"  held-out text ({m['heldout_passages']} passages as long): longest overlap "
                         f"{m['heldout_longest_overlap']} (median {_f(m['heldout_median_overlap'], '.0f')}), "
                         f"{m['ngram']}-grams found {_f(m['heldout_ngram_share'], '.1%')}")
        return lines
    if modality == "music":
        src = m["longest_copy_source"]
        shift = f", transposed {src['shift']:+d}" if src["shift"] else ""
        lines = [f"longest verbatim copy from a training piece ({m['unit']}; {m['training_pieces']} pieces"
                 + (f", +/-{m['transpositions']} semitones" if m["transpositions"] else "") + "): "
                 f"{m['longest_copy']} steps (sample {m['longest_copy_sample'] + 1}, from training piece "
                 f"{src['train_index']} step {src['train_start']}{shift}); median {_f(m['median_copy'], '.0f')}",
                 f"samples copying >= {m['threshold']} steps: {m['copies']} of {m['samples']}"]
        if "heldout_longest_copy" in m:
            lines.append(f"  held-out pieces ({m['heldout_pieces']} excerpts of {m['heldout_excerpt_steps']} steps): "
                         f"longest {m['heldout_longest_copy']} (median {_f(m['heldout_median_copy'], '.0f')}), "
                         f"{m['heldout_copies']} at >= {m['threshold']} (the data's own floor)")
        return lines
    return [f"exact copies of training molecules (canonical SMILES): {m['copies']} of {m['valid']} valid "
            f"({_f(m['copy_fraction'], '.1%')})", f"novelty (MOSES): {_f(m['novelty'], '.3f')}"]


def _bias(b: dict | None) -> list[str]:
    if b is None:
        return ["bias: not measured (this run has no classes)"]
    if "skipped" in b:
        return [f"bias: skipped: {b['skipped']}"]
    if "classes" in b:
        lines = [f"bias ({b['kind']}): mean label agreement {_f(b['mean_label_agreement'], '.3f')}, "
                 f"worst FD: {b['worst_fd_class']}"]
        for name, r in b["classes"].items():
            lines.append(f"  {name:<16} n={r['samples']:<5} FD {_f(r['fd'], '.2f'):>8}  "
                         f"label agreement {_f(r['label_agreement'], '.3f')}")
        return lines
    verdict = "IMBALANCED" if b["imbalanced"] else "consistent with the training data"
    lines = [f"bias ({b['kind']}; expected shares from {b['expected_from']}): chi2 {b['chi2']:.1f}, "
             f"dof {b['dof']}, p = {b['p_value']:.3g}: {verdict} at alpha {b['alpha']:g}"]
    for label, rows in (("over-represented", b["over"]), ("under-represented", b["under"])):
        if rows:
            lines.append(f"  {label}: " + ", ".join(f"{r['class']} {r['sample_share']:.1%} vs "
                                                    f"{r['train_share']:.1%}" for r in rows))
    if b["min_expected"] < 5:
        lines.append(f"  note: the smallest expected count is {b['min_expected']:.1f} (< 5): the chi-square "
                     "approximation is rough; audit more samples")
    return lines


def format_audit(report: dict) -> str:
    head = (f"audit of {report['run']} ({report['family']}, {report['modality']}, step {report['step']}), "
            f"{report['num_samples']} samples, seed {report['seed']}")
    return "\n".join([head, *_memorization(report["memorization"], report["modality"]), *_bias(report["bias"])])
