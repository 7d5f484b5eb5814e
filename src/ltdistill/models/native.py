"""First-order CPU kernels of the ConvNet block, compiled on first use (`csrc/block_cpu.cpp`).

Evaluation and expert training of the width-32 ConvNet-3 that the CPU grid runs spend most of a
step outside the convolutions' matrix products: instance norm, ReLU and the 2x2 pool each make
passes over the first block's activations (256 x 32 x 32 x 32 floats, 33 MB at batch 256), and
the first convolution, with one input channel, is a 9-deep matrix product that PyTorch's kernels
run at 24-44 GFLOP/s. Measured on the development machine (2 cores; docs/performance.md, stops
17-18): 59 ms per step of batch 256, of which the matrix-product convolutions of blocks 2-3 took
~15; with these kernels (NCHW, stop 17) ~26-29 ms, and with the activations channels_last (stop
18, below) ~19 ms: 13,756 against ~4,100 images/s, 67% instead of 20% of the same run's fp32
matmul peak (width 128: 1,173 against ~690 images/s, 86%).

Two kernels do that work one image (channels_last) or one (image, channel) plane (NCHW) at a time
while it sits in cache:
- `norm_relu_pool(z, gamma, beta, eps)`: instance norm -> ReLU -> 2x2 mean. Forward: one read of
  z, one write of the pooled output. Backward: reads z and the pooled gradient, writes dz.
- `conv_norm_relu_pool(x, weight, bias, gamma, beta, padding, eps)`: the whole block for inputs
  with few channels (the first block: 1 or 3). The conv output is never written: the forward
  pools it in cache, the backward recomputes it from the input plane and forms the weight
  gradient from dz in cache. The input's gradient is not formed (the first block's input is data;
  a caller that needs it gets `norm_relu_pool` after a stock conv).

Layout (`CHANNELS_LAST`, default True): `ConvNet` keeps the activations of blocks on these kernels
channels_last, so oneDNN runs the convolutions of blocks 2-3 on NHWC tensors directly instead of
converting NCHW to and from its blocked layout around each one (6 activation-sized copies per
conv and step; 10-20% of the convolutions' time at widths 32-128 here), and the kernels' loops run
over a pixel's contiguous channels with 512-bit vectors where the CPU has them. `norm_relu_pool`
follows z's layout; `conv_norm_relu_pool(..., channels_last=True)` writes its output NHWC.

Backward algebra (per plane of M values; a = gamma * rstd, b = beta - mean * a, y = a z + b):
g = upsampled pooled gradient / 4, masked by y > 0; with sg = sum g, sgz = sum g z and
sgx = sum g * xhat = rstd (sgz - mean sg): d beta = sg, d gamma = sgx and
dz = a g + k1 z + k0, k1 = -a rstd sgx / M, k0 = -a sg / M - k1 mean.

They are first-order only: `ConvNet` uses them inside `first_order()` (entered by
`microbatch.sliced_backward`, the one place where training steps call `.backward()` without a
graph of the gradient) and for forward passes without gradients; a backward that would need a
graph of its own (create_graph=True) raises instead of returning a wrong second derivative. Values
equal the stock modules' up to float summation order (tests/unit/test_native.py: float64 to
1e-12, gradcheck, a whole training run).

The library is compiled once per machine type with the system C++ compiler (`CXX`, else c++) and
PyTorch's headers (~20 s), with -march=native, into `$LTDISTILL_CACHE` (default
~/.cache/ltdistill)/native, keyed by the source, torch's version, the compiler and the CPU's
flags, so a cluster's login and compute nodes with different CPUs each build their own; the .so is
written under a temporary name and renamed, so concurrent jobs never load a half-written file.
`runtime.native_kernels`: "auto" (default: build/load, fall back to the stock modules with one
warning if that fails), "on" (fail with the compiler's message instead) or "off"; outside workflow
jobs (benchmarks, notebooks) the environment variable LTDISTILL_NATIVE_KERNELS sets the starting
policy (benchmarks' before/after figures: LTDISTILL_NATIVE_KERNELS=off).
`python -m ltdistill.models.native` builds the library and prints where it is (`./run.sh setup`
does this)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

log = logging.getLogger("ltdistill.native")

POLICIES = ("auto", "on", "off")
SOURCE = Path(__file__).with_name("csrc") / "block_cpu.cpp"
_state: dict[str, object] = {}  # "ok": bool, "path": str, "error": str (once tried)
_first_order = 0


class NativeBuildError(RuntimeError):
    pass


def _checked(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"runtime.native_kernels must be one of {', '.join(POLICIES)}, got "
                         f"{policy!r}")
    return policy


def set_native_kernels(policy: str | None) -> None:
    """Set the process-wide policy (jobs.start reads `runtime.native_kernels`)."""
    global _policy
    _policy = _checked("auto" if policy is None else policy)


# the starting policy: LTDISTILL_NATIVE_KERNELS (checked once, here), which a job's config overrides
_policy = _checked(os.environ.get("LTDISTILL_NATIVE_KERNELS", "auto"))


def get_native_kernels() -> str:
    """The policy and whether the kernels are in use: "off", or "auto"/"on" with ":loaded" or
    ":unavailable" once tried (recorded in provenance)."""
    if _policy == "off" or "ok" not in _state:
        return _policy
    return f"{_policy}:{'loaded' if _state['ok'] else 'unavailable'}"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None:
        raise NativeBuildError(f"no C++ compiler '{cxx}' on PATH (install g++, e.g. "
                               f"`apt-get install g++`, or set runtime.native_kernels: off)")
    return cxx


def _flags() -> list[str]:
    # torch's own headers and libraries (what torch.utils.cpp_extension would pass, without
    # importing it: that module probes for CUDA and warns on every CPU-only machine)
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++20",
             f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += [f"-I{root / 'include'}", f"-I{root / 'include/torch/csrc/api/include'}"]
    lib = root / "lib"
    return flags + [f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def library_path() -> Path:
    """Where this machine's build lives (it may not exist yet)."""
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), torch.__version__, version, _cpu_flags(),
                                    " ".join(_flags())]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("LTDISTILL_CACHE") or Path.home() / ".cache" / "ltdistill")
    return root / "native" / f"block_cpu-{key}.so"


def build() -> Path:
    """Compile the library unless this machine's build exists; returns its path."""
    if not sys.platform.startswith("linux"):
        raise NativeBuildError(f"the native kernels are built on Linux only (this is "
                               f"{sys.platform}); set runtime.native_kernels: off")
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    cmd = [_compiler(), str(SOURCE), "-o", tmp, *_flags()]
    log.info("compiling the native ConvNet block kernels (once per machine type): %s", path)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise NativeBuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd[:3])} ...):\n"
                                   f"{res.stderr[-3000:]}\nInstall g++ >= 10 or set "
                                   f"runtime.native_kernels: off")
        os.replace(tmp, path)  # atomic: concurrent jobs load a whole file or build their own
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def available() -> bool:
    """True when the kernels are loaded in this process (building them on first call under
    "auto"/"on"). Under "auto" a failure logs one warning and returns False for good; under "on"
    it raises NativeBuildError."""
    if _policy == "off":
        return False
    if "ok" not in _state:
        try:
            path = build()
            torch.ops.load_library(str(path))
            _state.update(ok=True, path=str(path))
        except Exception as exc:  # noqa: BLE001 - any failure means: use the stock modules
            _state.update(ok=False, error=str(exc))
            if _policy == "auto":
                log.warning("native ConvNet kernels unavailable, using the stock modules: %s", exc)
    if not _state["ok"] and _policy == "on":
        raise NativeBuildError(str(_state["error"]))
    return bool(_state["ok"])


@contextlib.contextmanager
def first_order() -> Iterator[None]:
    """Inside: training steps whose gradient is not differentiated again may use the kernels."""
    global _first_order
    _first_order += 1
    try:
        yield
    finally:
        _first_order -= 1


def usable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether a forward of `x` through blocks with these parameters may use the kernels: CPU,
    float32/64, NCHW- or channels_last-contiguous, outside torch.func transforms and
    torch.compile tracing, and without gradients or inside `first_order()`."""
    if _policy == "off" or not (_first_order or not torch.is_grad_enabled()):
        return False
    if torch.compiler.is_compiling():  # runtime.compile: Inductor fuses the stock ops itself
        return False
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dim() != 4:
        return False
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if not dense or any(is_functorch_wrapped_tensor(t) for t in (x, *params)):
        return False
    return available()


def _no_double_backward() -> None:
    if torch.is_grad_enabled():
        raise RuntimeError("the native ConvNet block kernels are first-order only, but this "
                           "backward builds a graph of the gradient (create_graph=True); run it "
                           "outside ltdistill.models.native.first_order() or set "
                           "runtime.native_kernels: off")


class _NormReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, gamma, beta, eps):
        p, mean, rstd = torch.ops.ltdistill_native.nrp_forward(z, gamma, beta, eps)
        ctx.save_for_backward(z, gamma, beta, mean, rstd)
        return p

    @staticmethod
    def backward(ctx, dp):
        _no_double_backward()
        dz, dgamma, dbeta = torch.ops.ltdistill_native.nrp_backward(dp, *ctx.saved_tensors)
        return dz, dgamma, dbeta, None


class _ConvNormReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, padding, eps, channels_last):
        p, mean, rstd = torch.ops.ltdistill_native.cnrp_forward(x, weight, bias, gamma, beta,
                                                                padding, eps, channels_last)
        ctx.save_for_backward(x, weight, bias, gamma, beta, mean, rstd)
        ctx.padding, ctx.channels_last = padding, channels_last
        return p

    @staticmethod
    def backward(ctx, dp):
        _no_double_backward()
        dw, db, dgamma, dbeta = torch.ops.ltdistill_native.cnrp_backward(
            dp, *ctx.saved_tensors, ctx.padding, ctx.channels_last)
        return None, dw, db, dgamma, dbeta, None, None, None


def norm_relu_pool(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """2x2 mean of ReLU(instance norm(z)) (affine gamma, beta; biased variance), in z's layout
    (channels_last or NCHW)."""
    return _NormReluPool.apply(z, gamma, beta, eps)


def conv_norm_relu_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        gamma: torch.Tensor, beta: torch.Tensor, padding: int, eps: float,
                        channels_last: bool = False) -> torch.Tensor:
    """The whole block (stride-1 square conv with `padding`) for an input that needs no gradient;
    the output channels_last or NCHW."""
    if x.requires_grad:
        raise ValueError("conv_norm_relu_pool forms no input gradient; use a conv and "
                         "norm_relu_pool for inputs that need one")
    return _ConvNormReluPool.apply(x, weight, bias, gamma, beta, padding, eps, channels_last)


#: the largest input channel count the whole-block kernel takes (its conv is a direct loop; wider
#: inputs are the matrix-product convolutions PyTorch already runs near peak)
DIRECT_CONV_CHANNELS = 4

#: ConvNet blocks on these kernels keep their activations channels_last: oneDNN's convolutions of
#: blocks 2-3 then skip the conversions to and from its blocked layout that NCHW costs (10-20% of
#: their time at widths 32-128 on the development machine), and the kernels' loops run over a
#: pixel's contiguous channels. False: NCHW throughout (the tests compare both).
CHANNELS_LAST = True


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_native_kernels("on")
    try:
        available()
    except NativeBuildError as exc:
        print(f"native kernels: not built: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"native kernels: {_state['path']}")


if __name__ == "__main__":
    main()
