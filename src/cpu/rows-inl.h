// Per-target SIMD row primitives shared by the forward and backward kernels. This file is
// included once per instruction set by a file that includes hwy/foreach_target.h (Highway's
// pattern), so everything here lives in the per-target namespace HWY_NAMESPACE.
//
// Rows are D contiguous elements (dims stride 1) of a storage type T: float, double, or the
// half types, which are widened to fp32 in registers. Callers take the scalar path of
// sampling.h for views whose dims stride is not 1.
//
// Sums over corners and over dims run in a fixed order that does not depend on the thread
// count, so results are reproducible run to run. They differ between instruction sets
// (vector width changes how a dot product is split into partial sums; see docs/semantics.md).

// Per-target include guard: foreach_target toggles HWY_TARGET_TOGGLE between passes.
#if defined(MSDA_SRC_CPU_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef MSDA_SRC_CPU_ROWS_INL_H_
#undef MSDA_SRC_CPU_ROWS_INL_H_
#else
#define MSDA_SRC_CPU_ROWS_INL_H_
#endif

#include <cstdint>
#include <type_traits>

#include "cpu/numeric.h"
#include "cpu/prefetch.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace msda {
namespace cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Loads Lanes(d) elements of a row and widens them to the accumulation type.
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const double* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const Half* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  const auto h = hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p));
#if (HWY_ARCH_X86 && HWY_TARGET >= HWY_SSE4) || HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
  // Without a conversion instruction (x86 before F16C, the scalar targets) Highway 1.0's
  // PromoteTo rebiases every exponent, so infinities and NaNs come out finite (+inf as 65536):
  // those lanes are rebuilt here from their bits.
  const hn::RebindToUnsigned<D> du;
  const hn::Rebind<uint16_t, D> du16;
  const auto bits = hn::PromoteTo(du, hn::BitCast(du16, h));
  const auto exponent = hn::And(bits, hn::Set(du, 0x7C00u));
  const auto special = hn::Or(
      hn::ShiftLeft<16>(hn::And(bits, hn::Set(du, 0x8000u))),
      hn::Or(hn::Set(du, 0x7F800000u), hn::ShiftLeft<13>(hn::And(bits, hn::Set(du, 0x3FFu)))));
  return hn::IfThenElse(hn::RebindMask(d, hn::Eq(exponent, hn::Set(du, 0x7C00u))),
                        hn::BitCast(d, special), hn::PromoteTo(d, h));
#else
  return hn::PromoteTo(d, h);
#endif
}
template <class D>
HWY_INLINE hn::Vec<D> LoadRow(D d, const BFloat16* HWY_RESTRICT p) {
  const hn::Rebind<hwy::bfloat16_t, D> db;
  return hn::PromoteTo(d, hn::LoadU(db, reinterpret_cast<const hwy::bfloat16_t*>(p)));
}

// out[k] = sum over corners i of weights[i] * row_i[k], k < dims, row_i = base + offsets[i] *
// scale (element offsets with scale 1, or key rows with scale = the keys stride).
//
// The accumulators stay in registers across all corners (this is where a plain loop loses:
// compilers keep a runtime-length accumulator in memory). Corners alternate between two
// accumulator sets so that consecutive FMAs do not wait on each other; the sets are added at
// the end, in the same order on every target and in the scalar tail.
//
// `ahead` (a RowPrefetch, or NoRowPrefetch) is asked for the rows of the next corner list, two
// for every pair of corners of the first sweep over them, the rest at the end; it changes no
// result.
struct NoRowPrefetch {
  void Fetch(int64_t) const {}
  void FetchFrom(int64_t) const {}
};

template <typename T, typename Acc, typename Index, typename Ahead = NoRowPrefetch>
HWY_INLINE void GatherRows(const T* HWY_RESTRICT base, const Index* HWY_RESTRICT offsets,
                           int64_t scale, const Acc* HWY_RESTRICT weights, int64_t count,
                           int64_t dims, Acc* HWY_RESTRICT out, const Ahead& ahead = Ahead()) {
  const hn::ScalableTag<Acc> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  int64_t k = 0;
  int64_t fetched = 0;  // Rows of `ahead` asked for so far.
  for (; k + 4 * n <= dims; k += 4 * n) {
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    auto b0 = hn::Zero(d), b1 = hn::Zero(d), b2 = hn::Zero(d), b3 = hn::Zero(d);
    int64_t i = 0;
    for (; i + 2 <= count; i += 2) {
      if (k == 0) {
        ahead.Fetch(i);
        ahead.Fetch(i + 1);
      }
      const T* r = base + int64_t{offsets[i]} * scale + k;
      const T* s = base + int64_t{offsets[i + 1]} * scale + k;
      const auto w = hn::Set(d, weights[i]);
      const auto v = hn::Set(d, weights[i + 1]);
      a0 = hn::MulAdd(w, LoadRow(d, r), a0);
      b0 = hn::MulAdd(v, LoadRow(d, s), b0);
      a1 = hn::MulAdd(w, LoadRow(d, r + n), a1);
      b1 = hn::MulAdd(v, LoadRow(d, s + n), b1);
      a2 = hn::MulAdd(w, LoadRow(d, r + 2 * n), a2);
      b2 = hn::MulAdd(v, LoadRow(d, s + 2 * n), b2);
      a3 = hn::MulAdd(w, LoadRow(d, r + 3 * n), a3);
      b3 = hn::MulAdd(v, LoadRow(d, s + 3 * n), b3);
    }
    if (i < count) {
      const T* r = base + int64_t{offsets[i]} * scale + k;
      const auto w = hn::Set(d, weights[i]);
      a0 = hn::MulAdd(w, LoadRow(d, r), a0);
      a1 = hn::MulAdd(w, LoadRow(d, r + n), a1);
      a2 = hn::MulAdd(w, LoadRow(d, r + 2 * n), a2);
      a3 = hn::MulAdd(w, LoadRow(d, r + 3 * n), a3);
    }
    hn::StoreU(hn::Add(a0, b0), d, out + k);
    hn::StoreU(hn::Add(a1, b1), d, out + k + n);
    hn::StoreU(hn::Add(a2, b2), d, out + k + 2 * n);
    hn::StoreU(hn::Add(a3, b3), d, out + k + 3 * n);
    if (k == 0) fetched = i;
  }
  for (; k + 2 * n <= dims; k += 2 * n) {  // D = 32 on AVX-512: one sweep over the corners.
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), b0 = hn::Zero(d), b1 = hn::Zero(d);
    int64_t i = 0;
    for (; i + 2 <= count; i += 2) {
      if (k == 0) {
        ahead.Fetch(i);
        ahead.Fetch(i + 1);
      }
      const T* r = base + int64_t{offsets[i]} * scale + k;
      const T* s = base + int64_t{offsets[i + 1]} * scale + k;
      const auto w = hn::Set(d, weights[i]);
      const auto v = hn::Set(d, weights[i + 1]);
      a0 = hn::MulAdd(w, LoadRow(d, r), a0);
      b0 = hn::MulAdd(v, LoadRow(d, s), b0);
      a1 = hn::MulAdd(w, LoadRow(d, r + n), a1);
      b1 = hn::MulAdd(v, LoadRow(d, s + n), b1);
    }
    if (i < count) {
      const T* r = base + int64_t{offsets[i]} * scale + k;
      const auto w = hn::Set(d, weights[i]);
      a0 = hn::MulAdd(w, LoadRow(d, r), a0);
      a1 = hn::MulAdd(w, LoadRow(d, r + n), a1);
    }
    hn::StoreU(hn::Add(a0, b0), d, out + k);
    hn::StoreU(hn::Add(a1, b1), d, out + k + n);
    if (k == 0) fetched = i;
  }
  for (; k + n <= dims; k += n) {
    auto a = hn::Zero(d), b = hn::Zero(d);
    int64_t i = 0;
    for (; i + 2 <= count; i += 2) {
      if (k == 0) {
        ahead.Fetch(i);
        ahead.Fetch(i + 1);
      }
      a = hn::MulAdd(hn::Set(d, weights[i]), LoadRow(d, base + int64_t{offsets[i]} * scale + k), a);
      b = hn::MulAdd(hn::Set(d, weights[i + 1]),
                     LoadRow(d, base + int64_t{offsets[i + 1]} * scale + k), b);
    }
    if (i < count)
      a = hn::MulAdd(hn::Set(d, weights[i]), LoadRow(d, base + int64_t{offsets[i]} * scale + k), a);
    hn::StoreU(hn::Add(a, b), d, out + k);
    if (k == 0) fetched = i;
  }
  ahead.FetchFrom(fetched);
  for (; k < dims; ++k) {
    Acc a = 0, b = 0;
    int64_t i = 0;
    for (; i + 2 <= count; i += 2) {
      a += weights[i] * Load<Acc>(base + int64_t{offsets[i]} * scale + k);
      b += weights[i + 1] * Load<Acc>(base + int64_t{offsets[i + 1]} * scale + k);
    }
    if (i < count) a += weights[i] * Load<Acc>(base + int64_t{offsets[i]} * scale + k);
    out[k] = a + b;
  }
}

// sum over k < dims of g[k] * row[k], with two vector accumulators and a fixed reduction.
template <typename T, typename Acc>
HWY_INLINE Acc DotRow(const Acc* HWY_RESTRICT g, const T* HWY_RESTRICT row, int64_t dims) {
  const hn::ScalableTag<Acc> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  auto a = hn::Zero(d), b = hn::Zero(d);
  int64_t k = 0;
  for (; k + 2 * n <= dims; k += 2 * n) {
    a = hn::MulAdd(hn::LoadU(d, g + k), LoadRow(d, row + k), a);
    b = hn::MulAdd(hn::LoadU(d, g + k + n), LoadRow(d, row + k + n), b);
  }
  if (k + n <= dims) {
    a = hn::MulAdd(hn::LoadU(d, g + k), LoadRow(d, row + k), a);
    k += n;
  }
  Acc sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(a, b)));
  for (; k < dims; ++k) sum += g[k] * Load<Acc>(row + k);
  return sum;
}

#if HWY_TARGET != HWY_SCALAR
// out[c] = the sum of the lanes of a_c, c < 4: the four vectors are reduced together (two
// interleave-and-add steps leave each 128-bit block holding the four sums' partials, then the
// blocks are added), instead of one horizontal sum per vector.
template <class D, class V>
HWY_INLINE void SumLanes4(D d, V a0, V a1, V a2, V a3, float* HWY_RESTRICT out) {
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  const auto t01 = hn::Add(hn::InterleaveLower(d, a0, a1), hn::InterleaveUpper(d, a0, a1));
  const auto t23 = hn::Add(hn::InterleaveLower(d, a2, a3), hn::InterleaveUpper(d, a2, a3));
  const hn::Repartition<uint64_t, decltype(d)> d64;
  const auto w01 = hn::BitCast(d64, t01), w23 = hn::BitCast(d64, t23);
  const auto sums = hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, w01, w23)),
                            hn::BitCast(d, hn::InterleaveUpper(d64, w01, w23)));
  // Each 128-bit block of `sums` holds partials of the four sums: add the blocks, halving the
  // vector while it is wider than one block (in lane order where its width is not fixed).
  if constexpr (!HWY_HAVE_SCALABLE && hn::MaxLanes(d) == 16) {
    const hn::Half<decltype(d)> d8;
    const hn::Half<decltype(d8)> d4;
    const auto s8 = hn::Add(hn::LowerHalf(d8, sums), hn::UpperHalf(d8, sums));
    hn::StoreU(hn::Add(hn::LowerHalf(d4, s8), hn::UpperHalf(d4, s8)), d4, out);
  } else if constexpr (!HWY_HAVE_SCALABLE && hn::MaxLanes(d) == 8) {
    const hn::Half<decltype(d)> d4;
    hn::StoreU(hn::Add(hn::LowerHalf(d4, sums), hn::UpperHalf(d4, sums)), d4, out);
  } else if constexpr (!HWY_HAVE_SCALABLE && hn::MaxLanes(d) == 4) {
    hn::StoreU(sums, d, out);
  } else {
    HWY_ALIGN float lanes[HWY_MAX_BYTES / sizeof(float)];
    hn::Store(sums, d, lanes);
    for (int c = 0; c < 4; ++c) {
      float s = lanes[c];
      for (int64_t block = 4; block < n; block += 4) s += lanes[block + c];
      out[c] = s;
    }
  }
}
#endif

// out[c] = sum over k < dims of g[k] * row_c[k], c < 4, fp32, the four sums reduced together
// (SumLanes4).
template <typename T>
HWY_INLINE void DotRows4(const float* HWY_RESTRICT g, const T* HWY_RESTRICT r0,
                         const T* HWY_RESTRICT r1, const T* HWY_RESTRICT r2,
                         const T* HWY_RESTRICT r3, int64_t dims, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
#if HWY_TARGET == HWY_SCALAR
  (void)n;
  out[0] = DotRow<T, float>(g, r0, dims);
  out[1] = DotRow<T, float>(g, r1, dims);
  out[2] = DotRow<T, float>(g, r2, dims);
  out[3] = DotRow<T, float>(g, r3, dims);
#else
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  int64_t k = 0;
  for (; k + n <= dims; k += n) {
    const auto gk = hn::LoadU(d, g + k);
    a0 = hn::MulAdd(gk, LoadRow(d, r0 + k), a0);
    a1 = hn::MulAdd(gk, LoadRow(d, r1 + k), a1);
    a2 = hn::MulAdd(gk, LoadRow(d, r2 + k), a2);
    a3 = hn::MulAdd(gk, LoadRow(d, r3 + k), a3);
  }
  SumLanes4(d, a0, a1, a2, a3, out);
  for (; k < dims; ++k) {
    out[0] += g[k] * Load<float>(r0 + k);
    out[1] += g[k] * Load<float>(r1 + k);
    out[2] += g[k] * Load<float>(r2 + k);
    out[3] += g[k] * Load<float>(r3 + k);
  }
#endif
}

// acc[k] += a * x[k] for k < dims, both contiguous in the accumulation type.
template <typename Acc>
HWY_INLINE void AxpyRow(Acc* HWY_RESTRICT acc, Acc a, const Acc* HWY_RESTRICT x, int64_t dims) {
  const hn::ScalableTag<Acc> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  int64_t k = 0;
  for (; k + n <= dims; k += n) {
    hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + k), hn::LoadU(d, acc + k)), d, acc + k);
  }
  for (; k < dims; ++k) acc[k] += a * x[k];
}

// acc0[k] += a0 * x[k] and acc1[k] += a1 * x[k]: one load of x for two rows.
template <typename Acc>
HWY_INLINE void AxpyRowPair(Acc* HWY_RESTRICT acc0, Acc a0, Acc* HWY_RESTRICT acc1, Acc a1,
                            const Acc* HWY_RESTRICT x, int64_t dims) {
  const hn::ScalableTag<Acc> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  const auto va0 = hn::Set(d, a0), va1 = hn::Set(d, a1);
  int64_t k = 0;
  for (; k + n <= dims; k += n) {
    const auto vx = hn::LoadU(d, x + k);
    hn::StoreU(hn::MulAdd(va0, vx, hn::LoadU(d, acc0 + k)), d, acc0 + k);
    hn::StoreU(hn::MulAdd(va1, vx, hn::LoadU(d, acc1 + k)), d, acc1 + k);
  }
  for (; k < dims; ++k) {
    acc0[k] += a0 * x[k];
    acc1[k] += a1 * x[k];
  }
}

// row[k] = Load(src[k]) widened to the accumulation type, src contiguous.
template <typename T, typename Acc>
HWY_INLINE void WidenRow(const T* HWY_RESTRICT src, int64_t dims, Acc* HWY_RESTRICT row) {
  const hn::ScalableTag<Acc> d;
  const int64_t n = static_cast<int64_t>(hn::Lanes(d));
  int64_t k = 0;
  for (; k + n <= dims; k += n) hn::StoreU(LoadRow(d, src + k), d, row + k);
  for (; k < dims; ++k) row[k] = Load<Acc>(src + k);
}

// dst[k] = src[k] rounded to the storage type, dst contiguous. fp32 and fp64 rows are copied
// as vectors; half types round to nearest even through the scalar conversions of numeric.h
// (Highway's own bf16 demotion truncates).
template <typename T, typename Acc>
HWY_INLINE void NarrowRow(const Acc* HWY_RESTRICT src, int64_t dims, T* HWY_RESTRICT dst) {
  if constexpr (std::is_same<T, Acc>::value) {
    const hn::ScalableTag<Acc> d;
    const int64_t n = static_cast<int64_t>(hn::Lanes(d));
    int64_t k = 0;
    for (; k + n <= dims; k += n) hn::StoreU(hn::LoadU(d, src + k), d, dst + k);
    for (; k < dims; ++k) dst[k] = src[k];
  } else {
    for (int64_t k = 0; k < dims; ++k) Store<Acc>(dst + k, src[k]);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace cpu
}  // namespace msda
HWY_AFTER_NAMESPACE();

#endif  // MSDA_SRC_CPU_ROWS_INL_H_
