"""One ConvNet block, conv3x3 -> instance norm -> ReLU -> 2x2 average pool, as a single autograd
node whose gradient is differentiable again with a small saved state: the memory lever of the
exact trajectory-matching unroll (MTT, DATM, DAMED; `FlatNet.keeping_less`).

**Why.** MTT keeps the graph of every unrolled student step: the forward and the gradient computed
with `create_graph=True`. Built from stock ops, each block of a step keeps four tensors of the
conv's output size for the outer backward: the conv output (instance norm's input), the ReLU
output (its backward's mask), the ReLU backward's result (the norm's incoming gradient, which the
closed-form second derivative needs) and the norm backward's result (which the conv weight
gradient's own derivative needs). At the MTT reference setting (100 images, width 128, 32x32 after
padding) that is 4 x 52 MB in the first block alone, about 0.3 GB per step with the other two.

**What is kept here.** The forward keeps the input x, the conv output z and the per-instance
mean and rstd; the gradient node adds only the gradient at the pooled output (a quarter of z's
size). Everything else the second derivative needs is recomputed, each at the cost of one fused
kernel: the ReLU's input y (the native group-norm forward again: the same bits, so the same mask),
the norm's incoming gradient gy = [y > 0] * P^T(gp), and the conv output gradient gz (the native
group-norm backward). Per step and first block 52 + 13 MB instead of 4 x 52 MB. The recomputation
and the closed-form second derivatives run over cache-sized slices of images (`CHUNK_BYTES`).

Measured at the MTT reference setting (`benchmarks/bench_trajectory.py --settings reference
--threads 2`, whole-graph unroll of 20 steps): peak 3.0-3.1 GB instead of 6.4 GB, and 4-8% more
time per iteration than the stock modules (the recomputation). At the CPU grid's width 32 the
time costs 5-10% and memory is no issue; TESLA (one step's graph at a time) keeps the stock
modules, which is where DATM and DAMED run.

**The math.** Forward: z = conv(x, K) + c, y = IN(z; w, b), a = relu(y), p = P(a) with P the 2x2
mean. Gradient (what `autograd.grad` of a loss asks of the block), given gp = dL/dp:
gy = m * P^T gp (m = [y > 0]); (gz, gw, gb) = IN'(gy); gK = conv_weight_grad(x, gz);
gc = sum gz; gx = conv_input_grad(gz, K). Its backward, given the gradients (ux, uK, uc, uw, ub)
arriving at (gx, gK, gc, gw, gb):
  u_gz  = conv(x, uK) + uc + conv(ux, K)        (the adjoints of the three linear maps of gz)
  (d_gy, d_z, d_w) = IN''(gy, z; u_gz, uw, ub)  (`fast_ops._norm_double_backward`)
  d_gp  = P(m * d_gy)
  d_x   = conv_input_grad(gz, uK) + conv_input_grad(d_z, K)
  d_K   = conv_weight_grad(ux, gz) + conv_weight_grad(x, d_z);  d_c = sum d_z
(m is piecewise constant: nothing flows through it, so d_b = 0.) tests/unit/test_fused_block.py
runs gradcheck and gradgradcheck in float64 and compares values, gradients, second derivatives
and whole MTT matching gradients with the stock modules.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.autograd.graph import get_gradient_edge

from .fast_ops import _norm_double_backward, _pool2x2, _upsample2x2

_conv_backward = torch.ops.aten.convolution_backward

#: False: models that ask for fused blocks run the stock modules (the benchmarks' A/B switch,
#: `--blocks stock`)
ENABLED = True


def _conv(x: torch.Tensor, k: torch.Tensor, c: torch.Tensor | None, pad: int) -> torch.Tensor:
    """conv2d(x, k, c) with stride 1 and padding `pad`."""
    return torch.convolution(x, k, c, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1)


def _conv_grads(gz: torch.Tensor, x: torch.Tensor, k: torch.Tensor, pad: int,
                need_x: bool, need_k: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dL/dx, dL/dK) of z = conv(x, K) (stride 1, padding `pad`) for dL/dz = gz."""
    if not (need_x or need_k):
        return None, None
    gx, gk, _ = _conv_backward(gz, x, k, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                               [need_x, need_k, False])
    return gx, gk


def _stats(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float):
    n, c = z.shape[:2]
    return torch.native_group_norm(z, w, b, n, c, z[0, 0].numel(), c, eps)


def _relu_grad(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """g where y > 0, else 0: the ReLU's backward (one fused kernel; a stored bool mask would
    cost a 13 MB tensor per block and step and a slower masked multiply)."""
    return torch.ops.aten.threshold_backward(g, y, 0)


def _norm_grad(gy: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
               w: torch.Tensor, mask: list[bool]):
    n, c = z.shape[:2]
    return torch.ops.aten.native_group_norm_backward(gy, z, mean, rstd, w, n, c, z[0, 0].numel(),
                                                     c, mask)


def _wanted(static: tuple[bool, ...], *tensors: torch.Tensor) -> list[bool]:
    """Which of `tensors` (inputs of the running backward's node) the current backward pass
    actually needs a gradient for. `ctx.needs_input_grad` only says whether an input requires
    grad; the engine knows whether its gradient leads to what this pass asked for, as the C++
    nodes' `should_compute_output` does: the inner `autograd.grad(loss, theta)` of an unroll step
    needs no gradient for the images, MTT's outer backward none for theta_0, TESLA's second pass
    none for any theta_i, and the conv weight gradients so skipped are the block's largest
    kernels."""
    out = []
    for need, t in zip(static, tensors, strict=True):
        if need:
            try:
                need = torch._C._will_engine_execute_node(get_gradient_edge(t).node)
            except RuntimeError:  # not inside a backward pass: keep the static answer
                pass
        out.append(bool(need))
    return out


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b (into a) where None means zero."""
    if a is None or b is None:
        return b if a is None else a
    return a.add_(b)


class _Block(torch.autograd.Function):
    """p = P(relu(IN(conv(x, K) + c; w, b)))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, c: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor, pad: int, eps: float) -> torch.Tensor:
        z = _conv(x, k, c, pad)
        y, mean, rstd = _stats(z, w, b, eps)
        p = _pool2x2(y.relu_())
        ctx.save_for_backward(x, k, c, w, b, z, mean, rstd)
        ctx.pad, ctx.eps = pad, eps
        return p

    @staticmethod
    def backward(ctx, gp: torch.Tensor):
        x, k, c, w, b, z, mean, rstd = ctx.saved_tensors
        need = _wanted(ctx.needs_input_grad[:5], x, k, c, w, b)
        gx, gk, gc, gw, gb = _BlockGrad.apply(gp, x, k, c, w, b, z, mean, rstd, ctx.pad, ctx.eps,
                                              tuple(need))
        return gx, gk, gc, gw, gb, None, None


#: The backward passes below run in slices of images whose conv output is about this many bytes:
#: every per-image intermediate (the ReLU input, the norm's gradients, the incoming gradient of
#: the gradient) then stays in cache between the dozen elementwise passes made over it, instead of
#: streaming 52 MB tensors through memory a dozen times (block 1 at the MTT reference setting).
CHUNK_BYTES = 4 << 20


def _slices(z: torch.Tensor) -> list[slice]:
    n = z.shape[0]
    if z.numel() * z.element_size() <= 2 * CHUNK_BYTES:  # small enough as it is
        return [slice(0, n)]
    per = max(1, CHUNK_BYTES // max(1, z[0].numel() * z.element_size()))
    return [slice(i, min(i + per, n)) for i in range(0, n, per)]


def _gather(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else parts[0] if len(parts) == 1 else torch.cat(parts)


def _grad_slice(gp, x, k, w, b, z, mean, rstd, pad, eps, need):
    """(gx, gK, gc, gw, gb) of the images in one slice (gK, gc, gw, gb: their share of the sum)."""
    need_x, need_k, need_c, need_w, need_b = need
    gy = _relu_grad(_upsample2x2(gp, *z.shape[-2:]), _stats(z, w, b, eps)[0])
    gz, gw, gb = _norm_grad(gy, z, mean, rstd, w, [True, need_w, need_b])
    del gy
    gc = gz.sum((0, 2, 3)) if need_c else None
    gx, gk = _conv_grads(gz, x, k, pad, need_x, need_k)
    return gx, gk, gc, (gw if need_w else None), (gb if need_b else None)


def _grad_grad_slice(gp, x, k, w, b, z, mean, rstd, pad, eps, ux, uk, uc, uw, ub, need):
    """(d_gp, d_x, d_K, d_c, d_w) of the images in one slice (see the module docstring)."""
    need_gp, need_x, need_k, need_c, need_w = need
    y = _stats(z, w, b, eps)[0]  # the ReLU's input again (the same kernel: the same bits)
    gy = _relu_grad(_upsample2x2(gp, *z.shape[-2:]), y)
    # what arrives at gz through gK = conv_weight_grad(x, gz), gc = sum gz, gx = convT(gz, K)
    u_gz = None
    if uk is not None:
        u_gz = _conv(x, uk, uc, pad)
    elif uc is not None:
        u_gz = uc.view(1, -1, 1, 1).expand(z.shape).contiguous()
    if ux is not None:
        u_x = _conv(ux, k, None, pad)
        u_gz = u_x if u_gz is None else u_gz.add_(u_x)
        del u_x
    d_gy, d_z, d_w = _norm_double_backward(gy, z, mean, rstd, w, u_gz, uw, ub)
    del u_gz
    d_gp = _pool2x2(_relu_grad(d_gy, y)) if need_gp else None
    del d_gy, y
    d_x = d_k = None
    if (uk is not None and need_x) or (ux is not None and need_k):
        gz = _norm_grad(gy, z, mean, rstd, w, [True, False, False])[0]
        if uk is not None and need_x:
            d_x = _conv_grads(gz, x, uk, pad, True, False)[0]
        if ux is not None and need_k:
            d_k = _conv_grads(gz, ux, k, pad, False, True)[1]
        del gz
    del gy
    # z = conv(x, K) + c: its gradient d_z goes on to x, K and c
    dx2, dk2 = _conv_grads(d_z, x, k, pad, need_x, need_k)
    d_c = d_z.sum((0, 2, 3)) if need_c else None
    return d_gp, _add(d_x, dx2), _add(d_k, dk2), d_c, (d_w if need_w else None)


class _BlockGrad(torch.autograd.Function):
    """(gx, gK, gc, gw, gb) of `_Block` for the incoming gp; differentiable w.r.t. (gp, x, K, c,
    w). z, mean, rstd and the mask are functions of (x, K, c, w, b) that the backward chains
    through by hand (see the module docstring); c enters only through z, b only through the mask
    (zero derivative). Both directions run over slices of images (`CHUNK_BYTES`): images are
    independent but for the parameter gradients, which are sums over the slices."""

    @staticmethod
    def forward(ctx, gp: torch.Tensor, x: torch.Tensor, k: torch.Tensor, c: torch.Tensor,
                w: torch.Tensor, b: torch.Tensor, z: torch.Tensor, mean: torch.Tensor,
                rstd: torch.Tensor, pad: int, eps: float, need: tuple[bool, ...]):
        """`need`: which of (gx, gK, gc, gw, gb) to compute; the others are None."""
        gp = gp.contiguous()
        gx_parts, sums = [], [None] * 4
        for s in _slices(z):
            gx, *parts = _grad_slice(gp[s], x[s], k, w, b, z[s], mean[s], rstd[s], pad, eps, need)
            gx_parts.append(gx)
            sums = [_add(t, p) for t, p in zip(sums, parts, strict=True)]
        ctx.save_for_backward(gp, x, k, c, w, b, z, mean, rstd)
        ctx.pad, ctx.eps = pad, eps
        ctx.set_materialize_grads(False)
        return _gather(gx_parts), *sums

    @staticmethod
    @once_differentiable
    def backward(ctx, ux, uk, uc, uw, ub):
        gp, x, k, c, w, b, z, mean, rstd = ctx.saved_tensors
        need = _wanted(ctx.needs_input_grad[:5], gp, x, k, c, w)
        gp_parts, x_parts, sums = [], [], [None] * 3
        for s in _slices(z):
            d_gp, d_x, *parts = _grad_grad_slice(
                gp[s], x[s], k, w, b, z[s], mean[s], rstd[s], ctx.pad, ctx.eps,
                None if ux is None else ux[s], uk, uc, uw, ub, need)
            gp_parts.append(d_gp)
            x_parts.append(d_x)
            sums = [_add(t, p) for t, p in zip(sums, parts, strict=True)]
        return _gather(gp_parts), _gather(x_parts), *sums, *[None] * 7


def conv_block(x: torch.Tensor, k: torch.Tensor, c: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               pad: int, eps: float) -> torch.Tensor:
    """P(relu(GroupNorm(C, C)(conv2d(x, k, c, padding=pad); w, b, eps))) as one node (see the
    module docstring)."""
    return _Block.apply(x.contiguous(), k, c, w, b, pad, eps)
