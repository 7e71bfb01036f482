// The test-side model of msda: dtype conversions, a plain fp64 reference of the forward and
// backward, and the error bounds the library's results are compared against.
//
// Nothing here includes library internals: the reference is written from the semantics in
// include/msda/msda.h (Deformable DETR bilinear sampling, zero padding, align_corners=False)
// as a direct loop, so that a bug shared with the library's own helpers cannot hide.
//
// Error bounds. The library computes in fp32 (fp64 for FLOAT64 problems) and rounds once when
// it stores an output. With u the unit roundoff of that arithmetic (2^-24 or 2^-53) every
// bound below is a first-order forward-error bound of the computation the semantics describe,
// whatever order the library sums in:
//   * a sum of N products has error <= (N + c) u * sum |term| (the classic gamma_N bound);
//   * the sampling coordinate h_im = y * H_l - 0.5 is itself rounded: its error is at most
//     e_h = u (2 H_l + 4) inside the gate (|h_im| < H_l + 1), and it moves a bilinear weight by
//     at most e_h (resp. e_w), which moves a result by (sensitivity to the fraction) * e_h;
//   * storing into the output dtype adds u(dtype) |result| (plus half the smallest subnormal
//     for underflow).
// The reference runs in fp64 on exactly the values the library reads (inputs are rounded to
// their storage dtype first; half types are compared against a reference computed from the
// rounded inputs), so its own error is the same bound with u = 2^-53, added in. A factor
// kBoundSafety covers second-order terms. A wrong corner, weight, stride or missed term is
// O(1) relative to sum |term| and fails by orders of magnitude.
#ifndef MSDA_TESTS_CPP_REFERENCE_H_
#define MSDA_TESTS_CPP_REFERENCE_H_

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "msda/msda.h"

namespace msda_test {

// ---------------------------------------------------------------------------------------------
// Storage types. Written from the IEEE formats, independently of the library's conversions:
// rounding is done on the exact double value with std::nearbyint (ties to even).

inline float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t BitsFromFloat(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float HalfToFloat(uint16_t h) {
  const bool negative = (h & 0x8000u) != 0;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  float magnitude;
  if (exponent == 0x1F) {
    magnitude = mantissa != 0 ? std::numeric_limits<float>::quiet_NaN()
                              : std::numeric_limits<float>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return negative ? -magnitude : magnitude;
}

inline uint16_t FloatToHalf(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  if (std::isnan(f)) return sign | 0x7E00u;
  const double a = std::fabs(static_cast<double>(f));
  // 65520 is halfway between the largest half (65504) and 2^16: it and above round to Inf.
  if (a >= 65520.0) return sign | 0x7C00u;
  int exp2;
  std::frexp(a, &exp2);  // a = m * 2^exp2, m in [0.5, 1)
  // The spacing of halves around a: 2^(exp2 - 11) for normals, 2^-24 for subnormals.
  const double quantum =
      a >= std::ldexp(1.0, -14) ? std::ldexp(1.0, exp2 - 11) : std::ldexp(1.0, -24);
  const double rounded = std::nearbyint(a / quantum) * quantum;
  if (rounded < std::ldexp(1.0, -14)) {
    return sign | static_cast<uint16_t>(rounded / std::ldexp(1.0, -24));  // 1024 encodes 2^-14
  }
  std::frexp(rounded, &exp2);
  const int biased = exp2 - 1 + 15;
  const double mantissa = rounded / std::ldexp(1.0, exp2 - 1) - 1.0;  // [0, 1)
  return sign | static_cast<uint16_t>(biased << 10) |
         static_cast<uint16_t>(std::lround(mantissa * 1024.0));
}

inline float BFloat16ToFloat(uint16_t b) { return FloatFromBits(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBFloat16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000u : 0u;
  if (std::isnan(f)) return sign | 0x7FC0u;
  if (std::isinf(f)) return sign | 0x7F80u;
  const double a = std::fabs(static_cast<double>(f));
  if (a == 0.0) return sign;
  int exp2;
  std::frexp(a, &exp2);
  // 8 significant bits for normals; subnormals share fp32's exponent floor (spacing 2^-133).
  const double quantum =
      a >= std::ldexp(1.0, -126) ? std::ldexp(1.0, exp2 - 8) : std::ldexp(1.0, -133);
  const double rounded = std::nearbyint(a / quantum) * quantum;
  if (rounded >= std::ldexp(1.0, 128)) return sign | 0x7F80u;
  // rounded has at most 8 significant bits, so it is a float whose low 16 bits are zero.
  return sign | static_cast<uint16_t>(BitsFromFloat(static_cast<float>(rounded)) >> 16);
}

inline int64_t ElementBytes(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT16:
    case MSDA_BFLOAT16:
      return 2;
    case MSDA_FLOAT32:
    case MSDA_INT32:
      return 4;
    case MSDA_FLOAT64:
    case MSDA_INT64:
      return 8;
  }
  return 0;
}

inline const char* DtypeName(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT32:
      return "F32";
    case MSDA_FLOAT16:
      return "F16";
    case MSDA_BFLOAT16:
      return "BF16";
    case MSDA_FLOAT64:
      return "F64";
    case MSDA_INT32:
      return "I32";
    case MSDA_INT64:
      return "I64";
  }
  return "UNKNOWN";
}

// Reads / writes one element of the given dtype at p (no alignment assumed).
inline double LoadElement(const void* p, msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case MSDA_FLOAT64: {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    case MSDA_FLOAT16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return HalfToFloat(v);
    }
    case MSDA_BFLOAT16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return BFloat16ToFloat(v);
    }
    case MSDA_INT32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case MSDA_INT64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return static_cast<double>(v);
    }
  }
  return 0;
}

inline void StoreElement(void* p, msdaDataType dtype, double value) {
  switch (dtype) {
    case MSDA_FLOAT32: {
      const float v = static_cast<float>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case MSDA_FLOAT64:
      std::memcpy(p, &value, 8);
      return;
    case MSDA_FLOAT16: {
      const uint16_t v = FloatToHalf(static_cast<float>(value));
      std::memcpy(p, &v, 2);
      return;
    }
    case MSDA_BFLOAT16: {
      const uint16_t v = FloatToBFloat16(static_cast<float>(value));
      std::memcpy(p, &v, 2);
      return;
    }
    case MSDA_INT32: {
      const int32_t v = static_cast<int32_t>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case MSDA_INT64: {
      const int64_t v = static_cast<int64_t>(value);
      std::memcpy(p, &v, 8);
      return;
    }
  }
}

// The value the dtype stores for `value`.
inline double RoundTo(msdaDataType dtype, double value) {
  unsigned char bytes[8];
  StoreElement(bytes, dtype, value);
  return LoadElement(bytes, dtype);
}

// Unit roundoff of a storage dtype (half the distance from 1 to the next value).
inline double UnitRoundoff(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT16:
      return std::ldexp(1.0, -11);
    case MSDA_BFLOAT16:
      return std::ldexp(1.0, -8);
    case MSDA_FLOAT32:
      return std::ldexp(1.0, -24);
    case MSDA_FLOAT64:
      return std::ldexp(1.0, -53);
    default:
      return 0;
  }
}
// Half the smallest positive subnormal: the absolute error of storing a tiny result.
inline double UnderflowFloor(msdaDataType dtype) {
  switch (dtype) {
    case MSDA_FLOAT16:
      return std::ldexp(1.0, -25);
    case MSDA_BFLOAT16:
      return std::ldexp(1.0, -134);
    case MSDA_FLOAT32:
      return std::ldexp(1.0, -150);
    default:
      return 0;
  }
}
// The unit roundoff of the library's arithmetic for a value dtype: fp32, or fp64 for FLOAT64.
// The reference's own fp64 error is added in.
inline double ArithmeticRoundoff(msdaDataType value_dtype) {
  const double u64 = std::ldexp(1.0, -53);
  return (value_dtype == MSDA_FLOAT64 ? u64 : std::ldexp(1.0, -24)) + u64;
}

constexpr double kBoundSafety = 2.0;

// ---------------------------------------------------------------------------------------------
// Problem sizes and logical (row-major, contiguous) fp64 tensors.

struct Problem {
  int64_t batch = 1;
  int64_t queries = 4;
  int64_t heads = 2;
  int64_t dims = 4;
  int64_t points = 2;
  std::vector<std::array<int64_t, 2>> levels = {{4, 5}, {2, 3}};  // (H_l, W_l)

  int64_t num_levels() const { return static_cast<int64_t>(levels.size()); }
  int64_t keys() const {
    int64_t k = 0;
    for (const auto& level : levels) k += level[0] * level[1];
    return k;
  }
  std::vector<int64_t> level_start() const {
    std::vector<int64_t> s;
    int64_t k = 0;
    for (const auto& level : levels) {
      s.push_back(k);
      k += level[0] * level[1];
    }
    return s;
  }
  std::vector<int64_t> value_dims() const { return {batch, keys(), heads, dims}; }
  std::vector<int64_t> loc_dims() const { return {batch, queries, heads, num_levels(), points, 2}; }
  std::vector<int64_t> attn_dims() const { return {batch, queries, heads, num_levels(), points}; }
  std::vector<int64_t> out_dims() const { return {batch, queries, heads * dims}; }

  int64_t value_index(int64_t b, int64_t k, int64_t h, int64_t d) const {
    return ((b * keys() + k) * heads + h) * dims + d;
  }
  int64_t attn_index(int64_t b, int64_t q, int64_t h, int64_t l, int64_t p) const {
    return (((b * queries + q) * heads + h) * num_levels() + l) * points + p;
  }
  int64_t loc_index(int64_t b, int64_t q, int64_t h, int64_t l, int64_t p, int64_t c) const {
    return attn_index(b, q, h, l, p) * 2 + c;
  }
  int64_t out_index(int64_t b, int64_t q, int64_t h, int64_t d) const {
    return (b * queries + q) * heads * dims + h * dims + d;
  }
};

inline int64_t NumElements(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// "[b, q, ...]" for a row-major index.
inline std::string IndexString(int64_t index, const std::vector<int64_t>& dims) {
  std::vector<int64_t> idx(dims.size());
  for (size_t i = dims.size(); i-- > 0;) {
    idx[i] = dims[i] > 0 ? index % dims[i] : 0;
    index = dims[i] > 0 ? index / dims[i] : 0;
  }
  std::string s = "[";
  for (size_t i = 0; i < idx.size(); ++i) s += (i ? ", " : "") + std::to_string(idx[i]);
  return s + "]";
}

struct Inputs {
  std::vector<double> value;     // [B, K, H, D]
  std::vector<double> loc;       // [B, Q, H, L, P, 2]
  std::vector<double> attn;      // [B, Q, H, L, P]
  std::vector<double> grad_out;  // [B, Q, H * D]
};

// ---------------------------------------------------------------------------------------------
// The fp64 reference.

struct Geometry {
  bool inside = false;
  int64_t h0 = 0, w0 = 0;
  double lh = 0, lw = 0;
};

// The sampling point of normalised (x, y) on a level of height H and width W.
inline Geometry Locate(int64_t H, int64_t W, double x, double y) {
  Geometry g;
  const double h_im = y * static_cast<double>(H) - 0.5;
  const double w_im = x * static_cast<double>(W) - 0.5;
  // Strict gate; NaN compares false and fails it, and so does +-Inf.
  if (!(h_im > -1.0 && h_im < static_cast<double>(H) && w_im > -1.0 &&
        w_im < static_cast<double>(W))) {
    return g;
  }
  g.inside = true;
  const double hf = std::floor(h_im), wf = std::floor(w_im);
  g.h0 = static_cast<int64_t>(hf);
  g.w0 = static_cast<int64_t>(wf);
  g.lh = h_im - hf;
  g.lw = w_im - wf;
  return g;
}

// Corner c in 0..3 of a located point: (h0, w0), (h0, w0 + 1), (h0 + 1, w0), (h0 + 1, w0 + 1).
struct Corner {
  bool in_map;
  int64_t key;  // Row of value's keys dimension (valid if in_map).
  double weight;
};
inline Corner CornerOf(const Geometry& g, int c, int64_t H, int64_t W, int64_t level_start) {
  const int64_t dh = c / 2, dw = c % 2;
  const int64_t hh = g.h0 + dh, ww = g.w0 + dw;
  Corner corner;
  corner.in_map = hh >= 0 && hh < H && ww >= 0 && ww < W;
  corner.key = level_start + hh * W + ww;
  corner.weight = (dh ? g.lh : 1.0 - g.lh) * (dw ? g.lw : 1.0 - g.lw);
  return corner;
}

struct ForwardResult {
  std::vector<double> out;    // [B, Q, H * D]
  std::vector<double> bound;  // Arithmetic error bound per element (storage rounding excluded).
};

// out[b, q, h*D + d] = sum over (l, p) of A * bilinear(value)[d]; u: ArithmeticRoundoff.
inline ForwardResult ReferenceForward(const Problem& p, const Inputs& in, double u) {
  ForwardResult r;
  const int64_t D = p.dims, L = p.num_levels();
  r.out.assign(NumElements(p.out_dims()), 0.0);
  r.bound.assign(r.out.size(), 0.0);
  const std::vector<int64_t> starts = p.level_start();
  std::vector<double> acc(D), mag(D), crd(D);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t q = 0; q < p.queries; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0);
        std::fill(mag.begin(), mag.end(), 0.0);
        std::fill(crd.begin(), crd.end(), 0.0);
        for (int64_t l = 0; l < L; ++l) {
          const int64_t Hl = p.levels[l][0], Wl = p.levels[l][1];
          const double e_coord = u * (2.0 * static_cast<double>(Hl + Wl) + 8.0);
          for (int64_t pt = 0; pt < p.points; ++pt) {
            const double x = in.loc[p.loc_index(b, q, h, l, pt, 0)];
            const double y = in.loc[p.loc_index(b, q, h, l, pt, 1)];
            const double a = in.attn[p.attn_index(b, q, h, l, pt)];
            const Geometry g = Locate(Hl, Wl, x, y);
            if (!g.inside) continue;
            Corner corners[4];
            for (int c = 0; c < 4; ++c) corners[c] = CornerOf(g, c, Hl, Wl, starts[l]);
            for (int64_t d = 0; d < D; ++d) {
              double max_v = 0;
              for (const Corner& c : corners) {
                if (!c.in_map) continue;
                const double v = in.value[p.value_index(b, c.key, h, d)];
                acc[d] += a * c.weight * v;
                mag[d] += std::fabs(a) * c.weight * std::fabs(v);
                max_v = std::max(max_v, std::fabs(v));
              }
              // d out / d(fraction) is at most 2 |A| max |v|.
              crd[d] += 2.0 * std::fabs(a) * max_v * e_coord;
            }
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          const int64_t o = p.out_index(b, q, h, d);
          r.out[o] = acc[d];
          r.bound[o] =
              kBoundSafety * (u * static_cast<double>(4 * L * p.points + 8) * mag[d] + crd[d]);
        }
      }
    }
  }
  return r;
}

struct BackwardResult {
  std::vector<double> grad_value, bound_value;  // [B, K, H, D]
  std::vector<double> grad_loc, bound_loc;      // [B, Q, H, L, P, 2]
  std::vector<double> grad_attn, bound_attn;    // [B, Q, H, L, P]
};

inline BackwardResult ReferenceBackward(const Problem& p, const Inputs& in, double u) {
  BackwardResult r;
  const int64_t D = p.dims, L = p.num_levels(), K = p.keys();
  r.grad_value.assign(NumElements(p.value_dims()), 0.0);
  r.bound_value.assign(r.grad_value.size(), 0.0);
  r.grad_loc.assign(NumElements(p.loc_dims()), 0.0);
  r.bound_loc.assign(r.grad_loc.size(), 0.0);
  r.grad_attn.assign(NumElements(p.attn_dims()), 0.0);
  r.bound_attn.assign(r.grad_attn.size(), 0.0);
  // For grad_value: sum |term|, coordinate sensitivity, and the number of terms per row.
  std::vector<double> gv_mag(r.grad_value.size(), 0.0), gv_crd(r.grad_value.size(), 0.0);
  std::vector<int64_t> gv_count(static_cast<size_t>(p.batch * K * p.heads), 0);
  const std::vector<int64_t> starts = p.level_start();
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t q = 0; q < p.queries; ++q) {
      for (int64_t h = 0; h < p.heads; ++h) {
        const double* g = &in.grad_out[p.out_index(b, q, h, 0)];
        for (int64_t l = 0; l < L; ++l) {
          const int64_t Hl = p.levels[l][0], Wl = p.levels[l][1];
          const double e_h = u * (2.0 * static_cast<double>(Hl) + 4.0);
          const double e_w = u * (2.0 * static_cast<double>(Wl) + 4.0);
          for (int64_t pt = 0; pt < p.points; ++pt) {
            const double x = in.loc[p.loc_index(b, q, h, l, pt, 0)];
            const double y = in.loc[p.loc_index(b, q, h, l, pt, 1)];
            const double a = in.attn[p.attn_index(b, q, h, l, pt)];
            const Geometry geo = Locate(Hl, Wl, x, y);
            if (!geo.inside) continue;  // Zero gradients, zero bounds.
            double dot[4] = {0, 0, 0, 0}, absdot[4] = {0, 0, 0, 0};
            Corner corners[4];
            for (int c = 0; c < 4; ++c) {
              corners[c] = CornerOf(geo, c, Hl, Wl, starts[l]);
              if (!corners[c].in_map) continue;
              for (int64_t d = 0; d < D; ++d) {
                const double v = in.value[p.value_index(b, corners[c].key, h, d)];
                dot[c] += g[d] * v;
                absdot[c] += std::fabs(g[d] * v);
              }
              const int64_t row = (b * K + corners[c].key) * p.heads + h;
              ++gv_count[row];
              for (int64_t d = 0; d < D; ++d) {
                const int64_t i = row * D + d;
                r.grad_value[i] += corners[c].weight * a * g[d];
                gv_mag[i] += std::fabs(corners[c].weight * a * g[d]);
                gv_crd[i] += std::fabs(a * g[d]) * (e_h + e_w);
              }
            }
            const double lh = geo.lh, lw = geo.lw;
            double grad_a = 0, weighted_abs = 0, max_abs = 0, sum_abs = 0;
            for (int c = 0; c < 4; ++c) {
              grad_a += corners[c].weight * dot[c];
              weighted_abs += corners[c].weight * absdot[c];
              max_abs = std::max(max_abs, absdot[c]);
              sum_abs += absdot[c];
            }
            const double gx = static_cast<double>(Wl) * a *
                              ((1.0 - lh) * (dot[1] - dot[0]) + lh * (dot[3] - dot[2]));
            const double gy = static_cast<double>(Hl) * a *
                              ((1.0 - lw) * (dot[2] - dot[0]) + lw * (dot[3] - dot[1]));
            const double dd = static_cast<double>(D);
            const int64_t ia = p.attn_index(b, q, h, l, pt);
            r.grad_attn[ia] = grad_a;
            r.bound_attn[ia] =
                kBoundSafety * (u * (dd + 16.0) * weighted_abs + 2.0 * max_abs * (e_h + e_w));
            r.grad_loc[ia * 2 + 0] = gx;
            r.bound_loc[ia * 2 + 0] = kBoundSafety * static_cast<double>(Wl) * std::fabs(a) *
                                      (u * (dd + 24.0) + e_h) * sum_abs;
            r.grad_loc[ia * 2 + 1] = gy;
            r.bound_loc[ia * 2 + 1] = kBoundSafety * static_cast<double>(Hl) * std::fabs(a) *
                                      (u * (dd + 24.0) + e_w) * sum_abs;
          }
        }
      }
    }
  }
  for (size_t i = 0; i < r.grad_value.size(); ++i) {
    const double n = static_cast<double>(gv_count[i / static_cast<size_t>(D)]);
    r.bound_value[i] = kBoundSafety * (u * (n + 8.0) * gv_mag[i] + gv_crd[i]);
  }
  return r;
}

}  // namespace msda_test

#endif  // MSDA_TESTS_CPP_REFERENCE_H_
