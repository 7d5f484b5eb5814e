// First-order CPU kernels of the ConvNet block "instance norm -> ReLU -> 2x2 average pool"
// (`nrp_*`), and of the whole block "conv -> instance norm -> ReLU -> pool" for inputs with few
// channels (`cnrp_*`: the first block, 1 or 3 input channels). Each kernel works one (image,
// channel) plane at a time while the plane sits in L1/L2: the stock ops make a dozen passes over
// activation-sized tensors in memory, these make one (forward: read z, write the pooled output;
// backward: read z and the pooled gradient, write dz). The whole-block kernels never write the
// conv output at all: the forward recomputes nothing it does not need and the backward
// recomputes the conv output from the (small) input plane, so the first block's 33 MB
// intermediates at width 32 x batch 256 never leave cache.
//
// Only first-order: there is no double backward (ltdistill/models/native.py uses them inside
// first-order training and inference only). Deterministic: every reduction runs in a fixed order
// (per-plane partial sums, then a sequential sum over the images), independent of the thread count.
//
// Numerics: y = a * z + b with a = gamma * rstd, b = beta - mean * a (the same expression in the
// forward and the backward, so the ReLU mask is consistent); biased variance by two passes over
// the plane; the pooled output is 0.25 * (sum of the 2x2 block), trailing odd rows/columns
// dropped (floor mode), as ltdistill's AvgPool2x2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
struct Stats {
  T mean, rstd;
};

// Lanes of the wide accumulators below: sums of long vectors as kLanes independent partial sums
// (8 ymm registers of floats) reduced once at the end, so the adds do not wait on each other
// (one vector accumulator made the plane statistics latency-bound: ~4 cycles per 8 values).
constexpr int64_t kLanes = 64;

template <typename T>
T lane_total(const T* acc) {
  T s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// sum of f(v[i]) over i < m with kLanes independent accumulators, in a fixed order
template <typename T, typename F>
T wide_sum(const T* __restrict v, int64_t m, F f) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes)
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += f(v[i + j]);
  T s = lane_total(acc);
  for (; i < m; ++i) s += f(v[i]);
  return s;
}

// sum of u[i] * v[i] over i < m, as wide_sum
template <typename T>
T wide_dot(const T* __restrict u, const T* __restrict v, int64_t m) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes)
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += u[i + j] * v[i + j];
  T s = lane_total(acc);
  for (; i < m; ++i) s += u[i] * v[i];
  return s;
}

template <typename T>
Stats<T> plane_stats(const T* z, int64_t m, double eps) {
  const T mean = wide_sum(z, m, [](T v) { return v; }) / static_cast<T>(m);
  const T sq = wide_sum(z, m, [mean](T v) { return (v - mean) * (v - mean); });
  T var = sq / static_cast<T>(m);
  // squares beyond the float range: torch's norm gives NaN here (E[z^2] - mean^2 = inf - inf),
  // and divergence checks rely on it; 1 / sqrt(inf) = 0 would hide the overflow instead
  if (!std::isfinite(var)) var = std::numeric_limits<T>::quiet_NaN();
  return {mean, static_cast<T>(1) / std::sqrt(var + static_cast<T>(eps))};
}

// p (ph x pw) = 0.25 * 2x2 sums of relu(a * z + b) over z (h x w): ((y00 + y10) + (y01 + y11)),
// the order of ltdistill's AvgPool2x2 (rows first). The two input columns of each pooled column
// are read as a stride-2 pair (permutes). W > 0: the plane's width as a compile-time constant
// (w, pw ignored), which lets the compiler unroll and vectorise the rows fully; W = 0: any width.
template <typename T, int W = 0>
void plane_forward(const T* __restrict z, int64_t w_, int64_t ph, int64_t pw_, T a, T b,
                   T* __restrict p) {
  const int64_t w = W ? W : w_, pw = W ? W / 2 : pw_;
  const T zero = static_cast<T>(0);
  for (int64_t i = 0; i < ph; ++i) {
    const T* __restrict z0 = z + (2 * i) * w;
    const T* __restrict z1 = z0 + w;
    T* __restrict out = p + i * pw;
#pragma omp simd
    for (int64_t j = 0; j < pw; ++j) {
      T v00 = a * z0[2 * j] + b, v01 = a * z0[2 * j + 1] + b;
      T v10 = a * z1[2 * j] + b, v11 = a * z1[2 * j + 1] + b;
      v00 = v00 < zero ? zero : v00;  // NaN stays NaN, as torch's ReLU (divergence checks)
      v01 = v01 < zero ? zero : v01;
      v10 = v10 < zero ? zero : v10;
      v11 = v11 < zero ? zero : v11;
      out[j] = static_cast<T>(0.25) * ((v00 + v10) + (v01 + v11));
    }
  }
}

// g (h x w) = the gradient reaching the norm's output: dp / 4 spread over each 2x2 block, zero on
// the dropped rows/columns, masked by the ReLU (a * z + b > 0). Returns (sum g, sum g * z).
template <typename T, int W = 0>
std::pair<T, T> plane_relu_pool_grad(const T* __restrict z, const T* __restrict dp, int64_t h,
                                     int64_t w_, int64_t ph, int64_t pw_, T a, T b,
                                     T* __restrict g) {
  const int64_t w = W ? W : w_, pw = W ? W / 2 : pw_;
  for (int64_t i = 0; i < h; ++i) {
    T* gi = g + i * w;
    const T* zi = z + i * w;
    if (i >= 2 * ph) {
      std::fill(gi, gi + w, static_cast<T>(0));
      continue;
    }
    const T* __restrict d = dp + (i / 2) * pw;  // rows 2r and 2r + 1 share pooled row r
    const int64_t w2 = 2 * pw;
    // over pooled columns, the two input columns of each as a stride-2 pair (permutes, where
    // indexing d[j / 2] per input column compiled to gathers)
#pragma omp simd
    for (int64_t j = 0; j < pw; ++j) {
      const T dv = static_cast<T>(0.25) * d[j];
      gi[2 * j] = (a * zi[2 * j] + b > static_cast<T>(0)) ? dv : static_cast<T>(0);
      gi[2 * j + 1] = (a * zi[2 * j + 1] + b > static_cast<T>(0)) ? dv : static_cast<T>(0);
    }
    for (int64_t j = w2; j < w; ++j) gi[j] = 0;
  }
  return {wide_sum(g, h * w, [](T v) { return v; }), wide_dot(g, z, h * w)};
}

// The instance norm's backward from g in place: dz = a * g + k1 * z + k0 (see the header of
// native.py for the algebra). Writes this plane's d gamma and d beta partial sums.
template <typename T>
void plane_norm_grad(const T* z, T* g, int64_t m, Stats<T> st, T gamma, T sg, T sgz, T* dgamma,
                     T* dbeta) {
  const T a = gamma * st.rstd;
  const T sgx = st.rstd * (sgz - st.mean * sg);  // sum g * xhat
  const T inv_m = static_cast<T>(1) / static_cast<T>(m);
  const T k1 = -a * st.rstd * sgx * inv_m;
  const T k0 = -a * sg * inv_m - k1 * st.mean;
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) g[i] = a * g[i] + k1 * z[i] + k0;
  *dgamma = sgx;
  *dbeta = sg;
}

// A per-thread work buffer of n values: 64-byte aligned, so that full-vector loads and stores of
// rows whose length is a multiple of 16 floats never straddle two cache lines (std::vector's 16-byte
// alignment split every 512-bit store of the channels_last kernels in two), and uninitialised
// (every kernel writes it before reading it; zeroing cost a memset per call).
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n)
      : p_(static_cast<T*>(::operator new[](std::max<int64_t>(n, 1) * sizeof(T),
                                            std::align_val_t(64)))) {}
  ~Buffer() { ::operator delete[](p_, std::align_val_t(64)); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() { return p_; }

 private:
  T* p_;
};

// Sum rows of an (n x k) partial-sum buffer into out (k), in a fixed order.
template <typename T>
void sum_rows(const T* part, int64_t n, int64_t k, T* out) {
  for (int64_t j = 0; j < k; ++j) out[j] = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) out[j] += part[i * k + j];
}

// t as a contiguous tensor of ref's dtype (parameters and incoming gradients of a block)
at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  return t.contiguous().to(ref.scalar_type());
}

void check_planes(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be N x C x H x W, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64");
}

// Calls body(W) with the plane width as a compile-time constant for the ConvNets' usual (even)
// widths, else with 0 (any width).
template <typename F>
void dispatch_width(int64_t w, F&& body) {
  using std::integral_constant;
  switch (w) {
    case 8: return body(integral_constant<int, 8>{});
    case 16: return body(integral_constant<int, 16>{});
    case 32: return body(integral_constant<int, 32>{});
    case 64: return body(integral_constant<int, 64>{});
    default: return body(integral_constant<int, 0>{});
  }
}

// ------------------------------------------- conv (NCHW planes; the first block, few channels)

// One image's input, zero-padded: (cin, h + 2 pad, w + 2 pad).
template <typename T>
void pad_image(const T* x, int64_t cin, int64_t h, int64_t w, int64_t pad, T* out) {
  const int64_t hp = h + 2 * pad, wp = w + 2 * pad;
  std::fill(out, out + cin * hp * wp, static_cast<T>(0));
  for (int64_t ci = 0; ci < cin; ++ci)
    for (int64_t i = 0; i < h; ++i)
      std::copy(x + (ci * h + i) * w, x + (ci * h + i + 1) * w,
                out + (ci * hp + i + pad) * wp + pad);
}

// z (ho x wo) = bias + sum over input channels and taps of weight * shifted padded input, one
// output row at a time (the row stays in registers/L1 across the taps).
template <typename T, int K = 0, int W = 0>
void plane_conv(const T* __restrict xp, int64_t cin, int64_t hp, int64_t wp,
                const T* __restrict wc, T bias, int64_t k_, int64_t ho, int64_t wo_,
                T* __restrict z) {
  const int64_t k = K ? K : k_, wo = W ? W : wo_;
  for (int64_t i = 0; i < ho; ++i) {
    T* __restrict dst = z + i * wo;
#pragma omp simd
    for (int64_t j = 0; j < wo; ++j) dst[j] = bias;
    for (int64_t ci = 0; ci < cin; ++ci)
      for (int64_t kh = 0; kh < k; ++kh) {
        const T* __restrict src = xp + (ci * hp + i + kh) * wp;
        const T* __restrict wr = wc + (ci * k + kh) * k;
        for (int64_t kw = 0; kw < k; ++kw) {
          const T wv = wr[kw];
#pragma omp simd
          for (int64_t j = 0; j < wo; ++j) dst[j] += wv * src[j + kw];
        }
      }
  }
}

struct ConvShape {
  int64_t n, cin, h, w, c, k, pad, hp, wp, ho, wo, ph, pw;
};

// The conv's weight and bias gradients of one (image, channel) plane from its dz: the
// correlation of dz with each shifted input plane, and the sum of dz (out: taps, then bias).
// Accumulates whole rows per tap in `acc` (taps x wo) and reduces each once at the end.
template <typename T, int K = 0, int W = 0>
void plane_conv_grad(const T* __restrict xp, const T* __restrict dz, const ConvShape& s,
                     T* __restrict acc, T* __restrict out) {
  const int64_t k = K ? K : s.k, wo = W ? W : s.wo, m = s.ho * wo;
  out[s.cin * k * k] = wide_sum(dz, m, [](T v) { return v; });
  if constexpr (K > 0 && W > 0) {
    // one kernel row (K taps) at a time, its K x W accumulators in registers: no store/reload
    // of partial sums per image row
    for (int64_t ci = 0; ci < s.cin; ++ci)
      for (int64_t kh = 0; kh < K; ++kh) {
        T a[K][W] = {};
        for (int64_t i = 0; i < s.ho; ++i) {
          const T* __restrict gi = dz + i * W;
          const T* __restrict src = xp + (ci * s.hp + i + kh) * s.wp;
          for (int64_t kw = 0; kw < K; ++kw)
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) a[kw][j] += gi[j] * src[j + kw];
        }
        for (int64_t kw = 0; kw < K; ++kw) {
          T v = 0;
#pragma omp simd reduction(+ : v)
          for (int64_t j = 0; j < W; ++j) v += a[kw][j];
          out[(ci * K + kh) * K + kw] = v;
        }
      }
    return;
  }
  const int64_t taps = s.cin * k * k;
  std::fill(acc, acc + taps * wo, static_cast<T>(0));
  for (int64_t i = 0; i < s.ho; ++i) {
    const T* __restrict gi = dz + i * wo;
    for (int64_t ci = 0; ci < s.cin; ++ci)
      for (int64_t kh = 0; kh < k; ++kh) {
        const T* __restrict src = xp + (ci * s.hp + i + kh) * s.wp;
        for (int64_t kw = 0; kw < k; ++kw) {
          T* __restrict a = acc + ((ci * k + kh) * k + kw) * wo;
#pragma omp simd
          for (int64_t j = 0; j < wo; ++j) a[j] += gi[j] * src[j + kw];
        }
      }
  }
  for (int64_t t = 0; t < taps; ++t) {
    T v = 0;
    const T* __restrict a = acc + t * wo;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < wo; ++j) v += a[j];
    out[t] = v;
  }
}

// Calls body(K, W) with the kernel size and output width as compile-time constants for the
// ConvNets' usual planes (3x3 convs, 32 or 64 px wide), else with 0 (any size).
template <typename F>
void dispatch_shape(const ConvShape& s, F&& body) {
  using std::integral_constant;
  if (s.k == 3 && s.wo == 32)
    body(integral_constant<int, 3>{}, integral_constant<int, 32>{});
  else if (s.k == 3 && s.wo == 64)
    body(integral_constant<int, 3>{}, integral_constant<int, 64>{});
  else
    body(integral_constant<int, 0>{}, integral_constant<int, 0>{});
}

ConvShape conv_shape(const at::Tensor& x, const at::Tensor& weight, int64_t pad) {
  check_planes(x, "x");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == weight.size(3),
              "weight must be C_out x C_in x k x k with C_in = the input's channels");
  ConvShape s{};
  s.n = x.size(0), s.cin = x.size(1), s.h = x.size(2), s.w = x.size(3);
  s.c = weight.size(0), s.k = weight.size(2), s.pad = pad;
  s.hp = s.h + 2 * pad, s.wp = s.w + 2 * pad;
  s.ho = s.hp - s.k + 1, s.wo = s.wp - s.k + 1;
  TORCH_CHECK(s.ho > 0 && s.wo > 0, "the kernel is larger than the padded input");
  s.ph = s.ho / 2, s.pw = s.wo / 2;
  return s;
}

// ================================================= channels_last (NHWC) variants
//
// The same blocks on pixel-major planes: one image's z is (h * w) pixels x c channels. oneDNN runs
// the matrix-product convolutions of blocks 2-3 on channels_last tensors without the reorders to
// and from its blocked layout that NCHW costs (6 activation-sized copies per conv and step; 10-20%
// of the convs' time at widths 32-128), and here every loop runs over the c contiguous channels of
// a pixel: full vectors, no permutes for the 2x2 pool. Work goes one image at a time (its planes,
// 128 KB at 32 x 32 x 32 floats, stay in L2); reductions per image run in a fixed order, then over
// the images in order, as above.

// Full-width vectors here (-march=native on AVX-512 machines otherwise prefers 256-bit ones):
// the channel loops are 32-128 contiguous values, where 512-bit vectors halve the instructions of
// the direct conv (~1.5x on the first block); the NCHW kernels above, whose rows are 8-16 values,
// are faster with 256-bit ones.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")
#define LTDISTILL_POP_OPTIONS
#endif

// The channel count as a compile-time constant for the ConvNets' widths, else 0 (any count).
template <typename F>
void dispatch_channels(int64_t c, F&& body) {
  using std::integral_constant;
  switch (c) {
    case 32: return body(integral_constant<int, 32>{});
    case 64: return body(integral_constant<int, 64>{});
    case 128: return body(integral_constant<int, 128>{});
    default: return body(integral_constant<int, 0>{});
  }
}

// Per-image scratch of n values, uninitialised: a plain array when the size is a compile-time
// constant N (so the compiler keeps short accumulators in registers), else a Buffer (N = 0).
template <typename T, int N>
struct Scratch {
  T local[N];
  explicit Scratch(int64_t) {}
  T* data() { return local; }
};

template <typename T>
struct Scratch<T, 0> : Buffer<T> {
  using Buffer<T>::Buffer;
};

// Pixel sums of one image run as kPix interleaved partial sums per channel (pixel p into partial
// p % kPix; the leftover pixels into partial 0), added in order at the end: independent vector adds.
constexpr int64_t kPix = 4;

// out[ch] = sum over the m pixels p of f(p, ch)
template <typename T, int C, typename F>
void pixel_sum(int64_t m, int64_t c_, F f, T* __restrict out) {
  const int64_t c = C ? C : c_;
  Scratch<T, kPix * C> buf(kPix * c);
  T* __restrict acc = buf.data();
  std::fill(acc, acc + kPix * c, static_cast<T>(0));
  int64_t p = 0;
  for (; p + kPix <= m; p += kPix)
#pragma GCC unroll 4
    for (int64_t l = 0; l < kPix; ++l) {
      T* __restrict a = acc + l * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) a[ch] += f(p + l, ch);
    }
  for (; p < m; ++p)
#pragma omp simd
    for (int64_t ch = 0; ch < c; ++ch) acc[ch] += f(p, ch);
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch)
    out[ch] = ((acc[ch] + acc[c + ch]) + acc[2 * c + ch]) + acc[3 * c + ch];
}

// Per-channel mean and rstd of one image (two passes, as plane_stats; the first is skipped when the
// caller has the pixel sums already: `sum`, else null), and the affine a, b of y = a z + b.
template <typename T, int C>
void image_stats(const T* __restrict z, int64_t m, int64_t c_, double eps, const T* gamma,
                 const T* beta, const T* sum, T* mean, T* rstd, T* a, T* b) {
  const int64_t c = C ? C : c_;
  if (sum)
    std::copy(sum, sum + c, mean);
  else
    pixel_sum<T, C>(m, c, [=](int64_t p, int64_t ch) { return z[p * c + ch]; }, mean);
  const T inv_m = static_cast<T>(1) / static_cast<T>(m);
  for (int64_t ch = 0; ch < c; ++ch) mean[ch] = mean[ch] / static_cast<T>(m);
  pixel_sum<T, C>(
      m, c,
      [=](int64_t p, int64_t ch) { return (z[p * c + ch] - mean[ch]) * (z[p * c + ch] - mean[ch]); },
      rstd);
  for (int64_t ch = 0; ch < c; ++ch) {
    T var = rstd[ch] * inv_m;
    if (!std::isfinite(var)) var = std::numeric_limits<T>::quiet_NaN();  // as plane_stats
    rstd[ch] = static_cast<T>(1) / std::sqrt(var + static_cast<T>(eps));
    a[ch] = gamma[ch] * rstd[ch];
    b[ch] = beta[ch] - mean[ch] * a[ch];
  }
}

// p (ph x pw pixels) = 0.25 * 2x2 sums of relu(a z + b), ((y00 + y10) + (y01 + y11)) as
// plane_forward, so both layouts pool the same values the same way.
template <typename T, int C>
void image_pool_forward(const T* __restrict z, int64_t w, int64_t ph, int64_t pw, int64_t c_,
                        const T* __restrict a, const T* __restrict b, T* __restrict p) {
  const int64_t c = C ? C : c_;
  const T zero = static_cast<T>(0);
  for (int64_t i = 0; i < ph; ++i)
    for (int64_t j = 0; j < pw; ++j) {
      const T* __restrict z00 = z + ((2 * i) * w + 2 * j) * c;
      const T* __restrict z01 = z00 + c;
      const T* __restrict z10 = z00 + w * c;
      const T* __restrict z11 = z10 + c;
      T* __restrict out = p + (i * pw + j) * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        T v00 = a[ch] * z00[ch] + b[ch], v01 = a[ch] * z01[ch] + b[ch];
        T v10 = a[ch] * z10[ch] + b[ch], v11 = a[ch] * z11[ch] + b[ch];
        v00 = v00 < zero ? zero : v00;
        v01 = v01 < zero ? zero : v01;
        v10 = v10 < zero ? zero : v10;
        v11 = v11 < zero ? zero : v11;
        out[ch] = static_cast<T>(0.25) * ((v00 + v10) + (v01 + v11));
      }
    }
}

// The backward of norm -> ReLU -> pool for one image: g (h x w pixels) = dz. dp: the image's
// pooled gradient; d_gamma, d_beta: this image's partial sums (c each); d_sum (if not null): the
// sum of dz over the pixels (the conv bias's gradient), formed while dz is written. Two passes
// over z: the sums the norm's backward needs, then dz.
template <typename T, int C>
void image_backward(const T* __restrict z, const T* __restrict dp, int64_t h, int64_t w,
                    int64_t ph, int64_t pw, int64_t c_, const T* gamma, const T* mean,
                    const T* rstd, const T* beta, T* __restrict g, T* d_gamma, T* d_beta,
                    T* d_sum) {
  const int64_t c = C ? C : c_, m = h * w;
  Scratch<T, 4 * C> coef(4 * c);
  T *a = coef.data(), *b = a + c, *k1 = b + c, *k0 = k1 + c;
  for (int64_t ch = 0; ch < c; ++ch) {
    a[ch] = gamma[ch] * rstd[ch];
    b[ch] = beta[ch] - mean[ch] * a[ch];
  }
  const T zero = static_cast<T>(0);
  // g at one pixel: its share dv of the pooled gradient where the ReLU passed (a z + b > 0), else 0
  auto masked = [=](T zv, T dv, int64_t ch) { return (a[ch] * zv + b[ch] > zero) ? dv : zero; };
  // sum g and sum g z per channel (explicit loops, not std::fill: a memset, like any access outside
  // the vector loops, would keep these accumulators out of registers)
  Scratch<T, 2 * C> sums(2 * c);
  T *sg = sums.data(), *sgz = sg + c;
  for (int64_t q = 0; q < 2 * c; ++q) sg[q] = zero;
  // pass 1: sum g and sum g z, g = dp / 4 on each 2x2 block masked by the ReLU (not stored: pass
  // 2 recomputes it, cheaper than writing and re-reading a plane-sized buffer)
  for (int64_t i = 0; i < ph; ++i)
    for (int64_t j = 0; j < pw; ++j) {
      const T* __restrict d = dp + (i * pw + j) * c;
      const T* __restrict z00 = z + ((2 * i) * w + 2 * j) * c;
      const T* __restrict z01 = z00 + c;
      const T* __restrict z10 = z00 + w * c;
      const T* __restrict z11 = z10 + c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const T dv = static_cast<T>(0.25) * d[ch];
        const T v00 = masked(z00[ch], dv, ch), v01 = masked(z01[ch], dv, ch);
        const T v10 = masked(z10[ch], dv, ch), v11 = masked(z11[ch], dv, ch);
        sg[ch] += (v00 + v10) + (v01 + v11);
        sgz[ch] += (v00 * z00[ch] + v10 * z10[ch]) + (v01 * z01[ch] + v11 * z11[ch]);
      }
    }
  const T inv_m = static_cast<T>(1) / static_cast<T>(m);
#pragma omp simd
  for (int64_t ch = 0; ch < c; ++ch) {
    const T sgx = rstd[ch] * (sgz[ch] - mean[ch] * sg[ch]);  // sum g * xhat
    k1[ch] = -a[ch] * rstd[ch] * sgx * inv_m;
    k0[ch] = -a[ch] * sg[ch] * inv_m - k1[ch] * mean[ch];
    d_gamma[ch] = sgx;
    d_beta[ch] = sg[ch];
  }
  // pass 2: dz = a g + k1 z + k0 (g = 0 on the dropped last row/column of odd planes), and its
  // pixel sum
  Scratch<T, C> total(c);
  T* __restrict acc = total.data();
  for (int64_t ch = 0; ch < c; ++ch) acc[ch] = zero;
  for (int64_t i = 0; i < ph; ++i)
    for (int64_t j = 0; j < pw; ++j) {
      const T* __restrict d = dp + (i * pw + j) * c;
      const int64_t q = (2 * i) * w + 2 * j;
      const T* __restrict z00 = z + q * c;
      const T* __restrict z01 = z00 + c;
      const T* __restrict z10 = z00 + w * c;
      const T* __restrict z11 = z10 + c;
      T* __restrict o00 = g + q * c;
      T* __restrict o01 = o00 + c;
      T* __restrict o10 = o00 + w * c;
      T* __restrict o11 = o10 + c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const T dv = static_cast<T>(0.25) * d[ch];
        const T v00 = masked(z00[ch], dv, ch), v01 = masked(z01[ch], dv, ch);
        const T v10 = masked(z10[ch], dv, ch), v11 = masked(z11[ch], dv, ch);
        const T d00 = a[ch] * v00 + k1[ch] * z00[ch] + k0[ch];
        const T d01 = a[ch] * v01 + k1[ch] * z01[ch] + k0[ch];
        const T d10 = a[ch] * v10 + k1[ch] * z10[ch] + k0[ch];
        const T d11 = a[ch] * v11 + k1[ch] * z11[ch] + k0[ch];
        o00[ch] = d00;
        o01[ch] = d01;
        o10[ch] = d10;
        o11[ch] = d11;
        acc[ch] += (d00 + d10) + (d01 + d11);
      }
    }
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = (i < 2 * ph ? 2 * pw : 0); j < w; ++j) {
      const T* __restrict zq = z + (i * w + j) * c;
      T* __restrict oq = g + (i * w + j) * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        oq[ch] = k1[ch] * zq[ch] + k0[ch];
        acc[ch] += oq[ch];
      }
    }
  if (d_sum) std::copy(acc, acc + c, d_sum);
}

// Output pixels per register block of the direct conv: PB pixels x C channels of accumulators
// (16 vectors of floats at C = 32, 64 or 128), reused across every tap.
template <int C>
constexpr int conv_pixels() {
  return C == 32 ? 8 : C == 64 ? 4 : C == 128 ? 2 : 1;
}

// z (ho x wo pixels x c) = bias + the conv of the padded input planes xpad (cin x hp x wp) with wt
// (taps x c: the weight transposed so that a tap's c values are contiguous); sum (c) = the pixel
// sums of z, formed as the blocks are stored (the norm's mean without another pass; and a store
// loop the compiler cannot turn into a memmove of the register-held accumulators).
template <typename T, int K, int C>
void image_conv_nhwc(const T* __restrict xpad, const ConvShape& s, const T* __restrict wt,
                     const T* __restrict bias, T* __restrict z, T* __restrict sum) {
  const int64_t k = K ? K : s.k, c = C ? C : s.c;
  constexpr int PB = conv_pixels<C>();
  std::fill(sum, sum + c, static_cast<T>(0));
  // NB pixels from (i, j0): accumulators start at zero (bias added at the store: initialising
  // them from memory stalled on store forwarding), the row's sums go to rs
  auto block = [&](int64_t i, int64_t j0, auto nb_const, T* __restrict rs) {
    constexpr int NB = decltype(nb_const)::value;
    Scratch<T, NB * C> buf(NB * c);
    T* __restrict acc = buf.data();
    for (int64_t q = 0; q < NB * c; ++q) acc[q] = static_cast<T>(0);
    for (int64_t ci = 0; ci < s.cin; ++ci)
      for (int64_t kh = 0; kh < k; ++kh) {
        const T* __restrict src = xpad + (ci * s.hp + i + kh) * s.wp + j0;
        for (int64_t kw = 0; kw < k; ++kw) {
          const T* __restrict wv = wt + ((ci * k + kh) * k + kw) * c;
          for (int64_t pb = 0; pb < NB; ++pb) {
            const T xv = src[pb + kw];
#pragma omp simd
            for (int64_t ch = 0; ch < c; ++ch) acc[pb * c + ch] += wv[ch] * xv;
          }
        }
      }
    T* __restrict out = z + (i * s.wo + j0) * c;
    for (int64_t pb = 0; pb < NB; ++pb)
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        const T v = acc[pb * c + ch] + bias[ch];
        out[pb * c + ch] = v;
        rs[ch] += v;
      }
  };
  Scratch<T, C> row_sum(c);
  T* __restrict rs = row_sum.data();
  for (int64_t i = 0; i < s.ho; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) rs[ch] = static_cast<T>(0);
    int64_t j = 0;
    for (; j + PB <= s.wo; j += PB) block(i, j, std::integral_constant<int, PB>{}, rs);
    for (; j < s.wo; ++j) block(i, j, std::integral_constant<int, 1>{}, rs);
    for (int64_t ch = 0; ch < c; ++ch) sum[ch] += rs[ch];
  }
}

// The conv's weight gradient of one image from dz (pixels x c): out (taps x c), the taps'
// correlations of dz with the shifted input planes. Channels in blocks
// of 32 (their 9 taps' accumulators fit in registers), input channels one at a time.
template <typename T, int K, int C>
void image_conv_grad_nhwc(const T* __restrict xpad, const T* __restrict dz, const ConvShape& s,
                          T* __restrict out) {
  const int64_t k = K ? K : s.k, c = C ? C : s.c, taps = s.cin * k * k;
  constexpr int CB = C > 32 ? 32 : C;
  const int64_t cb_n = CB ? CB : c;
  Scratch<T, (K ? K * K : 0) * CB> buf(k * k * cb_n);
  T* __restrict acc = buf.data();
  for (int64_t ci = 0; ci < s.cin; ++ci)
    for (int64_t c0 = 0; c0 < c; c0 += cb_n) {
      std::fill(acc, acc + k * k * cb_n, static_cast<T>(0));
      for (int64_t i = 0; i < s.ho; ++i)
        for (int64_t j = 0; j < s.wo; ++j) {
          const T* __restrict d = dz + (i * s.wo + j) * c + c0;
          for (int64_t kh = 0; kh < k; ++kh) {
            const T* __restrict src = xpad + (ci * s.hp + i + kh) * s.wp + j;
            for (int64_t kw = 0; kw < k; ++kw) {
              const T xv = src[kw];
              T* __restrict a = acc + (kh * k + kw) * cb_n;
#pragma omp simd
              for (int64_t ch = 0; ch < cb_n; ++ch) a[ch] += d[ch] * xv;
            }
          }
        }
      for (int64_t t = 0; t < k * k; ++t)
        std::copy(acc + t * cb_n, acc + (t + 1) * cb_n, out + (ci * k * k + t) * c + c0);
    }
}

// The conv's kernel size as a compile-time constant for 3x3 convs, else 0.
template <typename F>
void dispatch_k(int64_t k, F&& body) {
  if (k == 3) return body(std::integral_constant<int, 3>{});
  return body(std::integral_constant<int, 0>{});
}

#ifdef LTDISTILL_POP_OPTIONS
#pragma GCC pop_options
#endif

// ================================================================= the operators
//
// z's layout decides the norm kernels' (channels_last: the NHWC loops; anything else is made
// NCHW-contiguous), and their outputs have it; the whole-block kernels read x NCHW (few channels)
// and write channels_last when asked.

// t as a tensor of ref's dtype in the layout of the kernels' loops
at::Tensor like_layout(const at::Tensor& t, const at::Tensor& ref, bool nhwc) {
  return nhwc ? t.to(ref.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast) : like(t, ref);
}

at::MemoryFormat format(bool nhwc) {
  return nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Whether an N x C x H x W tensor is laid out channels_last and not also NCHW-contiguous (one
// channel or one pixel: both layouts are the same memory, and the NCHW loops take it).
bool is_nhwc(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// ------------------------------------------------------------------ norm -> ReLU -> pool

std::tuple<at::Tensor, at::Tensor, at::Tensor> nrp_forward(const at::Tensor& z_in,
                                                           const at::Tensor& gamma_in,
                                                           const at::Tensor& beta_in,
                                                           double eps) {
  check_planes(z_in, "z");
  const bool nhwc = is_nhwc(z_in);
  auto z = nhwc ? z_in : z_in.contiguous();
  auto gamma = like(gamma_in, z);
  auto beta = like(beta_in, z);
  const int64_t n = z.size(0), c = z.size(1), h = z.size(2), w = z.size(3);
  const int64_t ph = h / 2, pw = w / 2;
  auto p = at::empty({n, c, ph, pw}, z.options(), format(nhwc));
  auto mean = at::empty({n, c}, z.options());
  auto rstd = at::empty({n, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nrp_forward", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    if (nhwc) {
      dispatch_channels(c, [&](auto c_const) {
        constexpr int C = decltype(c_const)::value;
        at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
          Buffer<scalar_t> ab(2 * c);
          for (int64_t img = begin; img < end; ++img) {
            const scalar_t* zi = zp + img * h * w * c;
            image_stats<scalar_t, C>(zi, h * w, c, eps, gp, bp, nullptr, mp + img * c,
                                     rp + img * c, ab.data(), ab.data() + c);
            image_pool_forward<scalar_t, C>(zi, w, ph, pw, c, ab.data(), ab.data() + c,
                                            pp + img * ph * pw * c);
          }
        });
      });
      return;
    }
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, h * w));
    dispatch_width(w, [&](auto w_const) {
      constexpr int W = decltype(w_const)::value;
      at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
        for (int64_t q = begin; q < end; ++q) {
          const scalar_t* zq = zp + q * h * w;
          auto st = plane_stats(zq, h * w, eps);
          const scalar_t a = gp[q % c] * st.rstd;
          const scalar_t b = bp[q % c] - st.mean * a;
          plane_forward<scalar_t, W>(zq, w, ph, pw, a, b, pp + q * ph * pw);
          mp[q] = st.mean;
          rp[q] = st.rstd;
        }
      });
    });
  });
  return {p, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nrp_backward(
    const at::Tensor& dp_in, const at::Tensor& z_in, const at::Tensor& gamma_in,
    const at::Tensor& beta_in, const at::Tensor& mean_in, const at::Tensor& rstd_in) {
  check_planes(z_in, "z");
  const bool nhwc = is_nhwc(z_in);
  auto z = nhwc ? z_in : z_in.contiguous();
  auto dp = like_layout(dp_in, z, nhwc);
  auto gamma = like(gamma_in, z);
  auto beta = like(beta_in, z);
  auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t n = z.size(0), c = z.size(1), h = z.size(2), w = z.size(3);
  const int64_t ph = h / 2, pw = w / 2;
  TORCH_CHECK(dp.size(0) == n && dp.size(1) == c && dp.size(2) == ph && dp.size(3) == pw,
              "the pooled gradient's shape does not match the block's output");
  auto dz = at::empty({n, c, h, w}, z.options(), format(nhwc));
  auto part = at::empty({n, 2, c}, z.options());  // [image][dgamma | dbeta][channel]
  auto dgamma = at::empty({c}, z.options());
  auto dbeta = at::empty({c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nrp_backward", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* dpp = dp.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* rp = rstd.data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* pa = part.data_ptr<scalar_t>();
    if (nhwc) {
      dispatch_channels(c, [&](auto c_const) {
        constexpr int C = decltype(c_const)::value;
        at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
          for (int64_t img = begin; img < end; ++img)
            image_backward<scalar_t, C>(zp + img * h * w * c, dpp + img * ph * pw * c, h, w, ph,
                                        pw, c, gp, mp + img * c, rp + img * c, bp,
                                        dzp + img * h * w * c, pa + img * 2 * c,
                                        pa + img * 2 * c + c, nullptr);
        });
      });
    } else {
      const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, h * w));
      dispatch_width(w, [&](auto w_const) {
        constexpr int W = decltype(w_const)::value;
        at::parallel_for(0, n * c, grain, [&](int64_t begin, int64_t end) {
          for (int64_t q = begin; q < end; ++q) {
            const int64_t img = q / c, ch = q % c;
            const scalar_t* zq = zp + q * h * w;
            scalar_t* g = dzp + q * h * w;
            Stats<scalar_t> st{mp[q], rp[q]};
            const scalar_t a = gp[ch] * st.rstd;
            const scalar_t b = bp[ch] - st.mean * a;
            auto [sg, sgz] = plane_relu_pool_grad<scalar_t, W>(zq, dpp + q * ph * pw, h, w, ph,
                                                               pw, a, b, g);
            plane_norm_grad(zq, g, h * w, st, gp[ch], sg, sgz, pa + img * 2 * c + ch,
                            pa + img * 2 * c + c + ch);
          }
        });
      });
    }
    std::vector<scalar_t> total(2 * c);
    sum_rows(pa, n, 2 * c, total.data());
    std::copy(total.begin(), total.begin() + c, dgamma.data_ptr<scalar_t>());
    std::copy(total.begin() + c, total.end(), dbeta.data_ptr<scalar_t>());
  });
  return {dz, dgamma, dbeta};
}

// ------------------------------------------------------- conv -> norm -> ReLU -> pool

// weight (c x taps) transposed to (taps x c), the NHWC conv's order
template <typename T>
std::vector<T> taps_major(const T* w, int64_t c, int64_t taps) {
  std::vector<T> t(taps * c);
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t q = 0; q < taps; ++q) t[q * c + ch] = w[ch * taps + q];
  return t;
}

// channels_last: the output in that layout (the next block's conv runs channels_last)
std::tuple<at::Tensor, at::Tensor, at::Tensor> cnrp_forward(
    const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    const at::Tensor& gamma_in, const at::Tensor& beta_in, int64_t pad, double eps,
    bool channels_last) {
  auto x = x_in.contiguous();
  const auto s = conv_shape(x, weight_in, pad);
  auto opt = x.options();
  auto weight = like(weight_in, x);
  auto bias = like(bias_in, x);
  auto gamma = like(gamma_in, x);
  auto beta = like(beta_in, x);
  auto p = at::empty({s.n, s.c, s.ph, s.pw}, opt, format(channels_last));
  auto mean = at::empty({s.n, s.c}, opt);
  auto rstd = at::empty({s.n, s.c}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnrp_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wt = weight.data_ptr<scalar_t>();
    const scalar_t* bs = bias.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
    if (channels_last) {
      const auto wtt = taps_major(wt, s.c, s.cin * s.k * s.k);
      dispatch_k(s.k, [&](auto k_const) {
        dispatch_channels(s.c, [&](auto c_const) {
          constexpr int K = decltype(k_const)::value, C = decltype(c_const)::value;
          at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
            Buffer<scalar_t> xpad(s.cin * s.hp * s.wp), z(s.ho * s.wo * s.c), ab(3 * s.c);
            scalar_t* sum = ab.data() + 2 * s.c;
            for (int64_t img = begin; img < end; ++img) {
              pad_image(xp + img * s.cin * s.h * s.w, s.cin, s.h, s.w, s.pad, xpad.data());
              image_conv_nhwc<scalar_t, K, C>(xpad.data(), s, wtt.data(), bs, z.data(), sum);
              image_stats<scalar_t, C>(z.data(), s.ho * s.wo, s.c, eps, gp, bp, sum,
                                       mp + img * s.c, rp + img * s.c, ab.data(),
                                       ab.data() + s.c);
              image_pool_forward<scalar_t, C>(z.data(), s.wo, s.ph, s.pw, s.c, ab.data(),
                                              ab.data() + s.c, pp + img * s.ph * s.pw * s.c);
            }
          });
        });
      });
      return;
    }
    dispatch_shape(s, [&](auto k_const, auto w_const) {
      constexpr int K = decltype(k_const)::value, W = decltype(w_const)::value;
      at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
        Buffer<scalar_t> xpad(s.cin * s.hp * s.wp), z(s.ho * s.wo);
        for (int64_t img = begin; img < end; ++img) {
          pad_image(xp + img * s.cin * s.h * s.w, s.cin, s.h, s.w, s.pad, xpad.data());
          for (int64_t ch = 0; ch < s.c; ++ch) {
            plane_conv<scalar_t, K, W>(xpad.data(), s.cin, s.hp, s.wp,
                                       wt + ch * s.cin * s.k * s.k, bs[ch], s.k, s.ho, s.wo,
                                       z.data());
            auto st = plane_stats(z.data(), s.ho * s.wo, eps);
            const scalar_t a = gp[ch] * st.rstd;
            const scalar_t b = bp[ch] - st.mean * a;
            const int64_t q = img * s.c + ch;
            plane_forward<scalar_t, W>(z.data(), s.wo, s.ph, s.pw, a, b, pp + q * s.ph * s.pw);
            mp[q] = st.mean;
            rp[q] = st.rstd;
          }
        }
      });
    });
  });
  return {p, mean, rstd};
}

// Gradients of the weight, bias, gamma and beta (the input's is not formed: the first block's
// input is data).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cnrp_backward(
    const at::Tensor& dp_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& bias_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, int64_t pad, bool channels_last) {
  auto x = x_in.contiguous();
  const auto s = conv_shape(x, weight_in, pad);
  auto opt = x.options();
  auto dp = like_layout(dp_in, x, channels_last);
  TORCH_CHECK(dp.size(0) == s.n && dp.size(1) == s.c && dp.size(2) == s.ph && dp.size(3) == s.pw,
              "the pooled gradient's shape does not match the block's output");
  auto weight = like(weight_in, x);
  auto bias = like(bias_in, x);
  auto gamma = like(gamma_in, x);
  auto beta = like(beta_in, x);
  auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t taps = s.cin * s.k * s.k;
  // per image: [dw taps | db | dgamma | dbeta], channel-major (NCHW loops) or channel-minor (NHWC)
  const int64_t per = s.c * (taps + 3);
  auto at_ = [&](int64_t ch, int64_t t) {
    return channels_last ? t * s.c + ch : ch * (taps + 3) + t;
  };
  auto part = at::empty({s.n, per}, opt);
  auto dweight = at::empty({s.c, s.cin, s.k, s.k}, opt);
  auto dbias = at::empty({s.c}, opt);
  auto dgamma = at::empty({s.c}, opt);
  auto dbeta = at::empty({s.c}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnrp_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dpp = dp.data_ptr<scalar_t>();
    const scalar_t* wt = weight.data_ptr<scalar_t>();
    const scalar_t* bs = bias.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    const scalar_t* mp = mean.data_ptr<scalar_t>();
    const scalar_t* rp = rstd.data_ptr<scalar_t>();
    scalar_t* pa = part.data_ptr<scalar_t>();
    const int64_t m = s.ho * s.wo;
    if (channels_last) {
      const auto wtt = taps_major(wt, s.c, taps);
      dispatch_k(s.k, [&](auto k_const) {
        dispatch_channels(s.c, [&](auto c_const) {
          constexpr int K = decltype(k_const)::value, C = decltype(c_const)::value;
          at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
            Buffer<scalar_t> xpad(s.cin * s.hp * s.wp), z(m * s.c), g(m * s.c), sum(s.c);
            for (int64_t img = begin; img < end; ++img) {
              pad_image(xp + img * s.cin * s.h * s.w, s.cin, s.h, s.w, s.pad, xpad.data());
              image_conv_nhwc<scalar_t, K, C>(xpad.data(), s, wtt.data(), bs, z.data(),
                                              sum.data());
              scalar_t* out = pa + img * per;
              image_backward<scalar_t, C>(z.data(), dpp + img * s.ph * s.pw * s.c, s.ho, s.wo,
                                          s.ph, s.pw, s.c, gp, mp + img * s.c, rp + img * s.c,
                                          bp, g.data(), out + (taps + 1) * s.c,
                                          out + (taps + 2) * s.c, out + taps * s.c);
              // g now holds dz: the conv's weight gradient is its correlation with the input
              image_conv_grad_nhwc<scalar_t, K, C>(xpad.data(), g.data(), s, out);
            }
          });
        });
      });
    } else {
      dispatch_shape(s, [&](auto k_const, auto w_const) {
        constexpr int K = decltype(k_const)::value, W = decltype(w_const)::value;
        at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
          Buffer<scalar_t> xpad(s.cin * s.hp * s.wp), z(m), g(m), acc((taps + 1) * s.wo);
          for (int64_t img = begin; img < end; ++img) {
            pad_image(xp + img * s.cin * s.h * s.w, s.cin, s.h, s.w, s.pad, xpad.data());
            for (int64_t ch = 0; ch < s.c; ++ch) {
              const int64_t q = img * s.c + ch;
              plane_conv<scalar_t, K, W>(xpad.data(), s.cin, s.hp, s.wp, wt + ch * taps, bs[ch],
                                         s.k, s.ho, s.wo, z.data());
              Stats<scalar_t> st{mp[q], rp[q]};
              const scalar_t a = gp[ch] * st.rstd;
              const scalar_t b = bp[ch] - st.mean * a;
              auto [sg, sgz] = plane_relu_pool_grad<scalar_t, W>(
                  z.data(), dpp + q * s.ph * s.pw, s.ho, s.wo, s.ph, s.pw, a, b, g.data());
              scalar_t* out = pa + img * per + ch * (taps + 3);
              plane_norm_grad(z.data(), g.data(), m, st, gp[ch], sg, sgz, out + taps + 1,
                              out + taps + 2);
              // g now holds dz: the conv's weight gradient is its correlation with the input.
              plane_conv_grad<scalar_t, K, W>(xpad.data(), g.data(), s, acc.data(), out);
            }
          }
        });
      });
    }
    std::vector<scalar_t> total(per);
    sum_rows(pa, s.n, per, total.data());
    scalar_t* dw = dweight.data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < s.c; ++ch) {
      for (int64_t t = 0; t < taps; ++t) dw[ch * taps + t] = total[at_(ch, t)];
      dbias.data_ptr<scalar_t>()[ch] = total[at_(ch, taps)];
      dgamma.data_ptr<scalar_t>()[ch] = total[at_(ch, taps + 1)];
      dbeta.data_ptr<scalar_t>()[ch] = total[at_(ch, taps + 2)];
    }
  });
  return {dweight, dbias, dgamma, dbeta};
}

}  // namespace

TORCH_LIBRARY(ltdistill_native, m) {
  m.def("nrp_forward(Tensor z, Tensor gamma, Tensor beta, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("nrp_backward(Tensor dp, Tensor z, Tensor gamma, Tensor beta, Tensor mean, Tensor rstd)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("cnrp_forward(Tensor x, Tensor weight, Tensor bias, Tensor gamma, Tensor beta, int pad,"
        " float eps, bool channels_last) -> (Tensor, Tensor, Tensor)");
  m.def("cnrp_backward(Tensor dp, Tensor x, Tensor weight, Tensor bias, Tensor gamma,"
        " Tensor beta, Tensor mean, Tensor rstd, int pad, bool channels_last)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ltdistill_native, CPU, m) {
  m.impl("nrp_forward", nrp_forward);
  m.impl("nrp_backward", nrp_backward);
  m.impl("cnrp_forward", cnrp_forward);
  m.impl("cnrp_backward", cnrp_backward);
}
