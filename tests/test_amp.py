"""Mixed precision (``train.amp``) and the AMP GradScaler in checkpoints, without Ray.

docs/training.md promises: AMP and channels_last_3d on CUDA only (fp32 on CPU); bf16 where supported,
else fp16; a GradScaler with fp16 only, its state saved in the checkpoint and restored on resume, so a
resumed run continues exactly. The engine's autocast path is device-agnostic, so its bf16 forward and
the scaler's checkpoint round trip run here on CPU; the fp16 + channels_last run and its resume on a
real GPU is the ``gpu`` test at the end (skipped without CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from dynamonet.config import AMP_MODES, Config
from dynamonet.models import build_model_from_config
from dynamonet.train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from dynamonet.train.engine import Progress, train_one_epoch, validate
from dynamonet.train.optim import LRSchedule, build_optimizer, scaled_lr
from dynamonet.train.worker import amp_dtype_for

T, S, K, B, STEPS, EPOCHS = 4, 24, 3, 8, 4, 2


def cfg(amp: str = "auto") -> Config:
    sets = {"data.clip_len": T, "data.crop_size": S, "data.resize_short": S, "data.batch_size": B,
            "model.arch": "r3d_tiny", "model.dmr_dim": 16, "model.ar_dim": 16, "model.head_channels": 8,
            "model.dropout": 0.0, "optim.schedule": "constant", "optim.warmup_epochs": 0, "optim.lr": 0.2,
            "train.amp": amp, "train.log_every": 0}
    c = Config()
    for key, value in sets.items():
        c = c.override(key, str(value))
    return c


def clip_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches as ``iter_torch_batches`` yields them: uint8 clips (B, T+1, S, S, 3), random labels."""
    g = torch.Generator().manual_seed(seed)
    return [{"clip": torch.randint(0, 256, (B, T + 1, S, S, 3), generator=g, dtype=torch.uint8),
             "label": torch.randint(0, K, (B,), generator=g), "status": torch.zeros(B, dtype=torch.uint8),
             "video_index": torch.arange(B) + B * i} for i in range(n)]


@dataclass
class Trainee:
    """What the Train worker builds, in its order: model (channels_last on CUDA), optimiser, schedule, scaler."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler


def build(c: Config, device: torch.device, **scaler_kw: float) -> Trainee:
    torch.manual_seed(c.train.seed)
    model = build_model_from_config(c, K)
    if device.type == "cuda" and c.train.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model = model.to(device)
    optimizer = build_optimizer(model, c.optim, B)
    schedule = LRSchedule(optimizer, c.optim, scaled_lr(c.optim, B), STEPS, EPOCHS)
    return Trainee(model, optimizer, schedule, torch.amp.GradScaler(device.type, **scaler_kw))


def run_epoch(t: Trainee, c: Config, device: torch.device, amp_dtype: torch.dtype | None, epoch: int) -> dict[str, float]:
    return train_one_epoch(t.model, clip_batches(STEPS, seed=epoch), t.optimizer, t.schedule, t.scaler, c, device,
                           Progress("t", epoch, EPOCHS, STEPS, 0), amp_dtype)


def save(t: Trainee, c: Config, directory: Path, epoch: int, metrics: dict[str, float]) -> None:
    save_checkpoint(str(directory), model=t.model, optimizer=t.optimizer, schedule=t.schedule, scaler=t.scaler,
                    epoch=epoch, step=t.schedule.step_count, config=c.to_dict(), class_names=["a", "b", "c"],
                    metrics=metrics)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def aten_cpu_kernels() -> AbstractContextManager:
    """CPU convolutions in ATen's own kernels: oneDNN's bf16 Conv3d backward-weights kernel crashes or
    hangs on some AVX-512 CPUs (torch 2.13 on an AMD EPYC: the 7x7x7 stem at batch >= 2). Training
    never autocasts on CPU; this test does, to reach the AMP path."""
    return torch.backends.mkldnn.flags(enabled=False)


@contextmanager
def output_dtypes(model: nn.Module) -> Iterator[set[torch.dtype]]:
    """The dtypes of every Conv3d / Linear output while the block runs."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _inp, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("amp", AMP_MODES)
def test_amp_setting_picks_a_dtype_on_cuda_and_fp32_on_cpu(amp):
    assert amp_dtype_for(cfg(amp), torch.device("cpu")) is None  # "On CPU, training runs in fp32"
    if amp != "auto" or torch.cuda.is_available():  # auto asks the GPU whether it has bf16
        expected = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        if amp == "auto":
            expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert amp_dtype_for(cfg(amp), torch.device("cuda")) is expected


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch.backends.mkldnn.flags
def test_bf16_autocast_trains_on_cpu_and_its_checkpoint_has_no_scaler(tmp_path):
    """The engine's autocast path in bf16 (as on a bf16 GPU, where the worker's scaler is disabled):
    every conv and linear layer runs in bf16, losses stay finite and close to fp32, weights stay fp32."""
    c, cpu, bf16 = cfg("bf16"), torch.device("cpu"), torch.bfloat16
    t = build(c, cpu, enabled=False)
    before = params(t.model)
    probe = clip_batches(2, seed=99)
    fp32_loss = validate(t.model, probe, c, cpu, K).metrics["val/loss"]
    with aten_cpu_kernels():
        with output_dtypes(t.model) as seen:
            bf16_loss = validate(t.model, probe, c, cpu, K, bf16).metrics["val/loss"]
        assert seen == {bf16}
        assert math.isclose(bf16_loss, fp32_loss, rel_tol=0.02), (bf16_loss, fp32_loss)
        with output_dtypes(t.model) as seen:
            m = run_epoch(t, c, cpu, bf16, epoch=0)
    assert seen == {bf16} and m["train/clips"] == STEPS * B
    assert all(math.isfinite(m[k]) for k in ("train/loss", "train/loss_fp", "train/loss_ce"))
    after = params(t.model)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learnt something
    save(t, c, tmp_path / "ckpt", 1, m)
    assert load_checkpoint(str(tmp_path / "ckpt"))["scaler"] is None  # "GradScaler with fp16 only"


@dataclass
class RoundTrip:
    straight: Trainee  # 2 epochs in one go
    resumed: Trainee  # epoch 1's checkpoint restored into freshly built objects, then epoch 2
    state: dict  # the checkpoint, as loaded
    at_save: dict  # the scaler's state when it was saved
    metrics: tuple[dict[str, float], dict[str, float]]  # epoch 2 of each


def resume_round_trip(device: torch.device, amp_dtype: torch.dtype, run_dir: Path) -> RoundTrip:
    """fp16 with a scaler whose growth is steep (x16 after 2 good steps): from the default 2**16 it
    jumps far past where the scaled fp16 gradients overflow, skips steps and backs off, so its state
    at the end of epoch 1 (scale, growth tracker, factors) is nothing like a fresh scaler's, and a
    resume that lost it would skip different steps. The resumed run builds its scaler as the worker
    does (defaults) and gets the rest from the checkpoint."""
    c = cfg("fp16")
    a = build(c, device, growth_factor=16.0, growth_interval=2)
    run_epoch(a, c, device, amp_dtype, epoch=0)
    at_save = a.scaler.state_dict()
    save(a, c, run_dir / "checkpoint_epoch0001", 1, {"train/loss": 1.0})
    state = load_checkpoint(str(run_dir))  # the run directory: its latest epoch checkpoint, weights_only
    m_a = run_epoch(a, c, device, amp_dtype, epoch=1)
    b = build(c, device)
    epoch, _ = restore_training_state(state, model=b.model, optimizer=b.optimizer, schedule=b.schedule,
                                      scaler=b.scaler)
    assert epoch == 1 and b.scaler.state_dict() == state["scaler"]
    m_b = run_epoch(b, c, device, amp_dtype, epoch=1)
    return RoundTrip(a, b, state, at_save, (m_a, m_b))


def test_grad_scaler_state_is_checkpointed_and_a_resumed_run_continues_exactly(tmp_path):
    cpu = torch.device("cpu")
    rt = resume_round_trip(cpu, torch.float16, tmp_path)  # fp16 autocast on CPU: the engine's GPU path
    assert rt.state["scaler"] == rt.at_save and rt.at_save["growth_factor"] == 16.0
    assert rt.at_save != torch.amp.GradScaler("cpu", growth_factor=16.0, growth_interval=2).state_dict()  # it moved
    learning = [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in rt.metrics]
    assert learning[0] == learning[1] and rt.resumed.scaler.state_dict() == rt.straight.scaler.state_dict()
    pa, pb = params(rt.straight.model), params(rt.resumed.model)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # the same resume without the scaler's state skips other steps: the checks above can fail
    c = cfg("fp16")
    lost = build(c, cpu)
    restore_training_state({**rt.state, "scaler": None}, model=lost.model, optimizer=lost.optimizer,
                           schedule=lost.schedule, scaler=lost.scaler)
    run_epoch(lost, c, cpu, torch.float16, epoch=1)
    pl = params(lost.model)
    assert any(not torch.equal(pa[k], pl[k]) for k in pa)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_grad_scaler_and_channels_last_on_cuda_resume(tmp_path):
    """What the Train worker does on a GPU with train.amp=fp16: channels_last_3d model and clips,
    fp16 autocast, an enabled GradScaler; then a resume from the checkpoint."""
    cuda = torch.device("cuda")
    c = cfg("fp16")
    amp_dtype = amp_dtype_for(c, cuda)
    assert amp_dtype is torch.float16 and c.train.channels_last
    probe = build(c, cuda)
    layouts: list[bool] = []
    probe.model.register_forward_pre_hook(
        lambda _m, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last_3d)))
    with output_dtypes(probe.model) as seen:
        m = run_epoch(probe, c, cuda, amp_dtype, epoch=0)
    assert seen == {torch.float16} and layouts and all(layouts) and probe.scaler.is_enabled()
    assert all(math.isfinite(m[k]) for k in ("train/loss", "train/loss_fp", "train/loss_ce"))

    saved_flag = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # the same convolution algorithms in both runs
    try:
        rt = resume_round_trip(cuda, amp_dtype, tmp_path)
    finally:
        torch.backends.cudnn.deterministic = saved_flag
    assert rt.state["scaler"] == rt.at_save and rt.at_save["growth_factor"] == 16.0
    assert rt.resumed.scaler.state_dict() == rt.straight.scaler.state_dict()
    m_a, m_b = rt.metrics
    assert all(math.isfinite(m[k]) for m in (m_a, m_b) for k in ("train/loss", "train/loss_fp", "train/loss_ce"))
    assert math.isclose(m_a["train/loss"], m_b["train/loss"], rel_tol=1e-3)
    pa, pb = params(rt.straight.model), params(rt.resumed.model)
    assert all(torch.allclose(pa[k], pb[k], rtol=1e-3, atol=1e-4) for k in pa)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in rt.resumed.model.parameters()
               if p.dim() == 5)
