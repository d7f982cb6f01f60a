"""Captions built from class names, for text-to-image training on labelled image datasets.

Each class has a few names (synonyms) and each caption fills one of several templates,
so the model learns from sentences, not from a fixed token per class. ``PARAPHRASES``
are written separately and share no template with training: they measure whether
generation follows the sentence encoder's meaning rather than memorized strings.
"""

from __future__ import annotations

import itertools

# Class index -> names, by dataset. The first name is the dataset's own class name.
SYNONYMS: dict[str, list[list[str]]] = {
    "digits": [[f"digit {d}", f"number {w}", f"handwritten {w}", w] for d, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])],
    "fashion-mnist": [
        ["t-shirt", "tee", "top"],
        ["trouser", "pair of trousers", "pair of pants"],
        ["pullover", "sweater", "jumper"],
        ["dress", "frock", "gown"],
        ["coat", "overcoat", "winter coat"],
        ["sandal", "summer sandal", "open shoe"],
        ["shirt", "button-up shirt", "collared shirt"],
        ["sneaker", "trainer", "sports shoe"],
        ["bag", "handbag", "purse"],
        ["ankle boot", "short boot", "boot"],
    ],
}

TEMPLATES = [
    "a {}",
    "a picture of a {}",
    "a photo of a {}",
    "an image of a {}",
    "a grayscale image of a {}",
    "a small {}",
    "a drawing of a {}",
    "{}",
]

# Held-out phrasings, never produced by TEMPLATES x SYNONYMS (checked by a test).
PARAPHRASES: dict[str, list[tuple[str, int]]] = {
    "digits": [("the numeral seven written by hand", 7), ("a scribbled zero", 0),
               ("someone wrote the number three", 3), ("a single one", 1),
               ("handwriting showing a nine", 9), ("the figure 4", 4),
               ("a hand-drawn two", 2), ("an eight, handwritten", 8)],
    "fashion-mnist": [("a pair of sneakers", 7), ("running shoes for the gym", 7),
                      ("an elegant evening dress", 3), ("a leather handbag to carry things", 8),
                      ("warm knitted sweater", 2), ("blue jeans", 1), ("a short-sleeved tee shirt", 0),
                      ("sturdy boots for autumn", 9), ("flip-flop style sandals", 5),
                      ("a heavy jacket for winter", 4), ("a formal shirt with buttons", 6)],
}


def class_captions(dataset: str, class_names: list[str]) -> list[list[str]]:
    """Per class, every template x name caption. Datasets without a synonym table use their
    class names."""
    names = SYNONYMS.get(dataset) or [[n.lower()] for n in class_names]
    if len(names) != len(class_names):
        raise ValueError(f"caption table for '{dataset}' has {len(names)} classes, data has {len(class_names)}")
    return [[t.format(n) for t, n in itertools.product(TEMPLATES, per_class)] for per_class in names]
