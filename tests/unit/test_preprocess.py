"""Preprocessing: kornia-equivalent ZCA (spec long_tail_data.md §9) and apply/to_unit round trips."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from ltdistill.data.preprocess import Preprocessing, fit_zca, make_preprocessing


def small_set(n: int = 200, seed: int = 0) -> torch.Tensor:
    """n uint8 images of 1 x 6 x 6 with correlated pixels (a smooth ramp plus noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 1, generator=g) * 120
    ramp = torch.linspace(0, 60, 36).view(1, 1, 6, 6)
    noise = torch.rand(n, 1, 6, 6, generator=g) * 75
    return (base + ramp * torch.rand(n, 1, 1, 1, generator=g) + noise).round().to(torch.uint8)


def numpy_zca(images: torch.Tensor, eps: float):
    """Independent float64 reference (kornia ZCAWhitening): unbiased covariance, SVD."""
    x = images.numpy().astype(np.float64).reshape(images.shape[0], -1)
    if images.dtype == torch.uint8:
        x = x / 255.0
    mu = x.mean(axis=0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    u, s, _ = np.linalg.svd(cov)
    w = u @ np.diag(1.0 / np.sqrt(s + eps)) @ u.T
    winv = u @ np.diag(np.sqrt(s + eps)) @ u.T
    return mu, w, winv, u, s


@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_fit_zca_matches_numpy_svd(eps):
    imgs = small_set()
    mu, w, winv = fit_zca(imgs, eps=eps)
    rmu, rw, rwinv, _, _ = numpy_zca(imgs, eps)
    assert mu.dtype == w.dtype == winv.dtype == torch.float32
    assert w.shape == (36, 36)
    np.testing.assert_allclose(mu.numpy(), rmu, atol=1e-4)
    np.testing.assert_allclose(w.numpy(), rw, atol=1e-4)
    np.testing.assert_allclose(winv.numpy(), rwinv, atol=1e-4)


def test_fit_zca_float_input_in_unit_range():
    imgs = small_set()
    a = fit_zca(imgs)
    b = fit_zca(imgs.float() / 255.0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_whitened_covariance():
    imgs = small_set()
    eps = 0.1
    p = make_preprocessing("zca", (0.5,), (0.25,), train_images=imgs, eps=eps)
    y = p.apply(imgs).reshape(imgs.shape[0], -1).double().numpy()
    assert abs(y.mean(axis=0)).max() < 1e-5
    cov = np.cov(y, rowvar=False)  # unbiased, as in the fit
    _, _, _, u, s = numpy_zca(imgs, eps)
    expected = u @ np.diag(s / (s + eps)) @ u.T
    np.testing.assert_allclose(cov, expected, atol=1e-4)


def test_eps_default_is_0_1():
    assert inspect.signature(fit_zca).parameters["eps"].default == 0.1
    assert inspect.signature(make_preprocessing).parameters["eps"].default == 0.1
    assert Preprocessing("normalise", (0.0,), (1.0,)).eps == 0.1


@pytest.mark.parametrize("kind", ["normalise", "zca"])
def test_apply_to_unit_round_trip(kind):
    imgs = small_set()
    p = make_preprocessing(kind, (0.4,), (0.2,), train_images=imgs if kind == "zca" else None)
    y = p.apply(imgs)
    assert y.dtype == torch.float32 and y.shape == imgs.shape
    torch.testing.assert_close(p.to_unit(y), imgs.float() / 255.0, atol=1e-4, rtol=0)


def test_normalise_formula():
    imgs = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1, 1)
    p = make_preprocessing("normalise", (0.5,), (0.25,))
    torch.testing.assert_close(p.apply(imgs).flatten(), torch.tensor([-2.0, 2.0, -1.2]))


def test_zca_needs_training_images():
    with pytest.raises(ValueError):
        make_preprocessing("zca", (0.5,), (0.25,))
    with pytest.raises(ValueError):
        Preprocessing("zca", (0.5,), (0.25,))
