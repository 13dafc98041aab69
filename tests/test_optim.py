"""Optimiser and schedule of paper §4.3: linear lr scaling, warm-up, cosine, plateau ÷10, state."""

import math

import torch

from dynamonet.config import OptimConfig
from dynamonet.train.optim import LRSchedule, build_optimizer, scaled_lr


def _opt(cfg, batch=64):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    return build_optimizer(model, cfg, batch)


def test_sgd_nesterov_and_linear_scaling():
    cfg = OptimConfig()
    opt = _opt(cfg, batch=32)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert math.isclose(scaled_lr(cfg, 32), 0.05) and math.isclose(opt.param_groups[0]["lr"], 0.05)
    # no weight decay on BN weights and biases
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[1]["weight_decay"] == 0.0
    assert len(opt.param_groups[0]["params"]) == 1 and len(opt.param_groups[1]["params"]) == 3


def test_plateau_divides_by_ten_after_patience():
    cfg = OptimConfig(schedule="plateau", plateau_patience=1)
    opt = _opt(cfg)
    s = LRSchedule(opt, cfg, 0.1, steps_per_epoch=10, epochs=5)
    assert not s.epoch_end(1.0)
    assert not s.epoch_end(1.0)  # 1 bad epoch: within patience
    assert s.epoch_end(1.0)  # 2nd bad epoch: divide
    assert math.isclose(opt.param_groups[0]["lr"], 0.01)


def test_warmup_then_cosine_to_zero_and_state_round_trip():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=1)
    opt = _opt(cfg)
    s = LRSchedule(opt, cfg, 0.1, steps_per_epoch=10, epochs=3)
    lrs = []
    for _ in range(30):
        lrs.append(s.lr())
        s.step()
    assert lrs[0] < lrs[5] < lrs[9] and math.isclose(lrs[9], 0.1)
    assert lrs[10] > lrs[20] > lrs[29] and lrs[29] < 0.002
    s2 = LRSchedule(_opt(cfg), cfg, 0.1, steps_per_epoch=10, epochs=3)
    s2.load_state_dict(s.state_dict())
    assert s2.lr() == s.lr()
