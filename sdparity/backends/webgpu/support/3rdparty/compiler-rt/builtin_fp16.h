/*
 * sdparity: written for this project (the apache-tvm wheel lacks this header).
 *
 * Conversions between IEEE binary floating-point formats, as the TVM runtime sources
 * expect them: __truncXfYf2__ narrows (round to nearest, ties to even; overflow gives
 * infinity; NaN stays a quiet NaN) and __extendXfYf2__ widens (exact). The template
 * arguments are: source type, its bit representation type, its number of explicit
 * significand bits, then the same three for the destination. A half is passed as its
 * uint16_t bits, e.g. __truncXfYf2__<float, uint32_t, 23, uint16_t, uint16_t, 10>(x).
 */
#ifndef SDPARITY_BUILTIN_FP16_H_
#define SDPARITY_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace sdparity_fp {
template <typename REP_T, int SIG_BITS>
struct Layout {
  static constexpr int kBits = static_cast<int>(sizeof(REP_T) * 8);
  static constexpr int kExpBits = kBits - SIG_BITS - 1;
  static constexpr uint64_t kExpMax = (uint64_t(1) << kExpBits) - 1;  // inf / NaN exponent
  static constexpr int64_t kBias = static_cast<int64_t>(kExpMax >> 1);
  static constexpr uint64_t kSigMask = (uint64_t(1) << SIG_BITS) - 1;
};

/*! \brief m >> s rounded to nearest, ties to even. */
inline uint64_t ShiftRoundEven(uint64_t m, int s) {
  if (s <= 0) return m << -s;
  if (s >= 64) return 0;
  uint64_t q = m >> s;
  uint64_t rem = m & ((uint64_t(1) << s) - 1);
  uint64_t half = uint64_t(1) << (s - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  return q;
}
}  // namespace sdparity_fp

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
inline DST_T __truncXfYf2__(SRC_T a) {
  using S = sdparity_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = sdparity_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  SRC_REP_T bits;
  std::memcpy(&bits, &a, sizeof(bits));
  uint64_t rep = bits;
  uint64_t sign = (rep >> (S::kBits - 1)) & 1;
  uint64_t exp = (rep >> SRC_SIG_BITS) & S::kExpMax;
  uint64_t sig = rep & S::kSigMask;
  uint64_t out;  // destination bits without the sign
  if (exp == S::kExpMax) {
    out = D::kExpMax << DST_SIG_BITS;
    if (sig != 0) out |= (uint64_t(1) << (DST_SIG_BITS - 1)) | (sig >> (SRC_SIG_BITS - DST_SIG_BITS));
  } else if (exp == 0) {
    out = 0;  // source zero or subnormal: far below the destination's smallest subnormal
  } else {
    int64_t e = static_cast<int64_t>(exp) - S::kBias + D::kBias;  // destination biased exponent
    uint64_t m = sig | (uint64_t(1) << SRC_SIG_BITS);
    if (e >= static_cast<int64_t>(D::kExpMax)) {
      out = D::kExpMax << DST_SIG_BITS;
    } else if (e <= 0) {
      // subnormal result; rounding up to the smallest normal carries into the exponent
      out = sdparity_fp::ShiftRoundEven(m, SRC_SIG_BITS - DST_SIG_BITS + 1 - static_cast<int>(e));
    } else {
      // the rounding carry propagates into the exponent (and on to infinity)
      out = (uint64_t(e) << DST_SIG_BITS) +
            sdparity_fp::ShiftRoundEven(sig, SRC_SIG_BITS - DST_SIG_BITS);
    }
  }
  DST_REP_T res = static_cast<DST_REP_T>(out | (sign << (D::kBits - 1)));
  DST_T dst;
  std::memcpy(&dst, &res, sizeof(dst));
  return dst;
}

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
inline DST_T __extendXfYf2__(SRC_T a) {
  using S = sdparity_fp::Layout<SRC_REP_T, SRC_SIG_BITS>;
  using D = sdparity_fp::Layout<DST_REP_T, DST_SIG_BITS>;
  SRC_REP_T bits;
  std::memcpy(&bits, &a, sizeof(bits));
  uint64_t rep = bits;
  uint64_t sign = (rep >> (S::kBits - 1)) & 1;
  uint64_t exp = (rep >> SRC_SIG_BITS) & S::kExpMax;
  uint64_t sig = rep & S::kSigMask;
  constexpr int kShift = DST_SIG_BITS - SRC_SIG_BITS;
  uint64_t out;
  if (exp == S::kExpMax) {
    out = (D::kExpMax << DST_SIG_BITS) | (sig << kShift);
    if (sig != 0) out |= uint64_t(1) << (DST_SIG_BITS - 1);  // quiet NaN
  } else if (exp == 0) {
    if (sig == 0) {
      out = 0;
    } else {  // subnormal source: normalise (the destination has the range for it)
      int top = SRC_SIG_BITS - 1;
      while (((sig >> top) & 1) == 0) --top;
      int64_t e = (top - SRC_SIG_BITS) + 1 - S::kBias + D::kBias;
      out = (uint64_t(e) << DST_SIG_BITS) | (((sig ^ (uint64_t(1) << top)) << (DST_SIG_BITS - top)) & D::kSigMask);
    }
  } else {
    out = (uint64_t(static_cast<int64_t>(exp) - S::kBias + D::kBias) << DST_SIG_BITS) | (sig << kShift);
  }
  DST_REP_T res = static_cast<DST_REP_T>(out | (sign << (D::kBits - 1)));
  DST_T dst;
  std::memcpy(&dst, &res, sizeof(dst));
  return dst;
}

#endif  // SDPARITY_BUILTIN_FP16_H_
