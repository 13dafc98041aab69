"""Stratified label fractions (paper Table 2): counts per class, complement, order independence,
determinism, nesting, and the one-line error for an empty unlabeled rest. No Ray."""

from __future__ import annotations

import collections
import math
import random

import numpy as np
import pytest

from dynamonet.data.subset import label_selection, labeled_count, select_labeled, select_subset

SIZES = {0: 10, 1: 7, 2: 1, 3: 2, 4: 25, 5: 3}   # videos per class, odd and tiny classes included


def split(sizes=SIZES):
    ids = [f"train/c{c}/v{i:03d}" for c, n in sizes.items() for i in range(n)]
    labels = [int(vid.split("/")[1][1:]) for vid in ids]
    return ids, labels


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])
def test_per_class_counts_are_rounded_shares_with_at_least_one(fraction):
    ids, labels = split()
    chosen = select_labeled(ids, labels, fraction, seed=0)
    per_class = collections.Counter(int(v.split("/")[1][1:]) for v in chosen)
    for c, n in SIZES.items():
        assert per_class[c] == max(1, math.floor(fraction * n + 0.5)) == labeled_count(n, fraction)
    assert labeled_count(5, 0.5) == 3 and labeled_count(4, 0.5) == 2 and labeled_count(3, 0.01) == 1
    assert labeled_count(0, 0.5) == 0


def test_labeled_and_unlabeled_partition_the_split():
    ids, labels = split()
    labeled = select_subset(ids, labels, 0.5, "labeled", seed=3)
    unlabeled = select_subset(ids, labels, 0.5, "unlabeled", seed=3)
    assert labeled | unlabeled == set(ids) and not labeled & unlabeled
    assert labeled == select_labeled(ids, labels, 0.5, seed=3)


def test_independent_of_input_order_and_deterministic():
    ids, labels = split()
    pairs = list(zip(ids, labels, strict=True))
    random.Random(1).shuffle(pairs)
    shuffled_ids, shuffled_labels = zip(*pairs, strict=True)
    first = select_labeled(ids, labels, 0.5, seed=7)
    assert select_labeled(list(shuffled_ids), list(shuffled_labels), 0.5, seed=7) == first
    assert select_labeled(ids, labels, 0.5, seed=7) == first
    assert select_labeled(np.array(ids), np.array(labels), 0.5, seed=7) == first   # numpy columns too


def test_seeds_differ_fractions_nest_and_one_selects_all():
    ids, labels = split()
    assert select_labeled(ids, labels, 0.5, seed=0) != select_labeled(ids, labels, 0.5, seed=1)
    quarter, half = select_labeled(ids, labels, 0.25, seed=0), select_labeled(ids, labels, 0.5, seed=0)
    assert quarter < half                                   # the same per-class permutation: nested
    assert select_labeled(ids, labels, 1.0, seed=5) == set(ids)


def test_unlabeled_videos_form_a_class_of_their_own():
    ids, labels = ["a", "b", "c", "d"], [-1, -1, 0, 0]
    assert len(select_labeled(ids, labels, 0.5, seed=0)) == 2


def test_errors_are_one_line_naming_the_field():
    ids, labels = split({0: 1, 1: 1, 2: 2})
    with pytest.raises(ValueError, match=r"^data\.label_fraction: 0\.9 leaves no unlabeled video") as e:
        select_subset(ids, labels, 0.9, "unlabeled", seed=0)
    assert "\n" not in str(e.value)
    assert select_subset(ids, labels, 0.5, "unlabeled", seed=0) == set(ids) - select_labeled(ids, labels, 0.5, 0)
    with pytest.raises(ValueError, match=r"^data\.label_fraction: must be in \(0, 1\]"):
        select_labeled(ids, labels, 0.0, seed=0)
    with pytest.raises(ValueError, match=r"^data\.label_seed: must be >= 0"):
        select_labeled(ids, labels, 0.5, seed=-1)
    with pytest.raises(ValueError, match=r"^data\.label_subset"):
        select_subset(ids, labels, 0.5, "some", seed=0)


def test_label_selection_keeps_split_indices_and_describes_itself():
    ids, labels = split()
    indices = [100 + 3 * i for i in range(len(ids))]              # video_index in the full split, any values
    sel = label_selection(indices, ids, labels, 0.5, "labeled", 0)
    chosen = select_labeled(ids, labels, 0.5, 0)
    assert sel.video_ids == chosen and sel.num_videos == len(chosen) and sel.split_videos == len(ids)
    assert list(sel.video_indices) == sorted(i for i, v in zip(indices, ids, strict=True) if v in chosen)
    assert sel.describe() == (f"label_fraction 0.5 (labeled): {len(chosen)} of {len(ids)} training videos, "
                              f"stratified over {len(SIZES)} classes, label_seed 0")
