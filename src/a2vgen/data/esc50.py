"""ESC-50 in its official layout: ``audio/*.wav`` (44.1 kHz) and ``meta/esc50.csv`` (folds 1-5)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from a2vgen.encoders.audio import wav_frames

DEFAULT_SPLITS: dict[str, list[int]] = {"train": [1, 2, 3], "val": [4], "test": [5]}
COLUMNS = ("filename", "fold", "target", "category")


class ESC50Error(ValueError):
    """The ESC-50 folder, its CSV or one of its wavs is unusable; the message names what."""


@dataclass(frozen=True)
class Clip:
    """One ESC-50 clip: its wav, class, fold and the split that fold maps to."""

    path: Path
    category: str
    fold: int
    split: str


def fold_to_split(splits: dict[str, list[int]]) -> dict[int, str]:
    """Invert ``{split: [folds]}``; a fold may belong to one split only."""
    mapping: dict[int, str] = {}
    for split, folds in splits.items():
        if split not in DEFAULT_SPLITS:
            raise ESC50Error(f"unknown split {split!r}; expected one of {list(DEFAULT_SPLITS)}")
        for fold in folds:
            if fold in mapping:
                raise ESC50Error(f"fold {fold} is in both splits {mapping[fold]!r} and {split!r}")
            mapping[int(fold)] = split
    return mapping


def read_esc50(
    root: str | Path,
    classes: list[str] | None = None,
    splits: dict[str, list[int]] | None = None,
    check_audio: bool = True,
) -> tuple[list[Clip], list[str]]:
    """Clips of ``classes`` (None: all, in ``target`` order) in the folds named by ``splits``.

    Returns the clips (ordered by class, then fold, then filename) and the class list that defines the
    label index of each clip. With ``check_audio`` every wav header is read so that missing or corrupt
    files fail here, naming the file.
    """
    root = Path(root)
    csv_path = root / "meta" / "esc50.csv"
    if not csv_path.is_file():
        raise ESC50Error(f"ESC-50 metadata not found: {csv_path} (expected the official layout)")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ESC50Error(f"{csv_path}: no rows or missing columns {missing}; expected {list(COLUMNS)}")
    targets = {r["category"]: int(r["target"]) for r in rows}
    available = sorted(targets, key=lambda c: (targets[c], c))
    if classes is None:
        classes = available
    unknown = [c for c in classes if c not in targets]
    if unknown:
        raise ESC50Error(f"classes {unknown} are not in {csv_path}; available: {available}")
    if len(set(classes)) != len(classes):
        raise ESC50Error(f"duplicate classes in {classes}")
    split_of = fold_to_split(DEFAULT_SPLITS if splits is None else splits)
    order = {c: i for i, c in enumerate(classes)}
    clips = [
        Clip(root / "audio" / r["filename"], r["category"], int(r["fold"]), split_of[int(r["fold"])])
        for r in rows
        if r["category"] in order and int(r["fold"]) in split_of
    ]
    clips.sort(key=lambda c: (order[c.category], c.fold, c.path.name))
    if check_audio:
        for clip in clips:
            check_wav(clip.path)
    return clips, list(classes)


def check_wav(path: Path) -> None:
    """Raise :class:`ESC50Error` naming ``path`` when it is missing, unreadable or empty."""
    if not path.is_file():
        raise ESC50Error(f"ESC-50 wav listed in meta/esc50.csv is missing: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ESC50Error(f"corrupt ESC-50 wav {path}: {err}") from err
    if info.frames == 0:
        raise ESC50Error(f"ESC-50 wav {path} has no samples")
    frames = wav_frames(path)
    if frames is not None and frames[1] < frames[0]:
        raise ESC50Error(f"ESC-50 wav {path} is truncated: header {frames[0]} frames, file {frames[1]}")
