"""Datasets by modality; the registry is a plain dict of name -> (modality, description)."""

from __future__ import annotations

from pathlib import Path

from genforge import GenforgeError


def registry() -> dict[str, tuple[str, str]]:
    """Dataset name -> (modality, one-line description)."""
    from genforge.data.image_sources import IMAGE_DATASETS  # numpy and torch only: nothing optional
    from genforge.data.music import MUSIC_DATASETS
    from genforge.data.smiles import MOLECULE_DATASETS
    from genforge.data.text import CORPORA

    out = {name: ("text", desc) for name, (desc, _) in CORPORA.items()}
    out.update({name: ("image", entry[0]) for name, entry in IMAGE_DATASETS.items()})
    out.update({name: ("molecule", desc) for name, desc in MOLECULE_DATASETS.items()})
    out.update({name: ("music", desc) for name, desc in MUSIC_DATASETS.items()})
    return out


def modality_of(name: str) -> str:
    reg = registry()
    if name in reg:
        return reg[name][0]
    path = Path(name).expanduser()
    if not path.exists():
        raise GenforgeError(
            f"unknown dataset '{name}': not a registered name ({', '.join(reg)}) "
            "and no such file or folder"
        )
    from genforge.data.smiles import SMILES_SUFFIXES
    from genforge.data.text import TEXT_SUFFIXES

    suffix = path.suffixes[-2].lower() if path.suffix.lower() == ".gz" and len(path.suffixes) > 1 else path.suffix.lower()
    if path.is_file() and suffix in SMILES_SUFFIXES:
        return "molecule"
    from genforge.data.music import MIDI_SUFFIXES

    if path.suffix.lower() == ".json" or (path.is_dir() and any(p.suffix.lower() in MIDI_SUFFIXES
                                                                for p in path.rglob("*"))):
        return "music"  # a JSB-shaped .json file or a folder of MIDI files
    if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    if path.is_dir() and any(p.suffix.lower() in TEXT_SUFFIXES for p in path.rglob("*")):
        return "text"
    return "image"
