"""One nested, validated configuration for every DynamoNet entry point.

The flow (see DESIGN.md and the README):

    YAML recipe ──► defaults of :class:`Config` ──► ``--set a.b=v`` / flags ──► Config
         Config.to_dict() ──► Ray ``train_loop_config`` ──► Config.from_dict() in each worker

Every field carries a ``help`` text; :mod:`dynamonet.cli` turns each into a ``--section.field``
flag, so every option of a recipe can be overridden on the command line. Validation happens in
``__post_init__`` and raises ``ValueError`` naming the field (``model.kernel_size``), so bad
configuration fails on the driver before any Ray worker starts.

Paper references: loss weights α=0.1, β=1.0 and the Huber δ=0.01 (§3.1–3.2, §4.3); SGD with
Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 at batch 64 divided by 10 on a validation-loss
plateau (§4.3); 5×5 dynamic filters (§3.1); clips of 16/32/64 frames, 112×112 crops after a
resize to 122 (§3, §4.3).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import yaml

MODES = ("pretrain", "joint", "no_fp", "backbone")
FP_REDUCTIONS = ("frame", "pixel")
HOLDOUT = "holdout"  # data.val_split: the part of data.train_split held out by data.holdout_fraction
HOLDOUT_BY = ("class", "group")
REQUIRED = "???"  # a recipe value the user must supply (e.g. data.root of the UCF101 recipe)


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field with a help text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


@dataclass
class ModelConfig:
    arch: str = _f("r3d18", "backbone architecture (see `python -m dynamonet.models.summary --list`)")
    mode: str = _f("joint", "pretrain (frame prediction only) | joint (α·FP+β·CE) | no_fp (filters, "
                            "no FP loss, paper §4.5) | backbone (plain 3D-CNN baseline)")
    num_classes: int = _f(0, "classifier outputs; 0 = the class count of the dataset manifest")
    kernel_size: int = _f(5, "spatial size s of the dynamic motion filters (3..7 as in paper §3.1; even sizes pad one more "
                                   "zero after than before, see docs/model.md)")
    dmr_dim: int = _f(512, "size of the dynamic motion representation FC (paper §4.1: 512)")
    ar_dim: int = _f(512, "size of the appearance representation FC")
    head_channels: int = _f(64, "channels of the 2 conv layers in the motion and AR branches (paper §4.1: 64)")
    dropout: float = _f(0.5, "dropout before the classifier")
    shortcut: str = _f("", "residual shortcut type A or B; empty = the architecture's default")
    widths: list = _f([], "override the per-stage widths (empty = the architecture's default)")
    stem_pool: bool = _f(True, "keep the stem max-pool (Hara); false doubles every stage's resolution, "
                               "for small inputs (Hara's --no_max_pool)")

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "model.mode", f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        _check(isinstance(self.kernel_size, int) and 3 <= self.kernel_size <= 7,
               "model.kernel_size", f"must be an integer in 3..7, got {self.kernel_size!r}")
        _check(self.num_classes >= 0, "model.num_classes", f"must be >= 0, got {self.num_classes}")
        _check(self.dmr_dim > 0 and self.ar_dim > 0 and self.head_channels > 0, "model.dmr_dim",
               "dmr_dim, ar_dim and head_channels must be positive")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.shortcut in ("", "A", "B"), "model.shortcut", f"must be A, B or empty, got {self.shortcut!r}")


SYNTHETIC_KINDS = ("motion", "subtle", "order")


@dataclass
class SyntheticConfig:
    kind: str = _f("motion", "motion: 13 global motions (the embedded default) | subtle: the benchmark set "
                             "(subtle object motions among distractors, docs/results.md) | order: up to 12 "
                             "classes that differ only in the order of two motions (STFN, docs/model.md)")
    num_classes: int = _f(13, "classes (motion: 8 translations, 2 rotations, zoom in/out, static)")
    train_per_class: int = _f(48, "training videos per class")
    val_per_class: int = _f(12, "validation videos per class")
    num_frames: int = _f(24, "frames per generated video")
    size: int = _f(48, "height and width of the generated videos")
    fps: float = _f(25.0, "frame rate of the generated videos")
    seed: int = _f(0, "generator seed; the dataset is a pure function of this config")

    def __post_init__(self) -> None:
        _check(self.kind in SYNTHETIC_KINDS, "data.synthetic.kind",
               f"unknown kind {self.kind!r}; choose from {', '.join(SYNTHETIC_KINDS)}")
        _check(2 <= self.num_classes <= 13, "data.synthetic.num_classes", f"must be in 2..13, got {self.num_classes}")
        _check(self.train_per_class >= 1 and self.val_per_class >= 1, "data.synthetic.train_per_class",
               "train_per_class and val_per_class must be >= 1")
        _check(self.num_frames >= 3, "data.synthetic.num_frames", f"must be >= 3, got {self.num_frames}")
        _check(self.kind != "order" or self.num_frames >= 32, "data.synthetic.num_frames",
               f"the order kind needs >= 32 frames, got {self.num_frames}")
        _check(self.size >= 16 and self.size % 2 == 0, "data.synthetic.size", f"must be even and >= 16, got {self.size}")


@dataclass
class DataConfig:
    root: str = _f("", "dataset root holding manifest.json: a local directory or s3://bucket/prefix; "
                       "empty = the embedded synthetic dataset (built once and cached)")
    s3_endpoint: str = _f("", "S3 endpoint override (host:port or URL); empty = AWS_ENDPOINT_URL or AWS")
    s3_max_attempts: int = _f(10, "attempts per S3 request while streaming (AWS standard retry mode, backoff "
                                  "capped at 20 s: 10 attempts ride out about 75 s of unreachable endpoint)")
    cache_dir: str = _f("", "where the embedded synthetic dataset is cached; empty = ~/.cache/dynamonet")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig,
                                       metadata={"help": "the embedded synthetic dataset"})
    train_split: str = _f("train", "split used for training")
    val_split: str = _f("val", "split used for validation (the plateau schedule, the best checkpoint, sweeps) and by "
                               "default by evaluate.py; `holdout` = the part of train_split held out by "
                               "data.holdout_fraction (evaluate.py then scores `test`); empty = no validation")
    clip_len: int = _f(16, "T: frames the network sees; each clip carries T+1 frames for frame prediction")
    frame_stride: int = _f(1, "temporal stride between the frames of a clip")
    clips_per_video: int = _f(1, "K: random training windows per video per epoch")
    crop_size: int = _f(112, "spatial crop size (paper: 112)")
    hflip: bool = _f(True, "random horizontal flip (p=0.5) of training clips (paper §4.3); never applied to datasets "
                           "whose manifest declares direction-dependent labels (the synthetic motion set)")
    resize_short: int = _f(122, "short side every frame is resized to before the crop, in training and evaluation "
                                "(paper §4.3: 122); rows stored at this short side are decoded as stored")
    batch_size: int = _f(8, "clips per Train worker per step")
    decode_actors: int = _f(2, "decoders running at once (size of the Ray Data task or actor pool)")
    decode_cpus: float = _f(1.0, "logical CPUs each decoder requests")
    decode_pool: str = _f("tasks", "tasks (warm worker processes, reused across epochs) | actors (an actor "
                                   "pool, restarted every epoch: ~3 s of startup per epoch and split)")
    decode_resources: dict = _f({}, "extra Ray resources each decoder requests (node placement, e.g. {decode: 1}); "
                                    "empty on a multi-node cluster that offers `decode` = {decode: decode_cpus}")
    decode_memory_mb: int = _f(768, "memory each decoder declares to Ray's scheduler, in MiB (a shard, one ≤ 128 MB "
                                    "output block and the decoder itself)")
    decode_max_retries: int = _f(3, "times a decode task is retried when its worker dies (OOM kill, native crash, "
                                    "lost node); then the epoch fails with a line naming the shard")
    max_eval_clips: int = _f(0, "cap on evaluation clips per video (0 = every non-overlapping clip)")
    shuffle_buffer: int = _f(0, "local shuffle buffer in clips for training batches (0 = off)")
    label_fraction: float = _f(1.0, "share of the training split's videos used, stratified per class (Table 2's "
                                    "half-label runs: 0.5); the same videos for every train.seed")
    label_subset: str = _f("labeled", "labeled: the label_fraction share | unlabeled: the rest of the split "
                                      "(self-supervised pretraining on what the labeled runs do not use)")
    label_seed: int = _f(0, "seed of the label_fraction selection (independent of train.seed)")
    holdout_fraction: float = _f(0.0, "share of train_split held out for validation (data.val_split=holdout); "
                                      "training reads the rest (0 = none). docs/data.md")
    holdout_by: str = _f("class", "class: round(holdout_fraction × n) videos of every class of n >= 2 (HMDB51) | "
                                  "group: whole UCF101 groups gNN (v_<Class>_gNN_cMM), that share of the split's groups")
    holdout_seed: int = _f(0, "seed of the holdout selection (independent of train.seed and label_seed)")

    def source_split(self, split: str) -> str:
        """The manifest split whose shards a stream of ``split`` reads: ``train_split`` for
        ``holdout`` (the part held out of it for validation), else ``split`` itself."""
        return self.train_split if split == HOLDOUT else split

    def __post_init__(self) -> None:
        if isinstance(self.synthetic, dict):
            self.synthetic = SyntheticConfig(**self.synthetic)
        _check(self.root != REQUIRED, "data.root",
               "this recipe needs a dataset: pass --data DIR or --data s3://bucket/prefix (see prepare_data.py)")
        _check(bool(self.train_split), "data.train_split", "must not be empty")
        _check(self.clip_len >= 2, "data.clip_len", f"must be >= 2, got {self.clip_len}")
        _check(self.frame_stride >= 1, "data.frame_stride", f"must be >= 1, got {self.frame_stride}")
        _check(self.clips_per_video >= 1, "data.clips_per_video", f"must be >= 1, got {self.clips_per_video}")
        _check(self.crop_size >= 8, "data.crop_size", f"must be >= 8, got {self.crop_size}")
        _check(self.resize_short >= self.crop_size, "data.resize_short",
               f"must be >= data.crop_size ({self.crop_size}), got {self.resize_short}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.decode_actors >= 1, "data.decode_actors", f"must be >= 1, got {self.decode_actors}")
        _check(self.decode_cpus > 0, "data.decode_cpus", f"must be > 0, got {self.decode_cpus}")
        _check(self.decode_pool in ("tasks", "actors"), "data.decode_pool",
               f"must be tasks or actors, got {self.decode_pool!r}")
        _check(self.max_eval_clips >= 0, "data.max_eval_clips", f"must be >= 0, got {self.max_eval_clips}")
        _check(self.s3_max_attempts >= 1, "data.s3_max_attempts", f"must be >= 1, got {self.s3_max_attempts}")
        _check(self.decode_memory_mb >= 64, "data.decode_memory_mb", f"must be >= 64, got {self.decode_memory_mb}")
        _check(self.decode_max_retries >= 0, "data.decode_max_retries",
               f"must be >= 0, got {self.decode_max_retries}")
        _check(0.0 < self.label_fraction <= 1.0, "data.label_fraction", f"must be in (0, 1], got {self.label_fraction}")
        _check(self.label_subset in ("labeled", "unlabeled"), "data.label_subset",
               f"must be labeled or unlabeled, got {self.label_subset!r}")
        _check(self.label_subset == "labeled" or self.label_fraction < 1.0, "data.label_subset",
               "unlabeled needs data.label_fraction < 1 (with 1.0 no video is left unlabeled)")
        _check(0.0 <= self.holdout_fraction < 1.0, "data.holdout_fraction",
               f"must be in [0, 1), got {self.holdout_fraction}")
        _check(self.holdout_by in HOLDOUT_BY, "data.holdout_by",
               f"must be {' or '.join(HOLDOUT_BY)}, got {self.holdout_by!r}")
        _check(self.holdout_seed >= 0, "data.holdout_seed", f"must be >= 0, got {self.holdout_seed}")
        _check(self.train_split != HOLDOUT, "data.train_split",
               f"{HOLDOUT!r} names the validation part held out of the training split; it cannot be trained on")
        _check(self.val_split != HOLDOUT or self.holdout_fraction > 0, "data.val_split",
               "holdout needs data.holdout_fraction > 0 (the share of data.train_split held out for validation)")
        _check(self.holdout_fraction == 0 or self.val_split in (HOLDOUT, ""), "data.holdout_fraction",
               f"the held-out videos are validated only with data.val_split=holdout (got {self.val_split!r}); "
               "set data.holdout_fraction=0 to validate on another split")


@dataclass
class LossConfig:
    alpha: float = _f(0.1, "weight α of the frame-prediction loss (paper §4.3: 0.1)")
    beta: float = _f(1.0, "weight β of the classification loss (paper §4.3: 1.0)")
    huber_delta: float = _f(0.01, "Huber threshold δ on pixels in [0, 1] (paper eq. 2: 0.01)")
    fp_reduction: str = _f("frame", "frame: eq. 2 on the norms of each frame's difference (the paper's "
                                     "formula); pixel: elementwise Huber, mean over pixels")

    def __post_init__(self) -> None:
        _check(self.alpha >= 0, "loss.alpha", f"must be >= 0, got {self.alpha}")
        _check(self.beta >= 0, "loss.beta", f"must be >= 0, got {self.beta}")
        _check(self.huber_delta > 0, "loss.huber_delta", f"must be > 0, got {self.huber_delta}")
        _check(self.fp_reduction in FP_REDUCTIONS, "loss.fp_reduction",
               f"must be one of {', '.join(FP_REDUCTIONS)}, got {self.fp_reduction!r}")


SCHEDULES = ("plateau", "cosine", "constant")


@dataclass
class OptimConfig:
    lr: float = _f(0.1, "learning rate at the reference batch `lr_batch` (paper: 0.1 at 64)")
    lr_batch: int = _f(64, "reference global batch; lr scales linearly with global_batch / lr_batch")
    momentum: float = _f(0.9, "SGD momentum (Nesterov)")
    nesterov: bool = _f(True, "Nesterov momentum (paper §4.3)")
    weight_decay: float = _f(1e-4, "weight decay")
    schedule: str = _f("plateau", "plateau (divide by plateau_factor when val loss stalls) | cosine | constant")
    plateau_factor: float = _f(0.1, "lr factor on a validation-loss plateau")
    plateau_patience: int = _f(2, "epochs without validation-loss improvement before dividing the lr")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (0 = off)")
    min_lr: float = _f(0.0, "lower bound of the learning rate")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0 = off)")

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.lr_batch >= 1, "optim.lr_batch", f"must be >= 1, got {self.lr_batch}")
        _check(self.schedule in SCHEDULES, "optim.schedule", f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        _check(0 < self.plateau_factor < 1, "optim.plateau_factor", f"must be in (0, 1), got {self.plateau_factor}")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")


AMP_MODES = ("auto", "off", "fp16", "bf16")


@dataclass
class TrainConfig:
    epochs: int = _f(10, "training epochs")
    num_workers: int = _f(2, "Ray Train workers (DDP ranks)")
    use_gpu: bool = _f(False, "one GPU per worker, NCCL backend (gloo on CPU)")
    cpus_per_worker: float = _f(1.0, "logical CPUs each Train worker requests")
    gpus_per_worker: float = _f(1.0, "GPUs each Train worker requests when use_gpu")
    worker_resources: dict = _f({}, "extra Ray resources each Train worker requests (node placement)")
    torch_threads: int = _f(0, "intra-op threads per worker (0 = cores / workers on this node)")
    amp: str = _f("auto", "mixed precision on GPU: auto (bf16 where supported, else fp16) | off | fp16 | bf16")
    channels_last: bool = _f(True, "channels_last_3d memory format on GPU")
    seed: int = _f(0, "random seed: initialisation, dropout, and every data draw (shard order, windows, crops, "
                      "flips) derive from it, the epoch, the video and the draw index")
    deterministic: bool = _f(True, "reproducible runs: Ray Data keeps block order (preserve_order), so the same seed "
                                   "gives the same batches on every rank; on GPU also deterministic kernels "
                                   "(cuDNN, cuBLAS; slower). docs/training.md")
    log_every: int = _f(20, "progress line every N steps (rank 0)")
    eval_every: int = _f(1, "validate every N epochs (and always after the last)")

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.num_workers >= 1, "train.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        _check(self.amp in AMP_MODES, "train.amp", f"unknown amp mode {self.amp!r}; choose from {', '.join(AMP_MODES)}")
        _check(self.eval_every >= 1, "train.eval_every", f"must be >= 1, got {self.eval_every}")


@dataclass
class STFNConfig:
    checkpoint: str = _f("", "DynamoNet checkpoint (run dir, checkpoint dir or .pt; local or s3://) whose clip features "
                             "STFN fuses; empty = this recipe's DynamoNet, trained first (or reused: a run named "
                             "<recipe>-dynamonet-<config hash> under run.storage_path)")
    features: str = _f("", "where the extracted features go (local or s3://); empty = <the checkpoint's run>/features")
    train_split: str = _f("", "split STFN trains on; empty = data.train_split (without its held-out part)")
    val_split: str = _f("", "split STFN is validated on; empty = data.val_split (holdout: the held-out part)")
    width: int = _f(128, "channels of both streams and of the fused sequence (seeds/stfn-summary.txt)")
    depth: int = _f(2, "Residual Inception blocks per stream before the fusion connection")
    kernel_sizes: list = _f([1, 3, 5], "temporal widths (in clips) of the parallel convolutions of a Residual "
                                       "Inception block; odd")
    dropout: float = _f(0.5, "dropout before STFN's classifier")
    epochs: int = _f(40, "STFN training epochs")
    batch_size: int = _f(16, "videos per Train worker per step (padded to the longest, with a mask)")
    lr: float = _f(0.003, "AdamW learning rate, cosine-decayed to 0 over stfn.epochs")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    num_workers: int = _f(1, "Ray Train workers (DDP ranks) of STFN training")
    extract_actors: int = _f(1, "model replicas scoring clips during feature extraction (Ray Data actors, each "
                                "placed like a Train worker: train.worker_resources, a GPU with train.use_gpu)")

    def __post_init__(self) -> None:
        _check(self.width >= 4, "stfn.width", f"must be >= 4, got {self.width}")
        _check(self.depth >= 0, "stfn.depth", f"must be >= 0, got {self.depth}")
        _check(bool(self.kernel_sizes) and all(isinstance(k, int) and k >= 1 and k % 2 == 1 for k in self.kernel_sizes),
               "stfn.kernel_sizes", f"must be a non-empty list of odd integers >= 1, got {self.kernel_sizes!r}")
        _check(0.0 <= self.dropout < 1.0, "stfn.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.epochs >= 1, "stfn.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "stfn.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "stfn.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "stfn.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.num_workers >= 1, "stfn.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.extract_actors >= 1, "stfn.extract_actors", f"must be >= 1, got {self.extract_actors}")
        _check(self.train_split != HOLDOUT, "stfn.train_split", f"{HOLDOUT!r} is the validation part; it cannot be trained on")


@dataclass
class RunConfig:
    name: str = _f("", "run name; re-running with the same name resumes it (empty = <recipe>-<time>)")
    storage_path: str = _f("runs", "where checkpoints and logs go: a local directory or s3://bucket/path; on a "
                                   "multi-node cluster a relative path is taken under DYNAMONET_STORAGE")
    keep_checkpoints: int = _f(2, "epoch checkpoints kept in storage (the latest ones; older ones are deleted); "
                                  "the best by val/top1 is kept besides, as checkpoint_best (0 = keep all)")
    record_draws: bool = _f(False, "write every training clip's draw (video, clip, window start, crop, flip) to "
                                   "<run>/draws/epoch_NNNN/ (to check that a resumed run continues the random stream)")
    max_failures: int = _f(2, "restarts from the last checkpoint after a worker failure")
    init_from: str = _f("", "checkpoint to initialise weights from (matching names and shapes are loaded); "
                            "{seed} is replaced by train.seed")
    init_strict: bool = _f(False, "refuse run.init_from if any layer would be re-initialised or reshaped, or a "
                                  "checkpoint tensor left unused (default: load what fits, list the rest)")
    resume: bool = _f(False, "continue the run named by run.name (or the latest run in storage_path)")
    force: bool = _f(False, "resume even if the stored config differs from this one")
    ray_address: str = _f("", "Ray cluster address; empty = RAY_ADDRESS or a new local Ray")
    local_cpus: int = _f(0, "logical CPUs of a new local Ray (0 = 4 × cores, oversubscribed so Data never starves)")

    def __post_init__(self) -> None:
        _check(self.max_failures >= -1, "run.max_failures", f"must be >= -1, got {self.max_failures}")
        _check(self.keep_checkpoints >= 0, "run.keep_checkpoints", f"must be >= 0, got {self.keep_checkpoints}")
        _check(bool(self.storage_path), "run.storage_path", "must not be empty")
        _check(self.storage_path != REQUIRED, "run.storage_path",
               "this recipe needs storage every node can reach: pass --storage-path s3://bucket/runs")


@dataclass
class Config:
    recipe: str = _f("custom", "name of the recipe this config came from")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "network"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "losses"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimiser"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training"})
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run and cluster"})
    stfn: STFNConfig = field(default_factory=STFNConfig, metadata={"help": "video-level fusion (train_stfn.py)"})

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable dict (the form Ray and checkpoints carry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build and validate from a (possibly partial) nested dict; unknown keys are errors."""
        return _build(cls, d, prefix="")

    def override(self, key: str, value: Any) -> Config:
        """A copy with ``key`` ("optim.lr") set to ``value`` (strings are parsed as YAML)."""
        d = self.to_dict()
        set_by_path(d, key, value)
        return Config.from_dict(d)

    def fingerprint(self) -> dict[str, Any]:
        """The part of the config that must not change when a run resumes.

        Excluded: run bookkeeping (name, resume, force, addresses, retention), the epoch count
        (extending a run is legitimate), and where and how the work runs, which changes no result
        (storage endpoint and retries, the cache, decoder and worker placement and sizes).
        """
        d = self.to_dict()
        d.pop("run")
        d["train"] = {k: v for k, v in d["train"].items() if k not in _PLACEMENT_KEYS["train"]}
        d["data"] = {k: v for k, v in d["data"].items() if k not in _PLACEMENT_KEYS["data"]}
        d["stfn"] = {k: v for k, v in d["stfn"].items() if k not in _PLACEMENT_KEYS["stfn"]}
        return d


_PLACEMENT_KEYS = {
    "train": ("epochs", "log_every", "worker_resources", "cpus_per_worker"),
    "data": ("s3_endpoint", "s3_max_attempts", "cache_dir", "decode_actors", "decode_cpus", "decode_pool",
             "decode_resources", "decode_memory_mb", "decode_max_retries"),
    "stfn": ("epochs", "extract_actors"),
}


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown config key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, typ, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        msg = str(e)
        # Sub-dataclasses report their own full key; only prefix top-level ones.
        raise ValueError(msg) from None
    except TypeError as e:  # pragma: no cover - defensive
        raise ValueError(f"{prefix.rstrip('.')}: {e}") from None


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Light type coercion for values coming from YAML or the command line."""
    if isinstance(value, str) and typ is not str:
        value = yaml.safe_load(value) if value.strip() else value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typ is list:
        if value in (None, ""):
            return []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return list(value)
    if typ is dict:
        if value in (None, ""):
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def set_by_path(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key="a.b"``; unknown sections are reported by name."""
    parts = key.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])}: unknown config section")
        node = node[p]
    if parts[-1] not in node:
        raise ValueError(f"{key}: unknown config key")
    node[parts[-1]] = value


def deep_update(base: dict[str, Any], upd: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Recursively merge ``upd`` into a copy of ``base``; keys unknown to ``base`` are errors."""
    out = copy.deepcopy(base)
    for k, v in (upd or {}).items():
        if k not in out:
            raise ValueError(f"{prefix}{k}: unknown config key")
        if isinstance(out[k], dict) and isinstance(v, dict) and k not in ("decode_resources", "worker_resources"):
            out[k] = deep_update(out[k], v, prefix=f"{prefix}{k}.")
        else:
            out[k] = v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Recipe YAML (optional) → defaults → ``key=value`` overrides → validated :class:`Config`."""
    d = Config().to_dict()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                recipe = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ValueError(f"--config: recipe file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"--config: {path} is not valid YAML: {e}") from None
        d = deep_update(d, recipe)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_by_path(d, key.strip(), value)
    return Config.from_dict(d)


def field_help(cls: type) -> dict[str, str]:
    """``{"section.field": help}`` for every leaf field reachable from ``cls``."""
    out: dict[str, str] = {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            for k, v in field_help(typ).items():
                out[f"{f.name}.{k}"] = v
        else:
            out[f.name] = f.metadata.get("help", "")
    return out
