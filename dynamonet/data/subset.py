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

Validation held out from training (``data.holdout_fraction``, ``data.holdout_by``,
``data.holdout_seed``; ``data.val_split=holdout`` validates on it). The official UCF101/HMDB51
protocol has no validation set, and the test split must not steer the schedule or a sweep, so a
share of the training split is set aside:

* ``holdout_by=group`` (UCF101): whole groups ``gNN`` of ``v_<Class>_gNN_cMM`` (an actor and scene
  set; the official splits keep groups whole too). The groups present in the split, sorted, are
  permuted by a generator seeded with ``holdout_seed``; the first ``max(1, round_half_up(f · G))``
  are held out, every video of them in every class. Clips of one group never straddle the parts.
* ``holdout_by=class`` (HMDB51): in every class c the first ``round_half_up(f · n_c)`` videos of a
  permutation seeded with ``(holdout_seed, c)`` of its videos sorted by ``video_id``, at least 1
  when the class has 2 or more videos and at most ``n_c - 1`` (a class of one video keeps it).

Both are nested in f and independent of the order of shards and rows. The training stream reads
the rest of the split; ``label_fraction`` then applies to that rest only.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dynamonet.config import HOLDOUT_BY

LABEL_SUBSETS = ("labeled", "unlabeled")
UCF101_GROUP = re.compile(r"_g(\d+)_c\d+$")   # v_<Class>_gNN_cMM (the video id has no extension)
_HOLDOUT_STREAM = 0x484F4C44        # "HOLD": keeps the holdout draws apart from label_fraction's


def labeled_count(num_videos: int, fraction: float) -> int:
    """Videos kept labeled in a class of ``num_videos``: ``round(fraction · num_videos)`` rounded
    half up (Python's ``round`` rounds half to even), at least 1 when the class has videos."""
    if num_videos <= 0:
        return 0
    return min(num_videos, max(1, _round_half_up(fraction * num_videos)))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def _class_rng(seed: int, label: int, *stream: int) -> np.random.Generator:
    # SeedSequence takes non-negative words: a label of -1 (no label) becomes 2**32 - 1
    return np.random.default_rng([seed, label & 0xFFFFFFFF, *stream])


def _pick_per_class(video_ids: Sequence[str], labels: Sequence[int], count: Callable[[int], int], seed: int,
                    *stream: int, caller: str) -> set[str]:
    """The first ``count(n_c)`` videos of every class c in a permutation seeded with
    ``(seed, c, *stream)`` of its ids sorted (so the result ignores input order and is nested in
    the count)."""
    if len(video_ids) != len(labels):
        raise ValueError(f"{caller}: {len(video_ids)} video ids but {len(labels)} labels")
    by_class: dict[int, list[str]] = defaultdict(list)
    for vid, label in zip(video_ids, labels, strict=True):
        by_class[int(label)].append(str(vid))
    picked: set[str] = set()
    for label, ids in by_class.items():
        ids.sort()
        order = _class_rng(seed, label, *stream).permutation(len(ids))
        picked.update(ids[i] for i in order[:count(len(ids))].tolist())
    return picked


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
    return _pick_per_class(video_ids, labels, lambda n: labeled_count(n, fraction), seed, caller="select_labeled")


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


# --------------------------------------------------------------------------------------------
# Validation held out from the training split (data.holdout_*)
# --------------------------------------------------------------------------------------------

def holdout_count(num_videos: int, fraction: float) -> int:
    """Videos a class of ``num_videos`` gives to validation (``holdout_by=class``): ``round(fraction ·
    num_videos)`` rounded half up, at least 1 when the class has 2 or more videos, at most
    ``num_videos - 1`` (one always stays for training); 0 for a class of one video."""
    if num_videos < 2:
        return 0
    return min(num_videos - 1, max(1, _round_half_up(fraction * num_videos)))


def holdout_group_count(num_groups: int, fraction: float) -> int:
    """Groups held out (``holdout_by=group``): ``max(1, round_half_up(fraction · num_groups))``."""
    return max(1, _round_half_up(fraction * num_groups))


def video_group(video_id: str) -> int | None:
    """The UCF101 group ``NN`` of ``…/v_<Class>_gNN_cMM`` (the file name, with or without extension),
    None when the name has no group."""
    base = posixpath.splitext(posixpath.basename(str(video_id)))[0]
    m = UCF101_GROUP.search(base)
    return int(m.group(1)) if m else None


def _check_holdout(fraction: float, seed: int) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.holdout_fraction: must be in (0, 1) to hold out videos, got {fraction}")
    if seed < 0:
        raise ValueError(f"data.holdout_seed: must be >= 0, got {seed}")


def select_holdout_by_class(video_ids: Sequence[str], labels: Sequence[int], fraction: float, seed: int) -> set[str]:
    """The held-out ``video_id`` s, stratified per class (:func:`holdout_count` of each class).

    Raises a one-line ``ValueError`` naming ``data.holdout_fraction`` when nothing is held out
    (every class has a single video)."""
    _check_holdout(fraction, seed)
    held = _pick_per_class(video_ids, labels, lambda n: holdout_count(n, fraction), seed, _HOLDOUT_STREAM,
                           caller="select_holdout_by_class")
    if not held:
        raise ValueError(f"data.holdout_fraction: {fraction:g} holds out no video: every class of the training split "
                         f"({len(video_ids)} videos) has fewer than 2 videos")
    return held


def video_groups(video_ids: Sequence[str]) -> dict[str, int]:
    """``{video_id: group}``; a one-line ``ValueError`` naming ``data.holdout_by`` and an example
    file when a video has no ``_gNN_cMM`` group."""
    groups: dict[str, int] = {}
    missing: list[str] = []
    for vid in video_ids:
        g = video_group(vid)
        if g is None:
            missing.append(str(vid))
        else:
            groups[str(vid)] = g
    if missing:
        raise ValueError(f"data.holdout_by: group needs UCF101 file names v_<Class>_gNN_cMM, but {len(missing)} of "
                         f"{len(video_ids)} training videos have no _gNN_cMM group, e.g. {sorted(missing)[0]!r} "
                         "(use data.holdout_by=class)")
    return groups


def select_holdout_by_group(video_ids: Sequence[str], fraction: float, seed: int) -> tuple[set[str], list[int], int]:
    """``(held-out video ids, held-out groups sorted, groups in the split)``: whole UCF101 groups
    (:func:`holdout_group_count` of the split's groups), every video of a held-out group.

    Raises a one-line ``ValueError``: a video without a group (``data.holdout_by``), fewer than 2
    groups, or a fraction that would leave no group for training (``data.holdout_fraction``)."""
    _check_holdout(fraction, seed)
    groups = video_groups(video_ids)
    present = sorted(set(groups.values()))
    count = holdout_group_count(len(present), fraction)
    if count >= len(present):
        raise ValueError(f"data.holdout_fraction: {fraction:g} of {len(present)} groups "
                         f"({', '.join(f'g{g:02d}' for g in present)}) would leave no group of the training split "
                         "for training; lower data.holdout_fraction or use data.holdout_by=class")
    order = np.random.default_rng([seed, _HOLDOUT_STREAM]).permutation(len(present))
    held_groups = sorted(present[i] for i in order[:count].tolist())
    chosen = set(held_groups)
    return {v for v, g in groups.items() if g in chosen}, held_groups, len(present)


@dataclass(frozen=True)
class HoldoutSelection:
    """The videos of the training split held out for validation (:func:`holdout_selection`)."""

    fraction: float
    by: str                     # "class" | "group"
    seed: int                   # data.holdout_seed
    split_videos: int           # videos in the whole training split
    num_classes: int
    video_ids: frozenset[str] = field(repr=False)    # the held-out videos
    groups: tuple[int, ...] = ()                     # by=group: the held-out groups
    num_groups: int = 0                              # by=group: groups in the split

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def describe(self) -> str:
        """One line, e.g. ``holdout 0.15 by group: 3 of 18 groups (g10, g21, g24), 1590 of 9537
        training videos held out for validation, holdout_seed 0``."""
        what = (f"{len(self.groups)} of {self.num_groups} groups ({', '.join(f'g{g:02d}' for g in self.groups)}), "
                if self.by == "group" else "")
        how = f", stratified over {self.num_classes} classes" if self.by == "class" else ""
        return (f"holdout {self.fraction:g} by {self.by}: {what}{self.num_videos} of {self.split_videos} training "
                f"videos held out for validation{how}, holdout_seed {self.seed}")


def holdout_selection(video_ids: Sequence[str], labels: Sequence[int], fraction: float, by: str,
                      seed: int) -> HoldoutSelection:
    """The :class:`HoldoutSelection` of a training split given its ``video_id`` and ``label`` columns."""
    if by not in HOLDOUT_BY:
        raise ValueError(f"data.holdout_by: must be {' or '.join(HOLDOUT_BY)}, got {by!r}")
    num_classes = len({int(c) for c in labels})
    if by == "group":
        held, groups, num_groups = select_holdout_by_group(video_ids, fraction, seed)
        return HoldoutSelection(fraction=fraction, by=by, seed=seed, split_videos=len(video_ids),
                                num_classes=num_classes, video_ids=frozenset(held), groups=tuple(groups),
                                num_groups=num_groups)
    held = select_holdout_by_class(video_ids, labels, fraction, seed)
    return HoldoutSelection(fraction=fraction, by=by, seed=seed, split_videos=len(video_ids), num_classes=num_classes,
                            video_ids=frozenset(held))
