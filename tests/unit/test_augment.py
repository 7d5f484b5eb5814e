"""DSA (spec models_and_augmentation.md §3): Siamese semantics, per-op formulas, gradients, RNG hygiene."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from ltdistill.data.augment import (
    DSAParams,
    affine,
    brightness,
    contrast,
    cutout,
    dsa,
    flip,
    saturation,
    siamese_seed_for,
    translate,
)

GROUP_NAMES = ["color", "crop", "cutout", "flip", "scale", "rotate"]
FULL = "color_crop_cutout_flip_scale_rotate"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=gen(seed))


def roll_zero(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Reference translation: out(i, j) = x(i + th, j + tw), zero-filled (torch.roll + mask)."""
    h, w = x.shape[-2:]
    out = torch.roll(x, shifts=(-th, -tw), dims=(-2, -1)).clone()
    if th > 0:
        out[..., h - th:, :] = 0
    elif th < 0:
        out[..., :-th, :] = 0
    if tw > 0:
        out[..., :, w - tw:] = 0
    elif tw < 0:
        out[..., :, :-tw] = 0
    return out


# ---------------------------------------------------------------- Siamese semantics


@pytest.mark.parametrize("mode", ["S", "M"])
@pytest.mark.parametrize("strategy", [FULL, *GROUP_NAMES])
def test_siamese_same_seed_different_batch_sizes(strategy, mode):
    p = DSAParams(strategy=strategy, mode=mode)
    big = images(7, h=16, w=16)
    small = torch.cat([big[:1], images(2, h=16, w=16, seed=1)])
    for seed in (0, 1, 17):
        a = dsa(big, p, siamese_seed=seed)
        b = dsa(small, p, siamese_seed=seed)
        torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strategy", [FULL, *GROUP_NAMES])
def test_siamese_broadcasts_sample_zero_to_whole_batch(strategy):
    x = images(1, h=16, w=16).expand(5, -1, -1, -1).contiguous()
    out = dsa(x, DSAParams(strategy=strategy), siamese_seed=3)
    for i in range(1, 5):
        torch.testing.assert_close(out[i], out[0], rtol=1e-6, atol=1e-6)


def test_siamese_different_seeds_differ():
    x = images(2, h=16, w=16)
    ref = dsa(x, DSAParams(), siamese_seed=0)
    others = [dsa(x, DSAParams(), siamese_seed=s) for s in range(1, 8)]
    assert any(not torch.allclose(o, ref) for o in others)
    # the seed also picks the op group: across seeds, several distinct groups are chosen
    flip_only = [dsa(x, DSAParams(strategy="flip"), siamese_seed=s) for s in range(16)]
    assert any(torch.equal(o, x.flip(3)) for o in flip_only)
    assert any(torch.equal(o, x) for o in flip_only)


def test_siamese_ignores_generator_and_global_rng():
    x = images(3, h=16, w=16)
    a = dsa(x, DSAParams(), generator=gen(1), siamese_seed=5)
    torch.rand(10)
    b = dsa(x, DSAParams(), generator=gen(2), siamese_seed=5)
    assert torch.equal(a, b)


def test_siamese_seed_for():
    s = siamese_seed_for(0, 10, 3)
    assert s == siamese_seed_for(0, 10, 3)
    assert isinstance(s, int) and 0 <= s < 2**63
    assert len({s, siamese_seed_for(1, 10, 3), siamese_seed_for(0, 11, 3),
                siamese_seed_for(0, 10, 4)}) == 4


# ---------------------------------------------------------------- per-sample (seed None)


def test_per_sample_flip_varies_across_batch():
    x = images(1, h=4, w=5).expand(32, -1, -1, -1).contiguous()
    out = dsa(x, DSAParams(strategy="flip"), generator=gen(0))
    flipped = torch.tensor([torch.equal(o, x[0].flip(2)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert (flipped | same).all()
    assert flipped.any() and same.any()


def test_per_sample_crop_varies_and_stays_in_range():
    x = images(1, c=2, h=16, w=16).expand(32, -1, -1, -1).contiguous()
    out = dsa(x, DSAParams(strategy="crop"), generator=gen(0))
    s = int(16 * 0.125 + 0.5)  # 2
    candidates = {(th, tw): roll_zero(x[0], th, tw)
                  for th in range(-s, s + 1) for tw in range(-s, s + 1)}
    found = []
    for o in out:
        match = [k for k, v in candidates.items() if torch.equal(o, v)]
        assert match, "output is not a translation within the crop range"
        found.append(match[0])
    assert len(set(found)) > 3


def test_mode_s_applies_a_single_group_per_call():
    # flip_cutout on a positive, asymmetric image: a flip call gives only {x, flip(x)}; a cutout
    # call gives only x with zeroed pixels; a mix of both in one call would show up as neither
    base = torch.rand(1, 1, 6, 6, generator=gen(4)) + 1.0
    x = base.expand(16, -1, -1, -1).contiguous()
    kinds = set()
    g = gen(0)
    for _ in range(12):
        out = dsa(x, DSAParams(strategy="flip_cutout"), generator=g)
        is_flip = all(torch.equal(o, base[0]) or torch.equal(o, base[0].flip(2)) for o in out)
        is_cut = all(bool(((o == base[0]) | (o == 0)).all()) for o in out)
        any_flipped = any(torch.equal(o, base[0].flip(2)) for o in out)
        any_cut = bool((out == 0).any())
        assert is_flip != is_cut or not (any_flipped or any_cut)
        assert not (any_flipped and any_cut)
        kinds.add("flip" if any_flipped else "cutout" if any_cut else "identity")
    assert {"flip", "cutout"} <= kinds


def test_same_generator_seed_is_deterministic():
    x = images(4, h=16, w=16)
    for strategy in [FULL, *GROUP_NAMES]:
        p = DSAParams(strategy=strategy, mode="M")
        assert torch.equal(dsa(x, p, generator=gen(7)), dsa(x, p, generator=gen(7)))
    g = gen(7)
    a, b = dsa(x, DSAParams(mode="M"), generator=g), dsa(x, DSAParams(mode="M"), generator=g)
    assert not torch.equal(a, b)  # the generator advances between calls


def test_global_rng_untouched():
    torch.manual_seed(42)
    state = torch.get_rng_state()
    x = images(3, h=16, w=16)
    for mode in ("S", "M"):
        dsa(x, DSAParams(mode=mode), generator=gen(0))
        dsa(x, DSAParams(mode=mode), siamese_seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_none_strategy_and_errors():
    x = images(2)
    assert dsa(x, DSAParams(strategy="")) is x
    assert dsa(x, DSAParams(strategy="none")) is x
    assert dsa(x, DSAParams(strategy="None")) is x
    with pytest.raises(ValueError):
        dsa(x, DSAParams(strategy="color_blur"), generator=gen(0))
    with pytest.raises(ValueError):
        dsa(x, DSAParams(mode="X"), generator=gen(0))


# ---------------------------------------------------------------- ops against hand computation


def test_flip_hand():
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])  # 1 x 1 x 2 x 3
    assert torch.equal(flip(x, torch.tensor([True])), torch.tensor([[[[3.0, 2, 1], [6, 5, 4]]]]))
    assert torch.equal(flip(x, torch.tensor([False])), x)


def test_translate_hand_and_roll():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    out = translate(x, torch.tensor([1]), torch.tensor([0]))
    assert torch.equal(out, torch.tensor([[[[4.0, 5, 6], [7, 8, 9], [0, 0, 0]]]]))
    out = translate(x, torch.tensor([0]), torch.tensor([-1]))
    assert torch.equal(out, torch.tensor([[[[0.0, 1, 2], [0, 4, 5], [0, 7, 8]]]]))
    y = images(4, c=2, h=5, w=6)
    shifts = [(1, -2), (-3, 2), (0, 0), (4, -6)]  # the last one shifts everything out
    th = torch.tensor([s[0] for s in shifts])
    tw = torch.tensor([s[1] for s in shifts])
    out = translate(y, th, tw)
    for i, (a, b) in enumerate(shifts):
        assert torch.equal(out[i], roll_zero(y[i], a, b))
    assert (out[3] == 0).all()


def test_cutout_hand():
    x = torch.ones(1, 2, 6, 6)
    k = int(6 * 0.5 + 0.5)  # 3
    out = cutout(x, torch.tensor([2]), torch.tensor([3]), k, k)
    expected = torch.ones(1, 2, 6, 6)
    expected[:, :, 1:4, 2:5] = 0  # rows [2-1, 2-1+3), cols [3-1, 3-1+3)
    assert torch.equal(out, expected)
    assert int((out[0, 0] == 0).sum()) == k * k
    # even side, fully inside: exactly k*k zeros at rows [c-k//2, c-k//2+k)
    out = cutout(torch.ones(1, 1, 8, 8), torch.tensor([4]), torch.tensor([5]), 4, 4)
    assert int((out == 0).sum()) == 16 and (out[0, 0, 2:6, 3:7] == 0).all()
    # clipped at the corner: rows/cols [-1, 2) -> 2 x 2 zeros
    out = cutout(torch.ones(1, 1, 6, 6), torch.tensor([0]), torch.tensor([0]), 3, 3)
    assert int((out == 0).sum()) == 4 and (out[0, 0, :2, :2] == 0).all()


def test_dsa_cutout_size_and_range():
    x = torch.ones(64, 1, 8, 8)
    out = dsa(x, DSAParams(strategy="cutout"), generator=gen(0))
    k = 4
    zeros = (out[:, 0] == 0)
    for z in zeros:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= k and 1 <= len(cols) <= k
        assert int(z.sum()) == len(rows) * len(cols)  # a (clipped) rectangle
    assert any(int(z.sum()) == k * k for z in zeros)
    assert any(int(z.sum()) < k * k for z in zeros)


def test_brightness_saturation_contrast_hand():
    x = torch.randn(2, 3, 2, 2, generator=gen(1))
    out = brightness(x, torch.tensor([0.75, 0.25]), 1.0)
    torch.testing.assert_close(out - x, torch.tensor([0.25, -0.25]).view(2, 1, 1, 1).expand_as(x))
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    out = saturation(x, torch.tensor([0.25]), 2.0)  # factor 0.5 about the channel mean 2
    torch.testing.assert_close(out.flatten(), torch.tensor([1.5, 2.5]))
    x = torch.tensor([0.0, 4.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(contrast(x, torch.tensor([0.0]), 0.5).flatten(),
                               torch.tensor([1.0, 3.0]))  # factor 0.5 about the mean 2
    torch.testing.assert_close(contrast(x, torch.tensor([0.5]), 0.5), x)  # factor 1


def test_dsa_color_is_brightness_saturation_contrast_in_sequence():
    x = images(5, h=4, w=4)
    out = dsa(x, DSAParams(strategy="color", mode="M"), generator=gen(3))
    g = gen(3)  # mode M draws no group index; one uniform per sample per op
    u1, u2, u3 = (torch.rand(5, generator=g).view(5, 1, 1, 1) for _ in range(3))
    y = x + (u1 - 0.5) * 1.0
    m = y.mean(1, keepdim=True)
    y = (y - m) * (u2 * 2.0) + m
    m = y.mean((1, 2, 3), keepdim=True)
    y = (y - m) * (u3 + 0.5) + m
    torch.testing.assert_close(out, y)


def test_affine_hand():
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])  # 1 x 1 x 2 x 3
    eye = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])
    torch.testing.assert_close(affine(x, eye, True), x)
    # s_x = 2 with align_corners: columns at -1, 0, 1 sample the input at -2, 0, 2 (zero outside)
    out = affine(x, torch.tensor([[[2.0, 0, 0], [0, 1, 0]]]), True)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]]]))
    # 90 degree rotation with the spec's matrix [[cos, -sin], [sin, cos]] = rot90 (k=1)
    y = images(1, c=1, h=4, w=4)
    rot = torch.tensor([[[0.0, -1, 0], [1, 0, 0]]])
    torch.testing.assert_close(affine(y, rot, True), torch.rot90(y, 1, dims=(2, 3)),
                               atol=1e-5, rtol=1e-5)


def _sample(x, theta, align):
    grid = F.affine_grid(theta, list(x.shape), align_corners=align)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align)


@pytest.mark.parametrize("align", [True, False])
def test_dsa_scale_and_rotate_parameters(align):
    x = images(4, h=8, w=8)
    out = dsa(x, DSAParams(strategy="scale", mode="M", align_corners=align), generator=gen(2))
    g = gen(2)
    lo = 1 / 1.2
    sx = torch.rand(4, generator=g) * (1.2 - lo) + lo
    sy = torch.rand(4, generator=g) * (1.2 - lo) + lo
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    torch.testing.assert_close(out, _sample(x, theta, align))

    out = dsa(x, DSAParams(strategy="rotate", mode="M", align_corners=align), generator=gen(2))
    ang = (torch.rand(4, generator=gen(2)) - 0.5) * 2 * 15.0 / 180 * math.pi
    assert ang.abs().max() <= math.radians(15)
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = ang.cos(), -ang.sin()
    theta[:, 1, 0], theta[:, 1, 1] = ang.sin(), ang.cos()
    torch.testing.assert_close(out, _sample(x, theta, align))


def test_align_corners_is_configurable():
    x = images(2, h=8, w=8)
    a = dsa(x, DSAParams(strategy="scale", align_corners=True), generator=gen(0))
    b = dsa(x, DSAParams(strategy="scale", align_corners=False), generator=gen(0))
    assert not torch.allclose(a, b)


def test_mode_m_applies_groups_in_order():
    x = images(1, h=16, w=16)
    out = dsa(x, DSAParams(strategy="flip_crop", mode="M"), siamese_seed=11)
    g = gen(11)
    flipped = bool(torch.rand(1, generator=g) < 0.5)
    th = int(torch.randint(-2, 3, (1,), generator=g))
    tw = int(torch.randint(-2, 3, (1,), generator=g))
    y = x.flip(3) if flipped else x
    assert torch.equal(out, roll_zero(y, th, tw))


# ---------------------------------------------------------------- differentiability, devices


@pytest.mark.parametrize("mode", ["S", "M"])
@pytest.mark.parametrize("strategy", [FULL, *GROUP_NAMES])
def test_gradients_flow(strategy, mode):
    x = images(3, h=8, w=8).requires_grad_(True)
    w = images(3, h=8, w=8, seed=9)
    (dsa(x, DSAParams(strategy=strategy, mode=mode), generator=gen(0)) * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_float64_input_keeps_dtype():
    x = images(2, h=8, w=8).double()
    assert dsa(x, DSAParams(mode="M"), generator=gen(0)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = images(3, h=16, w=16)
    for seed in range(4):
        cpu = dsa(x, DSAParams(mode="M"), generator=gen(seed))
        gpu = dsa(x.cuda(), DSAParams(mode="M"), generator=gen(seed)).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-5)
