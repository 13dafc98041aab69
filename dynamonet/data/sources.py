"""Annotation parsers: from a dataset's own layout to a flat list of labelled videos.

Paper §4.2 evaluates on UCF101, HMDB51 and Kinetics-400, and pre-trains on unlabeled video (§4.4).
Each parser reads the official annotation format and the files as distributed:

    ucf101     UCF-101/<Class>/v_<Class>_gXX_cYY.avi + ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt
    hmdb51     <class>/<video>.avi + <class>_test_split{1,2,3}.txt ("<video>.avi 1|2|0": train|test|unused)
    kinetics   CSV label,youtube_id,time_start,time_end,split + <youtube_id>_<start:06d>_<end:06d>.mp4
               (flat, or under <split>/<label>/: files are found by name wherever they are)
    folder     <class>/<video> or <split>/<class>/<video> (split folders train|val|validation|test)
    unlabeled  every video file below the root, label -1, split "unlabeled" (the pretraining pool)

Output: :class:`SourceListing` (class names in index order, one :class:`VideoEntry` per usable
annotation line, and one rejection record per annotation line whose file is missing). Roots may be
local directories or ``s3://`` prefixes (listing goes through pyarrow.fs).
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from dynamonet.storage import read_bytes, resolve_filesystem

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
SOURCES = ("ucf101", "hmdb51", "kinetics", "folder", "unlabeled", "synthetic")
SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "validate": "val", "test": "test", "testing": "test"}


@dataclass(slots=True)
class VideoEntry:
    """One video to ingest. ``source`` is relative to the input root (POSIX separators)."""

    video_id: str
    source: str
    split: str
    label: int
    label_name: str


@dataclass
class SourceListing:
    """The parsed dataset: class names in index order, entries, and annotation-level rejections."""

    kind: str
    input_root: str
    class_names: list[str]
    entries: list[VideoEntry]
    rejected: list[dict[str, str]] = field(default_factory=list)


def list_videos(root: str, endpoint: str = "") -> list[str]:
    """Relative paths (sorted, POSIX) of every video file below ``root`` (local or s3://)."""
    fs, base = resolve_filesystem(root, endpoint)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=False))
    rel = [posixpath.relpath(i.path.replace(os.sep, "/"), base.replace(os.sep, "/")) for i in infos
           if i.type == pafs.FileType.File and i.path.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(rel)


def read_text(uri: str, endpoint: str = "") -> str:
    """Text content of a local or s3:// file (BOM and CRLF tolerated)."""
    fs, path = resolve_filesystem(uri, endpoint)
    return read_bytes(fs, path).decode("utf-8-sig").replace("\r\n", "\n")


def _entry(rel: str, split: str, label: int, name: str) -> VideoEntry:
    return VideoEntry(video_id=posixpath.splitext(rel)[0], source=rel, split=split, label=label, label_name=name)


def _missing(rel: str, split: str, where: str) -> dict[str, str]:
    return {"source": rel, "split": split, "reason": f"missing: listed in {where}, no such file under the input"}


def _annotation_path(annotations: str, name: str) -> str:
    return f"{annotations.rstrip('/')}/{name}"


# --------------------------------------------------------------------------------------------
# UCF101
# --------------------------------------------------------------------------------------------

def parse_ucf101(root: str, annotations: str, split: int, endpoint: str = "") -> SourceListing:
    """UCF101 with the official ``ucfTrainTestlist`` (class index, train/test lists of ``split``).

    Files are matched by base name, case-insensitively: the official lists spell some names
    differently from the files (``HandStandPushups`` vs ``HandstandPushups``).
    """
    ann = annotations or f"{root.rstrip('/')}/ucfTrainTestlist"
    classes: list[str] = []
    for line in read_text(_annotation_path(ann, "classInd.txt"), endpoint).split("\n"):
        if line.strip():
            idx, name = line.split()
            if int(idx) != len(classes) + 1:
                raise ValueError(f"--annotations: classInd.txt lists class {idx} out of order")
            classes.append(name)
    by_class = {c.lower(): i for i, c in enumerate(classes)}
    by_name = {posixpath.basename(p).lower(): p for p in list_videos(root, endpoint)}
    entries, rejected = [], []
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        for line in read_text(_annotation_path(ann, list_name), endpoint).split("\n"):
            if not line.strip():
                continue
            listed = line.split()[0]
            label = by_class.get(listed.split("/")[0].lower())
            rel = by_name.get(posixpath.basename(listed).lower())
            if rel is None or label is None:
                rejected.append(_missing(listed, split_name, list_name))
                continue
            entries.append(_entry(rel, split_name, label, classes[label]))
    return SourceListing("ucf101", root, classes, entries, rejected)


# --------------------------------------------------------------------------------------------
# HMDB51
# --------------------------------------------------------------------------------------------

def parse_hmdb51(root: str, annotations: str, split: int, endpoint: str = "") -> SourceListing:
    """HMDB51 with the official ``<class>_test_split<N>.txt`` files (1 = train, 2 = test, 0 = unused)."""
    ann = annotations or f"{root.rstrip('/')}/testTrainMulti_7030_splits"
    fs, ann_path = resolve_filesystem(ann, endpoint)
    suffix = f"_test_split{split}.txt"
    by_cls = sorted((posixpath.basename(i.path)[: -len(suffix)], i.path)
                    for i in fs.get_file_info(pafs.FileSelector(ann_path, recursive=True)) if i.path.endswith(suffix))
    classes = [c for c, _ in by_cls]
    files = list_videos(root, endpoint)
    by_class_name = {(posixpath.basename(posixpath.dirname(p)).lower(), posixpath.basename(p).lower()): p
                     for p in files}
    entries, rejected = [], []
    for label, (cls, path) in enumerate(by_cls):
        for line in read_bytes(fs, path).decode("utf-8-sig").split("\n"):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "2"):
                continue  # blank, or 0 = not used in this split
            split_name = "train" if parts[1] == "1" else "test"
            rel = by_class_name.get((cls.lower(), parts[0].lower()))
            if rel is None:
                rejected.append(_missing(f"{cls}/{parts[0]}", split_name, posixpath.basename(path)))
                continue
            entries.append(_entry(rel, split_name, label, cls))
    return SourceListing("hmdb51", root, classes, entries, rejected)


# --------------------------------------------------------------------------------------------
# Kinetics
# --------------------------------------------------------------------------------------------

def _kinetics_csvs(annotations: str, endpoint: str) -> list[str]:
    if annotations.lower().endswith(".csv"):
        return [annotations]
    fs, base = resolve_filesystem(annotations, endpoint)
    found = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.path.lower().endswith(".csv"))
    prefix = annotations.rstrip("/")
    return [f"{prefix}/{posixpath.basename(p)}" for p in found]


def parse_kinetics(root: str, annotations: str, endpoint: str = "") -> SourceListing:
    """Kinetics CSVs (``label,youtube_id,time_start,time_end,split``; a test CSV without labels
    gives label -1). Files ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere below ``root``."""
    if not annotations:
        raise ValueError("--annotations: kinetics needs the CSV file (or a directory of CSV files)")
    rows: list[tuple[dict[str, str], str]] = []
    for path in _kinetics_csvs(annotations, endpoint):
        reader = csv.DictReader(io.StringIO(read_text(path, endpoint)))
        rows += [(r, posixpath.basename(path)) for r in reader]
    classes = sorted({r.get("label", "").strip() for r, _ in rows} - {""})
    by_class = {c: i for i, c in enumerate(classes)}
    by_stem = {posixpath.splitext(posixpath.basename(p))[0]: p for p in list_videos(root, endpoint)}
    entries, rejected = [], []
    for r, where in rows:
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        split_name = SPLIT_DIRS.get(r.get("split", "").strip().lower(), r.get("split", "").strip() or "train")
        name = r.get("label", "").strip()
        rel = by_stem.get(stem)
        if rel is None:
            rejected.append(_missing(f"{stem}.mp4", split_name, where))
            continue
        entries.append(_entry(rel, split_name, by_class.get(name, -1), name))
    return SourceListing("kinetics", root, classes, entries, rejected)


# --------------------------------------------------------------------------------------------
# Class folders and unlabeled pools
# --------------------------------------------------------------------------------------------

def parse_folder(root: str, endpoint: str = "") -> SourceListing:
    """``<class>/<video>`` (split "train") or ``<split>/<class>/<video>``; classes sorted by name."""
    all_files = list_videos(root, endpoint)
    files = [p for p in all_files if "/" in p]
    rejected = [{"source": p, "split": "", "reason": "not inside a class folder"} for p in all_files if "/" not in p]
    with_split = bool(files) and all(p.split("/", 1)[0].lower() in SPLIT_DIRS and p.count("/") >= 2 for p in files)
    keyed = []
    for p in files:
        parts = p.split("/")
        split_name, cls = (SPLIT_DIRS[parts[0].lower()], parts[1]) if with_split else ("train", parts[0])
        keyed.append((p, split_name, cls))
    classes = sorted({c for _, _, c in keyed})
    by_class = {c: i for i, c in enumerate(classes)}
    entries = [_entry(p, s, by_class[c], c) for p, s, c in keyed]
    return SourceListing("folder", root, classes, entries, rejected)


def parse_unlabeled(root: str, endpoint: str = "") -> SourceListing:
    """Every video below ``root``: label -1, split "unlabeled"."""
    entries = [_entry(p, "unlabeled", -1, "") for p in list_videos(root, endpoint)]
    return SourceListing("unlabeled", root, [], entries)


def parse_source(kind: str, root: str, annotations: str = "", split: int = 1, endpoint: str = "") -> SourceListing:
    """Dispatch to the parser of ``kind`` (one of :data:`SOURCES`; ``synthetic`` is a class-folder tree)."""
    parsers: dict[str, Callable[[], SourceListing]] = {
        "ucf101": lambda: parse_ucf101(root, annotations, split, endpoint),
        "hmdb51": lambda: parse_hmdb51(root, annotations, split, endpoint),
        "kinetics": lambda: parse_kinetics(root, annotations, endpoint),
        "folder": lambda: parse_folder(root, endpoint),
        "synthetic": lambda: parse_folder(root, endpoint),
        "unlabeled": lambda: parse_unlabeled(root, endpoint),
    }
    if kind not in parsers:
        raise ValueError(f"--source: unknown source {kind!r}; choose from {', '.join(SOURCES)}")
    if split not in (1, 2, 3):
        raise ValueError(f"--split: must be 1, 2 or 3, got {split}")
    return parsers[kind]()
