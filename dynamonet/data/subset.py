"""Stratified label fractions of a training split (the analogue of the paper's Table 2, §4.4).

Table 2 of the paper pretrains by frame prediction on videos whose labels are not used and then
fine-tunes with a share of the labels. ``data.label_fraction`` = f keeps, in every class, a share
f of the training split's videos (the "labeled" subset); ``data.label_subset=unlabeled`` streams
the rest of the split instead, so a pretraining run and a fine-tuning run with the same
``label_fraction`` and ``label_seed`` see disjoint videos that together make the whole split.

Selection rule (pure, no Ray): the videos of class c are sorted by ``video_id`` (the result does
not depend on the order of the shards or of the rows) and permuted by a generator seeded with
``(label_seed, c)``; the first ``max(1, round_half_up(f · n_c))`` are labeled. The permutation does
not depend on f, so the labeled subsets are nested: f = 0.25 ⊂ f = 0.5 ⊂ f = 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LABEL_SUBSETS = ("labeled", "unlabeled")


def labeled_count(num_videos: int, fraction: float) -> int:
    """Videos kept labeled in a class of ``num_videos``: ``round(fraction · num_videos)`` rounded
    half up (Python's ``round`` rounds half to even), at least 1 when the class has videos."""
    if num_videos <= 0:
        return 0
    return min(num_videos, max(1, math.floor(fraction * num_videos + 0.5 + 1e-9)))


def _class_rng(seed: int, label: int) -> np.random.Generator:
    # SeedSequence takes non-negative words: a label of -1 (no label) becomes 2**32 - 1
    return np.random.default_rng([seed, label & 0xFFFFFFFF])


def select_labeled(video_ids: Sequence[str], labels: Sequence[int], fraction: float, seed: int) -> set[str]:
    """The ``video_id`` s of the labeled share of a split, stratified per class (paper Table 2, §4.4).

    Args:
        video_ids: ids of the split's videos (unique within the split), in any order.
        labels: their classes (``-1``, no label, is a class of its own here).
        fraction: share of each class kept, in (0, 1]; ``round(fraction · n_c)`` rounded half up,
            and at least 1 video per class that has videos.
        seed: ``data.label_seed``; the per-class permutation comes from ``(seed, class)``.

    Returns:
        The selected ids. The same for any order of the inputs; nested in ``fraction``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.label_fraction: must be in (0, 1], got {fraction}")
    if seed < 0:
        raise ValueError(f"data.label_seed: must be >= 0, got {seed}")
    if len(video_ids) != len(labels):
        raise ValueError(f"select_labeled: {len(video_ids)} video ids but {len(labels)} labels")
    by_class: dict[int, list[str]] = defaultdict(list)
    for vid, label in zip(video_ids, labels, strict=True):
        by_class[int(label)].append(str(vid))
    selected: set[str] = set()
    for label, ids in by_class.items():
        ids.sort()
        order = _class_rng(seed, label).permutation(len(ids))
        selected.update(ids[i] for i in order[:labeled_count(len(ids), fraction)].tolist())
    return selected


def select_subset(video_ids: Sequence[str], labels: Sequence[int], fraction: float, subset: str,
                  seed: int) -> set[str]:
    """``subset="labeled"``: :func:`select_labeled`; ``"unlabeled"``: the rest of the split.

    Raises a one-line ``ValueError`` naming ``data.label_fraction`` when the unlabeled rest is
    empty (every class so small that its at-least-one labeled video is all it has).
    """
    if subset not in LABEL_SUBSETS:
        raise ValueError(f"data.label_subset: must be labeled or unlabeled, got {subset!r}")
    labeled = select_labeled(video_ids, labels, fraction, seed)
    if subset == "labeled":
        return labeled
    rest = {str(v) for v in video_ids} - labeled
    if not rest:
        raise ValueError(f"data.label_fraction: {fraction} leaves no unlabeled video in the training split "
                         f"({len(labeled)} videos, at least one labeled per class); "
                         "lower data.label_fraction or use data.label_subset=labeled")
    return rest


@dataclass(frozen=True)
class LabelSelection:
    """The videos a training stream keeps (:func:`select_subset`), as the driver reports them."""

    fraction: float
    subset: str                 # "labeled" | "unlabeled"
    seed: int                   # data.label_seed
    split_videos: int           # videos in the whole split
    num_classes: int            # classes the selection was stratified over
    video_ids: frozenset[str] = field(repr=False)
    # the selected videos' video_index values in the full split, sorted (what the decode tasks filter on)
    video_indices: np.ndarray = field(repr=False, compare=False)

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def describe(self) -> str:
        """One line, e.g. ``label_fraction 0.5 (labeled): 312 of 624 training videos, stratified over
        13 classes, label_seed 0``."""
        return (f"label_fraction {self.fraction:g} ({self.subset}): {self.num_videos} of {self.split_videos} "
                f"training videos, stratified over {self.num_classes} classes, label_seed {self.seed}")


def label_selection(video_indices: Sequence[int], video_ids: Sequence[str], labels: Sequence[int], fraction: float,
                    subset: str, seed: int) -> LabelSelection:
    """The :class:`LabelSelection` of a split given its ``(video_index, video_id, label)`` columns."""
    chosen = select_subset(video_ids, labels, fraction, subset, seed)
    keep = np.fromiter((int(i) for i, v in zip(video_indices, video_ids, strict=True) if str(v) in chosen),
                       dtype=np.int64)
    return LabelSelection(fraction=fraction, subset=subset, seed=seed, split_videos=len(video_ids),
                          num_classes=len({int(c) for c in labels}), video_ids=frozenset(chosen),
                          video_indices=np.sort(keep))
