"""Parameter and FLOP summary of a registered model (paper §4.1 backbones; Hara et al. sizes).

    python -m dynamonet.models.summary resnext101 --num-classes 400 --clip-len 16 --size 112 --mode backbone
    python -m dynamonet.models.summary --list

Prints one JSON object. FLOPs come from ``torch.utils.flop_counter`` (2 FLOPs per multiply-add)
for one clip, counted on the ``meta`` device by default, so nothing is allocated or computed and
even ResNeXt-152 is summarised instantly. Convolutions, linear layers and batched matmuls are
counted; BN, ReLU, pooling and additions are not (the usual convention for these reference sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import MODES
from .registry import build_model, list_models


def summarize(name: str, *, num_classes: int = 400, clip_len: int = 16, size: int = 112, mode: str = "backbone",
              device: str = "meta", **kw: Any) -> dict[str, Any]:
    """Parameters and forward FLOPs of one ``(1, 3, clip_len, size, size)`` clip.

    Args:
        name: registered architecture.
        num_classes, clip_len, mode: passed to :func:`build_model`.
        size: crop height and width.
        device: ``meta`` (count only) or a real device (runs the forward once).
        **kw: further :func:`build_model` arguments (``shortcut``, ``widths``, ``kernel_size``, …).

    Returns:
        A JSON-serialisable dict with ``params`` and ``gflops`` among others.
    """
    with torch.device(device):
        model = build_model(name, mode=mode, num_classes=num_classes, clip_len=clip_len, **kw).eval()
        x = torch.rand(1, 3, clip_len, size, size) if device != "meta" else torch.empty(1, 3, clip_len, size, size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    flops = counter.get_total_flops()
    return {
        "name": name,
        "mode": mode,
        "num_classes": num_classes,
        "input": [1, 3, clip_len, size, size],
        "shortcut": kw.get("shortcut") or "default",
        "params": params,
        "params_m": round(params / 1e6, 3),
        "gflops": round(flops / 1e9, 3),
        "flops_counter": "torch.utils.flop_counter, 2 FLOPs per multiply-add, conv/linear/matmul only",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name", nargs="?", help="registered architecture (see --list)")
    p.add_argument("--num-classes", type=int, default=400, help="classifier outputs")
    p.add_argument("--clip-len", type=int, default=16, help="frames per clip (T)")
    p.add_argument("--size", type=int, default=112, help="crop height and width")
    p.add_argument("--mode", default="backbone", choices=MODES, help="model mode (backbone = Hara's plain 3D-CNN)")
    p.add_argument("--shortcut", choices=("A", "B"), default=None, help="residual shortcut type (default: the arch's)")
    p.add_argument("--kernel-size", type=int, default=None, help="dynamic filter size s")
    p.add_argument("--widths", type=int, nargs=4, default=None, help="override the per-stage widths")
    p.add_argument("--device", default="meta", help="meta (count only, default) or cpu/cuda (real forward)")
    p.add_argument("--list", action="store_true", help="print the registered architectures and exit")
    args = p.parse_args(argv)
    if args.list:
        print(json.dumps({"models": list_models(), "modes": list(MODES)}))
        return 0
    if not args.name:
        p.error("NAME is required unless --list is given")
    try:
        out = summarize(args.name, num_classes=args.num_classes, clip_len=args.clip_len, size=args.size,
                        mode=args.mode, device=args.device, shortcut=args.shortcut, kernel_size=args.kernel_size,
                        widths=args.widths)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
