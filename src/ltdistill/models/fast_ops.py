"""Two layers of the distillation ConvNets that are fast on CPU where methods differentiate a
training step (DC/DSA gradient matching, MTT/DATM/DAMED unrolled students): 2x2 average pooling,
cheaply differentiable to any order, and instance norm with a closed-form double backward.

**2x2 average pooling.**

ConvNet-D pools after every block. On CPU PyTorch's `avg_pool2d` measured 3.7 ms per call on a
32x32x32x32 tensor (1 core) where two strided adds take 0.6 ms, and its backward zero-fills and
scatters; in the width-32 evaluation training that dominates the default grid the pool and its
backward took ~24% of a step. Gradient matching (DC, DSA) and trajectory matching (MTT, DATM,
DAMED) also differentiate the backward itself. Here the forward is two strided adds, the backward
an expand of v / 4 (the adjoint), and the backward of that the forward again: a linear map and its
adjoint, to any order. Values equal the stock op's up to float summation order (1 ulp);
tests/unit/test_fast_ops.py compares values, gradients and second derivatives and runs
gradcheck/gradgradcheck in float64. Channels-last tensors keep the stock op.

**Instance norm** (GroupNorm(C, C), affine). With a kept graph PyTorch computes GroupNorm's
first-order backward as a composite of element-wise ops (so that it can be differentiated again),
and the second backward then runs through every one of them: at the MTT reference setting (100 x
128 x 28 x 28) 19.6 ms for the gradient and 49 ms for its backward, against 3.6 ms for the
forward (2 cores, allocator tuned). Here the first-order backward is always the fused native
kernel (6.8 ms), and its backward is the closed form derived in `_InstanceNormBackward.backward`:
five per-instance reductions and three fused multiply-adds per output (39 ms); 50 instead of 72 ms
in all. Values equal the stock layer's up to float summation order; tests/unit/test_fast_ops.py
compares values, gradients and second derivatives and runs gradcheck/gradgradcheck in float64.
Tensors inside torch.func transforms (vmap, grad), channels-last and non-CPU tensors keep the
stock op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.autograd.function import once_differentiable


def _pool2x2(x: torch.Tensor) -> torch.Tensor:
    """The mean of each 2x2 block (odd trailing rows/columns dropped) as two strided adds: rows
    first, then columns. On 1 core 6x faster than `F.avg_pool2d` at 32x32x32x32 (0.6 vs 3.7 ms;
    the sum is ((a + c) + (b + d)) / 4 instead of a running sum: the same up to 1 ulp)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = x[..., 0:h:2, :w] + x[..., 1:h:2, :w]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


def _upsample2x2(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The adjoint of the 2x2 mean: each value / 4 copied into its 2x2 block (columns, then rows:
    two expand copies, 2.7x faster than one 6-d expand), zero-padded to (h, w) when the pooled
    input had an odd size."""
    n, c, ph, pw = v.shape
    cols = (v * 0.25).unsqueeze(-1).expand(n, c, ph, pw, 2).reshape(n, c, ph, 2 * pw)
    out = cols.unsqueeze(3).expand(n, c, ph, 2, 2 * pw).reshape(n, c, 2 * ph, 2 * pw)
    if (2 * ph, 2 * pw) != (h, w):
        out = F.pad(out, (0, w - 2 * pw, 0, h - 2 * ph))
    return out


class _AvgPool(torch.autograd.Function):
    """P = the 2x2 mean; its backward P^T = `_upsample2x2` and the backward of that is P again: a
    linear map and its adjoint, to any order."""

    generate_vmap_rule = True  # torch.func.vmap (the multi-seed trainer) batches it

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _pool2x2(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.hw = tuple(inputs[0].shape[-2:])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return _AvgPoolAdjoint.apply(dy, *ctx.hw)


class _AvgPoolAdjoint(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _upsample2x2(v, h, w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, u: torch.Tensor):
        return _AvgPool.apply(u), None, None


class AvgPool2x2(nn.AvgPool2d):
    """nn.AvgPool2d(2, 2) (same state, repr and isinstance) computed by `_pool2x2`, whose backward
    is `_upsample2x2` (v / 4 into each block, without the stock backward's zero fill and
    scatter) and differentiable again (DC/DSA and MTT differentiate through it)."""

    def __init__(self) -> None:
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous():  # channels_last models (BatchNorm ConvNets): the stock kernels
            return F.avg_pool2d(x, 2, 2)
        return _AvgPool.apply(x)


class _InstanceNorm(torch.autograd.Function):
    """y = GroupNorm(C, C)(x; w, b) by the native kernel; its backward is `_InstanceNormBackward`
    (the native backward kernel, differentiable once more in closed form)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        y, mean, rstd = torch.native_group_norm(x, w, b, n, c, x[0, 0].numel(), c, eps)
        ctx.save_for_backward(x, mean, rstd, w)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, mean, rstd, w = ctx.saved_tensors
        gx, gw, gb = _InstanceNormBackward.apply(gy, x, mean, rstd, w, ctx.needs_input_grad[:3])
        return gx, gw, gb, None


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1, keepdim=True)


def _combine(base: torch.Tensor, c_base: torch.Tensor, terms, c0: torch.Tensor) -> torch.Tensor:
    """base * c_base + sum(t * c for t, c in terms) + c0, with [rows, 1] coefficients: a scaled
    product then in-place multiply-adds (`torch.addcmul` with a broadcast first operand takes a
    2x slower kernel here)."""
    out = base * c_base
    for t, c in terms:
        out.addcmul_(t, c)
    return out.add_(c0)


def _norm_double_backward(gy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                          rstd: torch.Tensor, w: torch.Tensor, u: torch.Tensor | None,
                          uw: torch.Tensor | None, ub: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of `_InstanceNormBackward` (see its docstring): given the gradients u, uw, ub
    arriving at (gx, gw, gb), the gradients w.r.t. (gy, x, w).

    x^ = (x - mean) r is never materialised: every output is a per-row linear combination of x,
    gy and u (x^'s terms fold into the coefficients of x and of the constant), and the dot
    products with x^ come from those with x: sum(v x^) = r (sum(v x) - mean sum(v)). Per value
    that is three products, two sums and two combinations: 42 ms at 100 x 128 x 32 x 32 on 2
    cores instead of 46 for the textbook form."""
    n, c = x.shape[:2]
    rows, m = n * c, x[0, 0].numel()

    def per_row(v: torch.Tensor | None) -> torch.Tensor | float:  # [C] -> [N*C, 1]
        return 0.0 if v is None else v.repeat(n).view(rows, 1)

    r = rstd.reshape(rows, 1)
    mu = mean.reshape(rows, 1)
    x2 = x.reshape(rows, m)
    gy2 = gy.contiguous().view(rows, m)
    wr, uwr, ubr = per_row(w), per_row(uw), per_row(ub)
    s_gy = gy2.sum(1, keepdim=True)
    s_gyx = r * (_rowdot(gy2, x2) - mu * s_gy)  # sum gy x^
    if u is not None:
        u2 = u.contiguous().view(rows, m)
        s_u = u2.sum(1, keepdim=True)
        mu_u = s_u / m
        mu_ux = r * (_rowdot(u2, x2) - mu * s_u) / m  # <u x^>
        s_gyu = _rowdot(gy2, u2)
    else:
        u2, mu_u, mu_ux, s_gyu = None, 0.0, 0.0, 0.0
    mu_ghx = wr * s_gyx / m  # <g^ x^>
    wrr = wr * r
    a1 = uwr - wrr * mu_ux  # G = a1 gy + a2 u
    a2 = -r * mu_ghx
    # d/dgy = (ub - wr <u>) + a1 x^ + wr u, with x^ = r x - r mean
    u_terms = [] if u2 is None else [(u2, wrr)]
    g_gy = _combine(x2, a1 * r, u_terms, ubr - wrr * mu_u - a1 * r * mu)
    g_w = (r * (s_gyu - mu_u * s_gy - mu_ux * s_gyx)).view(n, c).sum(0)
    s = wr * (s_gyu - mu_u * s_gy) - m * mu_ux * mu_ghx
    mean_g = a1 * s_gy / m + a2 * mu_u
    mean_gx = a1 * s_gyx / m + a2 * mu_ux
    bx = -r * mean_gx - s * r * r / m  # the coefficient of x^ in d/dx
    u_terms = [] if u2 is None else [(u2, r * a2)]
    g_x = _combine(gy2, r * a1, u_terms + [(x2, bx * r)], -r * mean_g - bx * r * mu)
    return g_gy.view_as(gy), g_x.view_as(x), g_w


class _InstanceNormBackward(torch.autograd.Function):
    """(gx, gw, gb) = the instance-norm backward of gy at x (native kernel). Its own backward
    (the second derivative of instance norm) in closed form, per instance of M = H*W values with
    r = rstd, x^ = (x - mean) r, g^ = w gy and <.> the mean over the instance. Given the incoming
    gradients u (of gx), uw (of gw), ub (of gb), and the identity
    gx = r (g^ - <g^> - x^ <g^ x^>):

      d/dgy = w r (u - <u> - x^ <u x^>) + uw x^ + ub
      d/dw  = sum over n of r (sum gy u - <u> sum gy - <u x^> sum gy x^)
      d/dx  = r (G - <G> - x^ <G x^>) - (s / M) r^2 x^,   where, holding x^ and r fixed,
              G = dL/dx^ = (uw - w r <u x^>) gy - r <g^ x^> u   and
              s = dL/dr  = w (sum gy u - <u> sum gy) - M <u x^> <g^ x^>

    (x^ and r depend on x through the mean and variance; the last line is their chain rule). All
    of it is five reductions per instance (sum gy, sum u, and the dot products of gy and u with
    x^ and with each other) and per-instance linear combinations of gy, u and x^."""

    @staticmethod
    def forward(ctx, gy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                w: torch.Tensor, mask: tuple[bool, bool, bool]):
        n, c = x.shape[:2]
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            gy.contiguous(), x, mean, rstd, w, n, c, x[0, 0].numel(), c, list(mask))
        ctx.save_for_backward(gy, x, mean, rstd, w)
        ctx.set_materialize_grads(False)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, u: torch.Tensor | None, uw: torch.Tensor | None, ub: torch.Tensor | None):
        gy, x, mean, rstd, w = ctx.saved_tensors
        g_gy, g_x, g_w = _norm_double_backward(gy, x, mean, rstd, w, u, uw, ub)
        return g_gy, g_x, None, None, g_w, None


#: False: InstanceNorm takes the stock op everywhere (the benchmarks' A/B switch, `--norm stock`)
FAST_INSTANCE_NORM = True


class InstanceNorm(nn.GroupNorm):
    """nn.GroupNorm(C, C, affine=True) (same state, repr and isinstance) whose second derivative
    is computed in closed form on CPU (`_InstanceNormBackward`); other tensors take the stock op."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels, channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not FAST_INSTANCE_NORM or not torch.is_grad_enabled() or not x.requires_grad
                or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous()
                or is_functorch_wrapped_tensor(x) or is_functorch_wrapped_tensor(self.weight)):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return _InstanceNorm.apply(x, self.weight, self.bias, self.eps)
