"""Model registry, ``build_model`` factory and partial weight loading (paper §4.1 backbones).

Each ``@register_model`` function only chooses parts (block, depth, widths, shortcut,
cardinality, STC), like torchvision's builders; :func:`build_model` validates the arguments,
drops ``None`` (and empty) overrides so CLI defaults never override model defaults (as timm's
``create_model`` does), and assembles a :class:`~dynamonet.models.dynamonet.DynamoNet`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MODES, Config
from .backbones import ResNet3D
from .dynamonet import DynamoNet

__all__ = ["LoadReport", "build_model", "list_models", "load_matching_weights", "register_model"]

_REGISTRY: dict[str, Callable[[], dict[str, Any]]] = {}
_R3D = (64, 128, 256, 512)
_RESNEXT = (128, 256, 512, 1024)
_TINY = (16, 32, 64, 128)


def register_model(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Register a backbone spec under the function's name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def _spec(block: str, layers: tuple[int, ...], widths: tuple[int, ...], shortcut: str, cardinality: int = 1,
          stc: bool = False, stem_width: int = 64) -> dict[str, Any]:
    return {"block": block, "layers": layers, "widths": widths, "shortcut": shortcut, "cardinality": cardinality,
            "stc_reduction": 16 if stc else 0, "stem_width": stem_width, "stem_pool": True}


@register_model
def r3d10() -> dict[str, Any]:
    return _spec("basic", (1, 1, 1, 1), _R3D, "A")


@register_model
def r3d18() -> dict[str, Any]:
    return _spec("basic", (2, 2, 2, 2), _R3D, "A")


@register_model
def r3d34() -> dict[str, Any]:
    return _spec("basic", (3, 4, 6, 3), _R3D, "A")


@register_model
def r3d50() -> dict[str, Any]:
    return _spec("bottleneck", (3, 4, 6, 3), _R3D, "B")


@register_model
def r3d101() -> dict[str, Any]:
    return _spec("bottleneck", (3, 4, 23, 3), _R3D, "B")


@register_model
def r3d152() -> dict[str, Any]:
    return _spec("bottleneck", (3, 8, 36, 3), _R3D, "B")


@register_model
def resnext50() -> dict[str, Any]:
    return _spec("resnext", (3, 4, 6, 3), _RESNEXT, "B", cardinality=32)


@register_model
def resnext101() -> dict[str, Any]:
    return _spec("resnext", (3, 4, 23, 3), _RESNEXT, "B", cardinality=32)


@register_model
def resnext152() -> dict[str, Any]:
    return _spec("resnext", (3, 8, 36, 3), _RESNEXT, "B", cardinality=32)


@register_model
def stc_resnext50() -> dict[str, Any]:
    return _spec("resnext", (3, 4, 6, 3), _RESNEXT, "B", cardinality=32, stc=True)


@register_model
def stc_resnext101() -> dict[str, Any]:
    return _spec("resnext", (3, 4, 23, 3), _RESNEXT, "B", cardinality=32, stc=True)


@register_model
def stc_resnext152() -> dict[str, Any]:
    return _spec("resnext", (3, 8, 36, 3), _RESNEXT, "B", cardinality=32, stc=True)


@register_model
def r3d_tiny() -> dict[str, Any]:
    """The embedded CPU default: basic blocks, one per stage, widths 16/32/64/128."""
    return _spec("basic", (1, 1, 1, 1), _TINY, "A", stem_width=16)


@register_model
def resnext_tiny() -> dict[str, Any]:
    return _spec("resnext", (1, 1, 1, 1), _TINY, "B", cardinality=4, stem_width=8)


@register_model
def stc_resnext_tiny() -> dict[str, Any]:
    return _spec("resnext", (1, 1, 1, 1), _TINY, "B", cardinality=4, stc=True, stem_width=8)


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


_BACKBONE_KEYS = ("layers", "cardinality", "stc_reduction", "stem_width", "stem_pool")


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


def _resolve_spec(name: str, shortcut: str | None, widths: Any, kw: dict[str, Any]) -> dict[str, Any]:
    spec = _REGISTRY[name]()
    unknown = sorted(set(kw) - set(_BACKBONE_KEYS))
    _check(not unknown, unknown[0] if unknown else "", f"unknown argument; extra arguments are {', '.join(_BACKBONE_KEYS)}")
    if not _is_unset(shortcut):
        _check(shortcut in ("A", "B"), "shortcut", f"must be 'A' or 'B', got {shortcut!r}")
        spec["shortcut"] = shortcut
    if not _is_unset(widths):
        _check(len(widths) == 4 and all(isinstance(w, int) and w > 0 for w in widths), "widths",
               f"must be 4 positive integers, got {widths!r}")
        spec["stem_width"] = max(1, round(spec["stem_width"] * widths[0] / spec["widths"][0]))
        spec["widths"] = tuple(widths)
    spec.update(kw)
    _check(len(spec["layers"]) == 4 and all(int(n) >= 1 for n in spec["layers"]), "layers",
           f"must be 4 positive integers, got {spec['layers']!r}")
    _check(spec["cardinality"] >= 1, "cardinality", f"must be >= 1, got {spec['cardinality']}")
    _check(all(w % spec["cardinality"] == 0 for w in spec["widths"]), "cardinality",
           f"every stage width {spec['widths']} must be divisible by the cardinality {spec['cardinality']}")
    return spec


def build_model(name: str, *, mode: str = "joint", num_classes: int | None = 400, clip_len: int | None = 16,
                kernel_size: int | None = 5, dmr_dim: int | None = 512, ar_dim: int | None = 512,
                head_channels: int | None = 64, dropout: float | None = 0.5, shortcut: str | None = None,
                widths: Any = None, **kw: Any) -> DynamoNet:
    """Build a registered architecture as a DynamoNet in the given mode.

    Args:
        name: a name from :func:`list_models`.
        mode: ``pretrain`` | ``joint`` | ``no_fp`` | ``backbone``.
        num_classes: classifier outputs (unused in ``pretrain``).
        clip_len: T, frames per clip (>= 2).
        kernel_size: s of the dynamic filters, 3..7 (paper §3.1).
        dmr_dim, ar_dim, head_channels, dropout: head sizes (paper §4.1) and classifier dropout.
        shortcut: ``"A"`` / ``"B"``; ``None`` or ``""`` = the architecture's default.
        widths: four per-stage widths; ``None`` or ``[]`` = default (the stem scales with them).
        **kw: backbone extras ``layers``, ``cardinality``, ``stc_reduction``, ``stem_width``,
            ``stem_pool`` (False = no stem max-pool, Hara's ``--no_max_pool``).

    ``None`` values mean "the default", so ``build_model(n, **vars(args))`` never overrides defaults.

    Raises:
        ValueError: naming the argument, for an unknown name/mode/argument or an invalid value.
    """
    _check(name in _REGISTRY, "name", f"unknown model {name!r}; choose from {', '.join(list_models())}")
    _check(mode in MODES, "mode", f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    args = {"num_classes": 400, "clip_len": 16, "kernel_size": 5, "dmr_dim": 512, "ar_dim": 512,
            "head_channels": 64, "dropout": 0.5}
    given = {"num_classes": num_classes, "clip_len": clip_len, "kernel_size": kernel_size, "dmr_dim": dmr_dim,
             "ar_dim": ar_dim, "head_channels": head_channels, "dropout": dropout}
    args.update({k: v for k, v in given.items() if v is not None})
    kw = {k: v for k, v in kw.items() if not _is_unset(v)}
    ks = args["kernel_size"]
    _check(isinstance(ks, int) and 3 <= ks <= 7, "kernel_size", f"must be an integer in 3..7, got {ks!r}")
    _check(isinstance(args["clip_len"], int) and args["clip_len"] >= 2, "clip_len",
           f"must be an integer >= 2, got {args['clip_len']!r}")
    _check(mode == "pretrain" or args["num_classes"] >= 1, "num_classes", f"must be >= 1, got {args['num_classes']}")
    for key in ("dmr_dim", "ar_dim", "head_channels"):
        _check(isinstance(args[key], int) and args[key] >= 1, key, f"must be a positive integer, got {args[key]!r}")
    _check(0.0 <= args["dropout"] < 1.0, "dropout", f"must be in [0, 1), got {args['dropout']}")
    spec = _resolve_spec(name, shortcut, widths, kw)
    backbone = ResNet3D(spec["block"], spec["layers"], spec["widths"], spec["stem_width"], spec["shortcut"],
                        spec["cardinality"], spec["stc_reduction"], args["clip_len"], stem_pool=bool(spec["stem_pool"]))
    return DynamoNet(backbone, mode=mode, arch=name, **args)


def build_model_from_config(cfg: Config, num_classes: int) -> DynamoNet:
    """The DynamoNet of ``cfg.model`` for clips of ``cfg.data.clip_len`` frames (training, eval, benches)."""
    m = cfg.model
    return build_model(m.arch, mode=m.mode, num_classes=num_classes, clip_len=cfg.data.clip_len,
                       kernel_size=m.kernel_size, dmr_dim=m.dmr_dim, ar_dim=m.ar_dim,
                       head_channels=m.head_channels, dropout=m.dropout, shortcut=m.shortcut or None,
                       widths=list(m.widths) or None, stem_pool=m.stem_pool)


@dataclass
class LoadReport:
    """What :func:`load_matching_weights` did.

    Attributes:
        loaded: checkpoint names copied into the model.
        shape_mismatch: ``(name, checkpoint shape, model shape)`` left as initialised.
        missing: model entries absent from the checkpoint (left as initialised); for the merged
            head convs of a joint model loaded from per-branch entries (e.g. a ``pretrain``
            checkpoint), the per-branch names that were absent (``appearance.convs.*``).
        unexpected: checkpoint entries the model does not have.
        reinitialized_head: classifier parameters left freshly initialised (class count differs).
    """

    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialized_head: list[str] = field(default_factory=list)

    def summary(self, max_names: int = 8) -> str:
        """A short human-readable report."""

        def names(items: list[str]) -> str:
            more = f", … (+{len(items) - max_names})" if len(items) > max_names else ""
            return ", ".join(items[:max_names]) + more

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.reinitialized_head:
            lines.append(f"classifier re-initialised (class count differs): {names(self.reinitialized_head)}")
        if self.shape_mismatch:
            lines.append(f"skipped {len(self.shape_mismatch)} for shape mismatch: " + names(
                [f"{n} {tuple(a)}→{tuple(b)}" for n, a, b in self.shape_mismatch]))
        if self.missing:
            lines.append(f"missing from checkpoint {len(self.missing)}: {names(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint {len(self.unexpected)}: {names(self.unexpected)}")
        return "\n".join(lines)


    def layer_changes(self) -> list[str]:
        """One line per layer (module) that the load did not take as is from the checkpoint:
        re-initialised because a tensor's shape differs (``reshaped``) or because it is not in the
        checkpoint, or present only in the checkpoint (unused). Empty when the checkpoint fits the
        model exactly."""
        fresh: dict[str, list[str]] = {}
        reshaped: set[str] = set()
        for name, ckpt, own in self.shape_mismatch:
            module, tensor = _split_layer(name)
            fresh.setdefault(module, []).append(f"{tensor} {tuple(ckpt)} in the checkpoint, {tuple(own)} here")
            reshaped.add(module)
        for name in self.missing:
            module, tensor = _split_layer(name)
            fresh.setdefault(module, []).append(f"{tensor} not in the checkpoint")
        unused: dict[str, list[str]] = {}
        for name in self.unexpected:
            module, tensor = _split_layer(name)
            unused.setdefault(module, []).append(tensor)
        lines = [f"re-initialised{' (reshaped)' if k in reshaped else ''}: {k}: {'; '.join(v)}"
                 for k, v in sorted(fresh.items())]
        return lines + [f"unused from the checkpoint: {k}: {', '.join(v)}" for k, v in sorted(unused.items())]


def _split_layer(name: str) -> tuple[str, str]:
    """``"backbone.layer1.0.bn1.weight"`` → ``("backbone.layer1.0.bn1", "weight")``."""
    module, _, tensor = name.rpartition(".")
    return (module, tensor) if module else (name, name)


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_matching_weights(model: nn.Module, state_dict: Mapping[str, Any]) -> LoadReport:
    """Load every checkpoint tensor whose name and shape match; report the rest.

    Args:
        model: the freshly built model.
        state_dict: a ``state_dict`` (keys may carry a DDP ``module.`` prefix), or a checkpoint
            dict holding one under ``"model"`` or ``"state_dict"``.

    Returns:
        A :class:`LoadReport`; a classifier with another class count stays freshly initialised.
    """
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    source = {_strip(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    used: dict[str, list[str]] = {}
    absent: list[str] = []
    if isinstance(model, DynamoNet):  # per-branch ↔ merged head convs (see DynamoNet.adapt_state_dict)
        source, used, absent = model.adapt_state_dict(source)
    own = model.state_dict()
    head = set(model.head_parameter_names()) if hasattr(model, "head_parameter_names") else set()
    report, to_load = LoadReport(), {}
    for name, tensor in source.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.shape_mismatch.append((name, tuple(tensor.shape), tuple(own[name].shape)))
            if name in head:
                report.reinitialized_head.append(name)
        else:
            to_load[name] = tensor
    report.missing = [n for n in own if n not in source] + absent
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(name for key in to_load for name in used.get(key, [key]))
    return report
