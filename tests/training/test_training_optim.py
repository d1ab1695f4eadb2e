import copy
import itertools
import math

import pytest
import torch
from torch import nn

from panglot.nn import precision as precision_module
from panglot.training import OptimConfig, TrainConfig, clip_gradients, freeze, lr_at, param_groups


@pytest.fixture
def native_bf16(monkeypatch):
    """A machine that multiplies bf16 natively, where our Newton-Schulz runs in bf16 as torch's Muon always does."""
    monkeypatch.setattr(precision_module, "fast_bf16", lambda device="cpu": True)


def test_warmup_is_linear_up_to_the_peak():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(s, cfg, max_steps=20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, max_steps=20) == 1.0  # the cosine starts at the peak


def test_cosine_ends_at_min_lr_and_is_halfway_in_the_middle():
    cfg = OptimConfig(lr=2.0, warmup_steps=2, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, max_steps=12) for s in range(12)]
    assert lrs[-1] == pytest.approx(0.2)
    assert lr_at(2 + 9 / 2, cfg, max_steps=12) == pytest.approx((2.0 + 0.2) / 2)
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert lr_at(50, cfg, max_steps=12) == pytest.approx(0.2)  # past the end: stays at the floor


def test_no_warmup_starts_at_the_peak():
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, cfg, max_steps=10) == 1e-3
    assert lr_at(9, cfg, max_steps=10) == pytest.approx(0.0, abs=1e-18)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def test_a_resized_schedule_keeps_the_old_one_before_and_has_no_jump_after():
    """max_steps 100 -> 160 at update 30: the same rates before 30, a smooth continuation after, the floor at 159."""
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    old = [lr_at(s, cfg, max_steps=100) for s in range(30)]
    assert [lr_at(s, cfg, 160, resized=[(30, 100)]) for s in range(30)] == old
    new = [lr_at(s, cfg, 160, resized=[(30, 100)]) for s in range(29, 160)]
    assert abs(new[1] - new[0]) < 0.02 and all(b <= a for a, b in itertools.pairwise(new))  # continuous, still falling
    assert new[-1] == pytest.approx(0.1) and lr_at(30, cfg, 160, resized=[(30, 100)]) == pytest.approx(lr_at(30, cfg, 100))
    squeezed = [lr_at(s, cfg, 60, resized=[(30, 100)]) for s in range(30, 60)]
    assert squeezed[-1] == pytest.approx(0.1) and all(b <= a for a, b in itertools.pairwise(squeezed))


def test_a_schedule_resized_twice_follows_the_first_resize_until_the_second_and_ends_on_the_floor():
    """100 -> 160 steps at update 30, then -> 120 at update 80: the once-resized rates until 80, no jump there, still
    falling, the floor at 119; a resize that changes nothing (-> 160 at 80) changes no rate."""
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    chain = [(30, 100), (80, 160)]
    once = [lr_at(s, cfg, 160, resized=[(30, 100)]) for s in range(160)]
    assert [lr_at(s, cfg, 120, resized=chain) for s in range(80)] == once[:80]
    twice = [lr_at(s, cfg, 120, resized=chain) for s in range(79, 120)]
    assert abs(twice[1] - twice[0]) < 0.03 and all(b <= a for a, b in itertools.pairwise(twice))
    assert twice[-1] == pytest.approx(0.1) and twice[1] == pytest.approx(once[80])
    assert [lr_at(s, cfg, 160, resized=chain) for s in range(160)] == pytest.approx(once)
    assert lr_at(150, cfg, 120, resized=chain) == pytest.approx(0.1)  # past the last update: the floor


def test_no_weight_decay_on_biases_norms_and_embeddings():
    groups = param_groups(_Net(), weight_decay=0.1)
    by_decay = {g["weight_decay"]: set(g["param_names"]) for g in groups}
    assert by_decay[0.1] == {"proj.weight", "encoder.0.weight", "encoder.1.weight"}
    assert by_decay[0.0] == {
        "embed.weight", "norm.weight", "norm.bias", "proj.bias", "encoder.0.bias", "encoder.1.bias",
    }  # fmt: skip


def test_clip_gradients_returns_the_norm_before_clipping():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_gradients([a, b], max_norm=1.0).item() == pytest.approx(5.0)
    assert math.hypot(*a.grad, *b.grad) == pytest.approx(1.0)
    assert clip_gradients([a, b], max_norm=None).item() == pytest.approx(1.0)  # unclipped: unchanged
    assert a.grad.tolist() == pytest.approx([0.6, 0.0])


def test_freeze_by_module_and_parameter_patterns():
    net = _Net()
    report = freeze(net, ["encoder", "*.bias"])
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.weight",
        "encoder.1.bias",
        "norm.bias",
        "proj.bias",
    }
    assert report.frozen_tensors == 6 and report.trainable_tensors == 3
    assert report.frozen_params == 2 * 20 + 4 + 4 and report.trainable_params == 20 + 4 + 16
    names = {n for g in param_groups(net, 0.1) for n in g["param_names"]}
    assert names == {"embed.weight", "norm.weight", "proj.weight"}


def test_freeze_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"\['decoder\.\*'\] match no parameter; parameter names are: embed"):
        freeze(_Net(), ["encoder", "decoder.*"])


def test_config_validation_reports_every_problem():
    with pytest.raises(ValueError, match=r"max_steps must be >= 1, got 0; grad_accum must be >= 1, got 0"):
        TrainConfig(max_steps=0, grad_accum=0)
    with pytest.raises(ValueError, match="precision must be 'auto', 'bf16' or 'fp32', got 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="lr must be > 0"):
        OptimConfig(lr=0.0)


def test_train_config_loads_through_the_strict_config_loader():
    from panglot.config import ConfigError, from_dict

    cfg = from_dict(TrainConfig, {"optim": {"lr": "3e-4", "betas": [0.9, 0.99]}, "freeze": ["codec"]})
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.99) and cfg.freeze == ["codec"]
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.learning_rate'"):
        from_dict(TrainConfig, {"optim": {"learning_rate": 1.0}})


def test_optimizer_is_fused_on_cpu_and_steps_like_the_per_tensor_loop():
    from panglot.training.optim import build_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    reference = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    reference.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(model, cfg)
    assert all(group["fused"] for group in fused.param_groups)
    loop = torch.optim.AdamW(param_groups(reference, 0.1), lr=1e-2, betas=cfg.betas, eps=cfg.eps, foreach=False)
    start = model[0].weight.detach().clone()
    x = torch.randn(4, 6)
    for _ in range(5):
        for net, opt in ((model, fused), (reference, loop)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert (model[0].weight - start).abs().max() > 1e-2  # the weights moved


def test_muon_takes_the_hidden_linear_weights_and_leaves_the_rest_to_adamw():
    from panglot.backbone.sizes import transformer_config
    from panglot.backbone.transformer import Transformer
    from panglot.training.optim import build_optimizer

    model = Transformer(transformer_config("debug", 50, tie_embeddings=False))
    optimizer = build_optimizer(model, OptimConfig(algorithm="muon", weight_decay=0.1))
    by_algorithm = {}
    for group in optimizer.param_groups:
        by_algorithm.setdefault(group["algorithm"], set()).update(group["param_names"])
    per_layer = {"attention.wq", "attention.wk", "attention.wv", "attention.wo"} | {
        f"feed_forward.w{i}" for i in (1, 2, 3)
    }
    assert by_algorithm["muon"] == {f"layers.{i}.{name}.weight" for i in range(2) for name in per_layer}
    assert {"tok_embeddings.weight", "output.weight", "norm.weight"} <= by_algorithm["adamw"]
    assert by_algorithm["adamw"].isdisjoint(by_algorithm["muon"])
    assert {n for g in optimizer.param_groups for n in g["param_names"]} == {n for n, _ in model.named_parameters()}
    muon_group = next(g for g in optimizer.param_groups if g["algorithm"] == "muon")
    assert muon_group["weight_decay"] == 0.1 and muon_group["adjust_lr_fn"] == "match_rms_adamw"


def test_muon_lr_scale_follows_the_schedule():
    from panglot.training.optim import build_optimizer, set_lr

    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 8), nn.Linear(8, 4))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, algorithm="muon", muon_lr_scale=3.0, muon_exclude=["2"]))

    def rates():
        return {g["algorithm"]: g["lr"] for g in optimizer.param_groups}

    assert rates() == pytest.approx({"adamw": 1e-3, "muon": 3e-3})
    set_lr(optimizer, 2e-4)
    assert rates() == pytest.approx({"adamw": 2e-4, "muon": 6e-4})


def test_muon_with_adamw_steps_like_the_two_optimizers_apart(native_bf16):
    from panglot.training.optim import build_optimizer, set_lr

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    reference = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    reference.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, algorithm="muon", muon_exclude=["3"])
    combined = build_optimizer(model, cfg)
    muon_params = [reference[1].weight]
    decayed = [reference[3].weight]  # the excluded linear layer: AdamW, decayed
    rest = [p for p in reference.parameters() if all(p is not q for q in muon_params + decayed)]
    muon = torch.optim.Muon(muon_params, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    groups = [{"params": decayed, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=1e-2, betas=cfg.betas, eps=cfg.eps)
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    start = model[1].weight.detach().clone()
    for step in range(4):
        set_lr(combined, 1e-2 / (step + 1))  # the schedule reaches both halves
        for opt in (muon, adamw):
            set_lr(opt, 1e-2 / (step + 1))
        for net, opts in ((model, [combined]), (reference, [muon, adamw])):
            for opt in opts:
                opt.zero_grad()
            net(tokens).square().mean().backward()
            for opt in opts:
                opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert (model[1].weight - start).abs().max() > 1e-3


def test_muon_state_survives_a_state_dict_round_trip():
    from panglot.training.optim import build_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    cfg = OptimConfig(lr=1e-2, algorithm="muon", muon_exclude=[])
    x = torch.randn(5, 6)

    def step(net, opt):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    first = build_optimizer(model, cfg)
    for _ in range(3):
        step(model, first)
    twin = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    twin.load_state_dict(model.state_dict())
    second = build_optimizer(twin, cfg)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # a copy: loading keeps the very tensors
    assert "momentum_buffer" in second.state[twin[0].weight]
    for _ in range(2):
        step(model, first)
        step(twin, second)  # the inner optimizers act on the loaded groups and state, not the ones built first
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_muon_needs_a_linear_weight_to_update():
    from panglot.training.optim import build_optimizer

    with pytest.raises(ValueError, match="Muon was asked for, but no trainable parameter is a linear layer's weight"):
        build_optimizer(nn.Sequential(nn.Embedding(4, 3), nn.LayerNorm(3)), OptimConfig(algorithm="muon"))
    with pytest.raises(ValueError, match="algorithm must be 'adamw' or 'muon', got 'sgd'"):
        OptimConfig(algorithm="sgd")


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", None])
def test_batched_muon_steps_like_torchs_muon(adjust_lr_fn, native_bf16):
    from panglot.training.optim import BatchedMuon

    torch.manual_seed(0)
    shapes = [(8, 8), (8, 8), (12, 8), (12, 8), (8, 12), (5, 8)]  # shared shapes, tall and wide, one alone
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = dict(lr=2e-2, weight_decay=0.1, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    batched, reference = BatchedMuon(ours, **kwargs), torch.optim.Muon(theirs, **kwargs)
    start = [p.detach().clone() for p in ours]
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in ((ours, batched), (theirs, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, first in zip(ours, theirs, start, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)  # bf16 iterations: rounding, not a different update
        assert (a - first).abs().max() > 1e-2  # every matrix moved


def test_newton_schulz_runs_in_fp32_where_bf16_is_emulated(monkeypatch):
    from panglot.training.optim import orthogonalize

    torch.manual_seed(0)
    updates = torch.randn(3, 12, 8)
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7)
    monkeypatch.setattr(precision_module, "fast_bf16", lambda device="cpu": True)
    in_bf16 = orthogonalize(updates, *args)
    monkeypatch.setattr(precision_module, "fast_bf16", lambda device="cpu": False)
    in_fp32 = orthogonalize(updates, *args)
    assert in_bf16.dtype is torch.bfloat16 and in_fp32.dtype is torch.float32
    torch.testing.assert_close(in_fp32, in_bf16.float(), atol=3e-2, rtol=3e-2)  # the same iteration, rounded apart
    assert not torch.equal(in_fp32, in_bf16.float())
    singular = torch.linalg.svdvals(in_fp32)  # pushed towards 1 (the quintic's band, roughly 0.7 to 1.2)
    assert singular.min() > 0.5 and singular.max() < 1.3


def test_an_adamw_checkpoint_does_not_load_into_a_muon_optimizer(tmp_path):
    from panglot.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from panglot.training.optim import build_optimizer

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    adamw = build_optimizer(model, OptimConfig())
    model(torch.randn(2, 4)).sum().backward()
    adamw.step()
    ckpt = save_checkpoint(tmp_path, 1, model, adamw, {})
    muon = build_optimizer(model, OptimConfig(algorithm="muon", muon_exclude=[]))
    with pytest.raises(CheckpointError, match=r"groups do not match \(different model, freeze patterns or optim"):
        load_checkpoint(ckpt, model, muon)
