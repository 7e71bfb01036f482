// Storage types and their conversions. Half types are a storage format only: every load
// widens to the accumulation type (fp32, or fp64 for FLOAT64 problems) and every store
// rounds once, to nearest even.
#ifndef MSDA_SRC_CPU_NUMERIC_H_
#define MSDA_SRC_CPU_NUMERIC_H_

#include <cstdint>
#include <cstring>

namespace msda {
namespace cpu {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return BitsToFloat(sign | 0x7F800000u | (mantissa << 13));  // Inf/NaN.
  if (exponent != 0) return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Subnormal or zero: mantissa * 2^-24, exact in fp32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t u = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // Inf or NaN (NaN stays quiet NaN).
    return sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u);
  }
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // Rounds to >= 65520: overflow to Inf.
  if (abs < 0x38800000u) {
    // Result is subnormal in fp16 (or zero): round |f| / 2^-24 to nearest even integer.
    // Adding 0.5 (as 2^-1) then relying on fp32 rounding would double-round, so do it
    // by hand on the mantissa.
    if (abs < 0x33000000u) return sign;  // Below half the smallest subnormal: zero.
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24 for this range.
    uint32_t result = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
    return sign | static_cast<uint16_t>(result);
  }
  // Normal: rebias the exponent and round the mantissa to 10 bits, nearest even.
  uint32_t rounded = abs + 0xFFFu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

inline float BFloat16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatToBits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN.
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Widen a stored value to the accumulation type.
template <typename Acc>
inline Acc Load(const float* p) {
  return static_cast<Acc>(*p);
}
template <typename Acc>
inline Acc Load(const double* p) {
  return static_cast<Acc>(*p);
}
template <typename Acc>
inline Acc Load(const Half* p) {
  return static_cast<Acc>(HalfToFloat(p->bits));
}
template <typename Acc>
inline Acc Load(const BFloat16* p) {
  return static_cast<Acc>(BFloat16ToFloat(p->bits));
}

// Round an accumulated value to the storage type.
template <typename Acc>
inline void Store(float* p, Acc v) {
  *p = static_cast<float>(v);
}
template <typename Acc>
inline void Store(double* p, Acc v) {
  *p = static_cast<double>(v);
}
template <typename Acc>
inline void Store(Half* p, Acc v) {
  p->bits = FloatToHalf(static_cast<float>(v));
}
template <typename Acc>
inline void Store(BFloat16* p, Acc v) {
  p->bits = FloatToBFloat16(static_cast<float>(v));
}

}  // namespace cpu
}  // namespace msda

#endif  // MSDA_SRC_CPU_NUMERIC_H_
