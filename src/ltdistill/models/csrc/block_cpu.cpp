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

// ------------------------------------------------------------------ norm -> ReLU -> pool

std::tuple<at::Tensor, at::Tensor, at::Tensor> nrp_forward(const at::Tensor& z_in,
                                                           const at::Tensor& gamma_in,
                                                           const at::Tensor& beta_in,
                                                           double eps) {
  check_planes(z_in, "z");
  auto z = z_in.contiguous();
  auto gamma = like(gamma_in, z);
  auto beta = like(beta_in, z);
  const int64_t n = z.size(0), c = z.size(1), h = z.size(2), w = z.size(3);
  const int64_t ph = h / 2, pw = w / 2;
  auto p = at::empty({n, c, ph, pw}, z.options());
  auto mean = at::empty({n, c}, z.options());
  auto rstd = at::empty({n, c}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "nrp_forward", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* gp = gamma.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* rp = rstd.data_ptr<scalar_t>();
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
  auto z = z_in.contiguous();
  auto dp = like(dp_in, z);
  auto gamma = like(gamma_in, z);
  auto beta = like(beta_in, z);
  auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t n = z.size(0), c = z.size(1), h = z.size(2), w = z.size(3);
  const int64_t ph = h / 2, pw = w / 2;
  TORCH_CHECK(dp.size(0) == n && dp.size(1) == c && dp.size(2) == ph && dp.size(3) == pw,
              "the pooled gradient's shape does not match the block's output");
  auto dz = at::empty_like(z);
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
          auto [sg, sgz] = plane_relu_pool_grad<scalar_t, W>(zq, dpp + q * ph * pw, h, w, ph, pw,
                                                             a, b, g);
          plane_norm_grad(zq, g, h * w, st, gp[ch], sg, sgz, pa + img * 2 * c + ch,
                          pa + img * 2 * c + c + ch);
        }
      });
    });
    std::vector<scalar_t> total(2 * c);
    sum_rows(pa, n, 2 * c, total.data());
    std::copy(total.begin(), total.begin() + c, dgamma.data_ptr<scalar_t>());
    std::copy(total.begin() + c, total.end(), dbeta.data_ptr<scalar_t>());
  });
  return {dz, dgamma, dbeta};
}

// ------------------------------------------------------- conv -> norm -> ReLU -> pool

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> cnrp_forward(
    const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    const at::Tensor& gamma_in, const at::Tensor& beta_in, int64_t pad, double eps) {
  auto x = x_in.contiguous();
  const auto s = conv_shape(x, weight_in, pad);
  auto opt = x.options();
  auto weight = like(weight_in, x);
  auto bias = like(bias_in, x);
  auto gamma = like(gamma_in, x);
  auto beta = like(beta_in, x);
  auto p = at::empty({s.n, s.c, s.ph, s.pw}, opt);
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
    auto body = [&](auto k_const, auto w_const) {
      constexpr int K = decltype(k_const)::value, W = decltype(w_const)::value;
      at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> xpad(s.cin * s.hp * s.wp), z(s.ho * s.wo);
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
    };
    dispatch_shape(s, body);
  });
  return {p, mean, rstd};
}

// Gradients of the weight, bias, gamma and beta (the input's is not formed: the first block's
// input is data).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cnrp_backward(
    const at::Tensor& dp_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const at::Tensor& bias_in, const at::Tensor& gamma_in, const at::Tensor& beta_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, int64_t pad) {
  auto x = x_in.contiguous();
  const auto s = conv_shape(x, weight_in, pad);
  auto opt = x.options();
  auto dp = like(dp_in, x);
  TORCH_CHECK(dp.size(0) == s.n && dp.size(1) == s.c && dp.size(2) == s.ph && dp.size(3) == s.pw,
              "the pooled gradient's shape does not match the block's output");
  auto weight = like(weight_in, x);
  auto bias = like(bias_in, x);
  auto gamma = like(gamma_in, x);
  auto beta = like(beta_in, x);
  auto mean = mean_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t taps = s.cin * s.k * s.k;
  const int64_t per = s.c * (taps + 3);  // [dw taps | db | dgamma | dbeta] per channel
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
    auto body = [&](auto k_const, auto w_const) {
      constexpr int K = decltype(k_const)::value, W = decltype(w_const)::value;
      at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> xpad(s.cin * s.hp * s.wp), z(m), g(m),
            acc((taps + 1) * s.wo);
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
    };
    dispatch_shape(s, body);
    std::vector<scalar_t> total(per);
    sum_rows(pa, s.n, per, total.data());
    scalar_t* dw = dweight.data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const scalar_t* t = total.data() + ch * (taps + 3);
      std::copy(t, t + taps, dw + ch * taps);
      dbias.data_ptr<scalar_t>()[ch] = t[taps];
      dgamma.data_ptr<scalar_t>()[ch] = t[taps + 1];
      dbeta.data_ptr<scalar_t>()[ch] = t[taps + 2];
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
        " float eps) -> (Tensor, Tensor, Tensor)");
  m.def("cnrp_backward(Tensor dp, Tensor x, Tensor weight, Tensor bias, Tensor gamma,"
        " Tensor beta, Tensor mean, Tensor rstd, int pad) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ltdistill_native, CPU, m) {
  m.impl("nrp_forward", nrp_forward);
  m.impl("nrp_backward", nrp_backward);
  m.impl("cnrp_forward", cnrp_forward);
  m.impl("cnrp_backward", cnrp_backward);
}
