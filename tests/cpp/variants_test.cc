// The operator variants of msdaOptions (per-level point counts in the flat layout, discrete
// sampling) through the ...Ex calls, against an fp64 reference written here from
// docs/semantics.md, and every refusal the options add (docs/errors.md, O rows).
#include <gtest/gtest.h>
#include <msda/msda.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

struct Shape {
  int64_t batch = 2, queries = 7, heads = 3, dims = 5;
  std::vector<std::array<int64_t, 2>> levels = {{4, 5}, {1, 7}, {6, 1}, {1, 1}};
  std::vector<int64_t> counts = {3, 6, 1, 2};  // Points per level.

  int64_t L() const { return static_cast<int64_t>(levels.size()); }
  int64_t N() const {
    int64_t n = 0;
    for (int64_t c : counts) n += c;
    return n;
  }
  int64_t K() const {
    int64_t k = 0;
    for (const auto& l : levels) k += l[0] * l[1];
    return k;
  }
  std::vector<int64_t> Starts() const {
    std::vector<int64_t> s;
    int64_t k = 0;
    for (const auto& l : levels) {
      s.push_back(k);
      k += l[0] * l[1];
    }
    return s;
  }
  // The level of flat point i.
  int64_t LevelOf(int64_t i) const {
    for (int64_t l = 0;; ++l) {
      if (i < counts[l]) return l;
      i -= counts[l];
    }
  }
};

// Discrete sampling's pixel index, rounded in T as the kernels' arithmetic type is.
template <typename T>
int64_t Nearest(double coord, int64_t size) {
  const T c = static_cast<T>(static_cast<T>(coord) * static_cast<T>(size)) + static_cast<T>(0.5);
  if (std::isnan(c)) return 0;
  if (c <= 0) return 0;
  if (c >= static_cast<T>(size - 1)) return size - 1;
  return std::min<int64_t>(static_cast<int64_t>(c), size - 1);
}

struct Reference {
  std::vector<double> out, out_mag, out_crd;       // [B, Q, H*D]
  std::vector<double> grad_value, gv_mag, gv_crd;  // [B, K, H, D]
  std::vector<double> grad_loc, gl_mag;            // [B, Q, H, N, 2]
  std::vector<double> grad_attn, ga_mag, ga_crd;   // [B, Q, H, N]
};

// fp64 reference on contiguous fp64 copies of the inputs. *_mag: the sum of |terms| of each
// element (times the level size for location gradients), for the rounding bound; *_crd: the
// same terms' sensitivity to the bilinear weights, which the kernels' rounded coordinates
// move by up to about (2 (W + H) + 8) roundings (the reference computes them exactly).
template <typename T>
Reference Compute(const Shape& s, bool discrete, const std::vector<double>& value,
                  const std::vector<double>& loc, const std::vector<double>& attn,
                  const std::vector<double>& grad_out) {
  const int64_t B = s.batch, Q = s.queries, H = s.heads, D = s.dims, N = s.N(), K = s.K();
  const std::vector<int64_t> starts = s.Starts();
  Reference r;
  r.out.assign(B * Q * H * D, 0);
  r.out_mag = r.out_crd = r.out;
  r.grad_value.assign(B * K * H * D, 0);
  r.gv_mag = r.gv_crd = r.grad_value;
  r.grad_loc.assign(B * Q * H * N * 2, 0);
  r.gl_mag = r.grad_loc;
  r.grad_attn.assign(B * Q * H * N, 0);
  r.ga_mag = r.ga_crd = r.grad_attn;
  auto v_at = [&](int64_t b, int64_t k, int64_t h, int64_t d) {
    return value[((b * K + k) * H + h) * D + d];
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t q = 0; q < Q; ++q) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t bqh = (b * Q + q) * H + h;
        const double* g = &grad_out[bqh * D];
        for (int64_t i = 0; i < N; ++i) {
          const int64_t l = s.LevelOf(i);
          const int64_t Hl = s.levels[l][0], Wl = s.levels[l][1];
          const double x = loc[(bqh * N + i) * 2], y = loc[(bqh * N + i) * 2 + 1];
          const double a = attn[bqh * N + i];
          // Corners: (key, weight, dw, dh) with dw / dh the weight's derivatives by w_im, h_im.
          struct C {
            int64_t key;
            double w, dw, dh;
          };
          std::vector<C> corners;
          if (discrete) {
            corners.push_back({starts[l] + Nearest<T>(y, Hl) * Wl + Nearest<T>(x, Wl), 1, 0, 0});
          } else {
            const double h_im = y * Hl - 0.5, w_im = x * Wl - 0.5;
            if (!(h_im > -1 && w_im > -1 && h_im < Hl && w_im < Wl)) continue;
            const double h0 = std::floor(h_im), w0 = std::floor(w_im);
            const double lh = h_im - h0, lw = w_im - w0;
            for (int c = 0; c < 4; ++c) {
              const int64_t hh = static_cast<int64_t>(h0) + c / 2;
              const int64_t ww = static_cast<int64_t>(w0) + c % 2;
              if (hh < 0 || hh >= Hl || ww < 0 || ww >= Wl) continue;
              const double fh = c / 2 ? lh : 1 - lh, fw = c % 2 ? lw : 1 - lw;
              corners.push_back({starts[l] + hh * Wl + ww, fh * fw, fh * (c % 2 ? 1 : -1),
                                 fw * (c / 2 ? 1 : -1)});
            }
          }
          double gx = 0, gy = 0, ga = 0, mag = 0;
          const double e_coord = discrete ? 0.0 : 2.0 * static_cast<double>(Wl + Hl) + 8.0;
          for (const C& c : corners) {
            double dot = 0, absdot = 0;
            for (int64_t d = 0; d < D; ++d) {
              const double v = v_at(b, c.key, h, d);
              r.out[bqh * D + d] += a * c.w * v;
              r.out_mag[bqh * D + d] += std::fabs(a * c.w * v);
              r.out_crd[bqh * D + d] += 2.0 * std::fabs(a * v) * e_coord;
              r.grad_value[((b * K + c.key) * H + h) * D + d] += a * c.w * g[d];
              r.gv_mag[((b * K + c.key) * H + h) * D + d] += std::fabs(a * c.w * g[d]);
              r.gv_crd[((b * K + c.key) * H + h) * D + d] += 2.0 * std::fabs(a * g[d]) * e_coord;
              dot += g[d] * v;
              absdot += std::fabs(g[d] * v);
            }
            ga += c.w * dot;
            gx += Wl * a * c.dw * dot;
            gy += Hl * a * c.dh * dot;
            mag += absdot;
          }
          r.grad_attn[bqh * N + i] = ga;
          r.ga_mag[bqh * N + i] = mag;
          r.ga_crd[bqh * N + i] = 2.0 * mag * e_coord;
          if (!discrete) {
            r.grad_loc[(bqh * N + i) * 2] = gx;
            r.grad_loc[(bqh * N + i) * 2 + 1] = gy;
            // The fractions carry a rounding of about (W + H) units: the coordinates' scale.
            r.gl_mag[(bqh * N + i) * 2] = (Wl + 2.0) * std::fabs(a) * mag * (2.0 * (Wl + Hl) + 8);
            r.gl_mag[(bqh * N + i) * 2 + 1] =
                (Hl + 2.0) * std::fabs(a) * mag * (2.0 * (Wl + Hl) + 8);
          }
        }
      }
    }
  }
  return r;
}

template <typename T>
constexpr msdaDataType DtypeOf() {
  return sizeof(T) == 8 ? MSDA_FLOAT64 : MSDA_FLOAT32;
}

msdaTensor* View(const std::vector<int64_t>& dims, msdaDataType dtype, void* data,
                 const std::vector<int64_t>* strides = nullptr) {
  return msdaCreateTensor(dims.data(), dims.size(), dtype, strides ? strides->data() : nullptr, 0,
                          MSDA_DEVICE_CPU, 0, data);
}

// Inputs of one call: contiguous, or (strided) with the point dims of loc / attn and their
// gradients padded, which takes the kernels off their flat paths.
template <typename T>
struct Call {
  Shape s;
  bool strided = false;
  std::vector<double> value, loc, attn, grad_out;  // Logical, contiguous.
  std::vector<T> value_t, loc_t, attn_t, grad_out_t;
  std::vector<int64_t> shapes, starts;

  static constexpr int64_t kPad = 3;  // Extra elements per point in the strided layout.
  int64_t LocStride() const { return strided ? 2 + kPad : 2; }
  int64_t AttnStride() const { return strided ? 1 + kPad : 1; }
  std::vector<int64_t> LocStrides() const {
    const int64_t p = LocStride(), n = s.N();
    return {s.queries * s.heads * n * p, s.heads * n * p, n * p, p, 1};
  }
  std::vector<int64_t> AttnStrides() const {
    const int64_t p = AttnStride(), n = s.N();
    return {s.queries * s.heads * n * p, s.heads * n * p, n * p, p};
  }

  void Fill(uint32_t seed, bool special) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1), pos(-0.15, 1.15);
    const int64_t B = s.batch, Q = s.queries, H = s.heads, D = s.dims, N = s.N(), K = s.K();
    value.resize(B * K * H * D);
    for (double& v : value) v = static_cast<T>(u(rng));
    loc.resize(B * Q * H * N * 2);
    for (double& v : loc) v = static_cast<T>(pos(rng));
    attn.resize(B * Q * H * N);
    for (double& v : attn) v = static_cast<T>(u(rng));
    grad_out.resize(B * Q * H * D);
    for (double& v : grad_out) v = static_cast<T>(u(rng));
    if (special) {
      // Per point i of the first (b, q, h) rows: discrete rounding boundaries (x * W + 0.5
      // integral), pixel centres (the bilinear kinks), the borders, NaN and infinities.
      const double nan = std::numeric_limits<double>::quiet_NaN();
      const double inf = std::numeric_limits<double>::infinity();
      for (int64_t row = 0; row < Q * H && row < 6; ++row) {
        for (int64_t i = 0; i < N; ++i) {
          const int64_t l = s.LevelOf(i);
          const double W = static_cast<double>(s.levels[l][1]);
          const double Hh = static_cast<double>(s.levels[l][0]);
          double* xy = &loc[(row * N + i) * 2];
          switch ((row * N + i) % 8) {
            case 0:
              xy[0] = static_cast<T>((i % 3 + 0.5) / W);
              break;  // x * W + 0.5 = k + 1
            case 1:
              xy[0] = static_cast<T>((i % 3 + 0.5) / W);
              xy[1] = static_cast<T>(0.5 / Hh);
              break;
            case 2:
              xy[0] = 0;
              xy[1] = 1;
              break;
            case 3:
              xy[0] = nan;
              break;
            case 4:
              xy[1] = inf;
              break;
            case 5:
              xy[0] = -inf;
              xy[1] = -0.0;
              break;
            case 6:
              xy[0] = static_cast<T>(-0.5 / W);
              break;  // x * W + 0.5 = 0
            default:
              break;
          }
        }
      }
    }
    value_t.assign(value.begin(), value.end());
    attn_t.assign(attn.size() * AttnStride(), T(-7));
    loc_t.assign(loc.size() / 2 * LocStride(), T(-7));
    for (size_t i = 0; i < attn.size(); ++i) {
      attn_t[i * AttnStride()] = static_cast<T>(attn[i]);
      loc_t[i * LocStride()] = static_cast<T>(loc[2 * i]);
      loc_t[i * LocStride() + 1] = static_cast<T>(loc[2 * i + 1]);
    }
    grad_out_t.assign(grad_out.begin(), grad_out.end());
    shapes.clear();
    for (const auto& l : s.levels) {
      shapes.push_back(l[0]);
      shapes.push_back(l[1]);
    }
    starts = s.Starts();
  }

  msdaOptions Options(bool discrete) const {
    msdaOptions o;
    EXPECT_EQ(msdaOptionsInit(&o), MSDA_SUCCESS);
    o.samplingMethod = discrete ? MSDA_SAMPLING_DISCRETE : MSDA_SAMPLING_BILINEAR;
    o.numPointsList = s.counts.data();
    o.numLevels = s.counts.size();
    return o;
  }

  std::vector<T> Forward(bool discrete, int threads) {
    const Shape& p = s;
    const std::vector<int64_t> ls = LocStrides(), as = AttnStrides();
    std::vector<T> out(p.batch * p.queries * p.heads * p.dims, T(-3));
    msdaTensor* v = View({p.batch, p.K(), p.heads, p.dims}, DtypeOf<T>(), value_t.data());
    msdaTensor* ss = View({p.L(), 2}, MSDA_INT64, shapes.data());
    msdaTensor* st = View({p.L()}, MSDA_INT64, starts.data());
    msdaTensor* l = View({p.batch, p.queries, p.heads, p.N(), 2}, DtypeOf<T>(), loc_t.data(), &ls);
    msdaTensor* a = View({p.batch, p.queries, p.heads, p.N()}, DtypeOf<T>(), attn_t.data(), &as);
    msdaTensor* o = View({p.batch, p.queries, p.heads * p.dims}, DtypeOf<T>(), out.data());
    const msdaOptions options = Options(discrete);
    msdaSetNumThreads(threads);
    uint64_t bytes = 0;
    msdaExecutor* e = nullptr;
    EXPECT_EQ(msdaForwardGetWorkspaceSizeEx(v, ss, st, l, a, o, &options, &bytes, &e), MSDA_SUCCESS)
        << msdaGetLastErrorMessage();
    std::vector<unsigned char> ws(bytes, 0xA5);
    EXPECT_EQ(msdaForward(ws.data(), bytes, e, nullptr), MSDA_SUCCESS);
    for (msdaTensor* t : {v, ss, st, l, a, o}) msdaDestroyTensor(t);
    msdaSetNumThreads(0);
    return out;
  }

  struct Grads {
    std::vector<T> value, loc, attn;  // loc / attn in the call's (maybe padded) layout.
  };
  Grads Backward(bool discrete, int threads) {
    const Shape& p = s;
    const std::vector<int64_t> ls = LocStrides(), as = AttnStrides();
    Grads g;
    g.value.assign(value_t.size(), T(-3));
    g.loc.assign(loc_t.size(), T(-3));
    g.attn.assign(attn_t.size(), T(-3));
    msdaTensor* v = View({p.batch, p.K(), p.heads, p.dims}, DtypeOf<T>(), value_t.data());
    msdaTensor* ss = View({p.L(), 2}, MSDA_INT64, shapes.data());
    msdaTensor* st = View({p.L()}, MSDA_INT64, starts.data());
    const std::vector<int64_t> loc_dims = {p.batch, p.queries, p.heads, p.N(), 2};
    const std::vector<int64_t> attn_dims = {p.batch, p.queries, p.heads, p.N()};
    msdaTensor* l = View(loc_dims, DtypeOf<T>(), loc_t.data(), &ls);
    msdaTensor* a = View(attn_dims, DtypeOf<T>(), attn_t.data(), &as);
    msdaTensor* go = View({p.batch, p.queries, p.heads * p.dims}, DtypeOf<T>(), grad_out_t.data());
    msdaTensor* gv = View({p.batch, p.K(), p.heads, p.dims}, DtypeOf<T>(), g.value.data());
    msdaTensor* gl = View(loc_dims, DtypeOf<T>(), g.loc.data(), &ls);
    msdaTensor* ga = View(attn_dims, DtypeOf<T>(), g.attn.data(), &as);
    const msdaOptions options = Options(discrete);
    msdaSetNumThreads(threads);
    uint64_t bytes = 0;
    msdaExecutor* e = nullptr;
    EXPECT_EQ(msdaBackwardGetWorkspaceSizeEx(v, ss, st, l, a, go, gv, gl, ga, &options, &bytes, &e),
              MSDA_SUCCESS)
        << msdaGetLastErrorMessage();
    std::vector<unsigned char> ws(bytes, 0xA5);
    EXPECT_EQ(msdaBackward(ws.data(), bytes, e, nullptr), MSDA_SUCCESS);
    for (msdaTensor* t : {v, ss, st, l, a, go, gv, gl, ga}) msdaDestroyTensor(t);
    msdaSetNumThreads(0);
    return g;
  }
};

template <typename T>
double UnitRoundoff() {
  return std::ldexp(1.0, -std::numeric_limits<T>::digits);
}

// |got - want| <= 2 u (n mag + crd) + u |want|: n roundings of the terms' magnitude, the
// coordinates' rounding, and the output's own rounding to T.
template <typename T>
void ExpectNear(const char* what, double got, double want, double mag, double n, size_t index,
                double crd = 0) {
  const double u = UnitRoundoff<T>();
  const double tol = 2.0 * u * (n * mag + crd) + u * std::fabs(want) + 1e-300;
  ASSERT_LE(std::fabs(got - want), tol)
      << what << "[" << index << "]: got " << got << ", want " << want << " (bound " << tol << ")";
}

template <typename T>
void CheckCall(Call<T>& c, bool discrete) {
  const Shape& s = c.s;
  const Reference r = Compute<T>(s, discrete, c.value, c.loc, c.attn, c.grad_out);
  const double terms = 4.0 * s.N() + s.dims + 8.0;
  const std::vector<T> out = c.Forward(discrete, 2);
  for (size_t i = 0; i < out.size(); ++i) {
    ExpectNear<T>("output", out[i], r.out[i], r.out_mag[i], terms, i, r.out_crd[i]);
  }
  typename Call<T>::Grads g = c.Backward(discrete, 2);
  for (size_t i = 0; i < g.value.size(); ++i) {
    ExpectNear<T>("grad_value", g.value[i], r.grad_value[i], r.gv_mag[i],
                  4.0 * s.queries * s.N() + 8.0, i, r.gv_crd[i]);
  }
  for (size_t i = 0; i < r.grad_attn.size(); ++i) {
    ExpectNear<T>("grad_attention_weights", g.attn[i * c.AttnStride()], r.grad_attn[i], r.ga_mag[i],
                  terms, i, r.ga_crd[i]);
    for (int xy = 0; xy < 2; ++xy) {
      const double got = g.loc[i * c.LocStride() + xy];
      if (discrete) {
        ASSERT_EQ(got, 0.0) << "grad_sampling_locations[" << 2 * i + xy << "] (discrete)";
        ASSERT_FALSE(std::signbit(got));
      } else {
        ExpectNear<T>("grad_sampling_locations", got, r.grad_loc[2 * i + xy], r.gl_mag[2 * i + xy],
                      terms, 2 * i + xy);
      }
    }
  }
  // Padding between points is never written.
  for (size_t i = 0; i < r.grad_attn.size() && c.strided; ++i) {
    for (int64_t k = 1; k < c.AttnStride(); ++k) ASSERT_EQ(g.attn[i * c.AttnStride() + k], T(-3));
    for (int64_t k = 2; k < c.LocStride(); ++k) ASSERT_EQ(g.loc[i * c.LocStride() + k], T(-3));
  }
  // Deterministic for every thread count.
  const typename Call<T>::Grads one = c.Backward(discrete, 1);
  ASSERT_EQ(std::memcmp(one.value.data(), g.value.data(), g.value.size() * sizeof(T)), 0);
  ASSERT_EQ(std::memcmp(one.attn.data(), g.attn.data(), g.attn.size() * sizeof(T)), 0);
}

template <typename T>
void RunVariants(bool strided, bool discrete, bool special) {
  for (const Shape& shape :
       {Shape{}, Shape{1, 40, 2, 16, {{5, 3}, {2, 2}}, {1, 9}}, Shape{1, 3, 1, 1, {{3, 4}}, {5}}}) {
    Call<T> c;
    c.s = shape;
    c.strided = strided;
    c.Fill(17 + static_cast<uint32_t>(shape.queries), special);
    SCOPED_TRACE("queries " + std::to_string(shape.queries) + (strided ? " strided" : "") +
                 (discrete ? " discrete" : " bilinear"));
    CheckCall(c, discrete);
  }
}

TEST(Variants, PointsPerLevelFloat32) { RunVariants<float>(false, false, true); }
TEST(Variants, PointsPerLevelFloat32Strided) { RunVariants<float>(true, false, true); }
TEST(Variants, PointsPerLevelFloat64) { RunVariants<double>(false, false, true); }
TEST(Variants, DiscreteFloat32) { RunVariants<float>(false, true, true); }
TEST(Variants, DiscreteFloat32Strided) { RunVariants<float>(true, true, true); }
TEST(Variants, DiscreteFloat64) { RunVariants<double>(false, true, true); }

// Equal counts in the flat layout are the 6-D call seen through it: bitwise the same output,
// and the discrete method with equal counts through the plain layout (numPointsList NULL).
TEST(Variants, EqualCountsMatchTheSixDimensionalCall) {
  for (bool discrete : {false, true}) {
    Call<float> c;
    c.s = Shape{2, 9, 2, 8, {{4, 5}, {2, 3}, {1, 1}}, {3, 3, 3}};
    c.Fill(5, true);
    const std::vector<float> flat = c.Forward(discrete, 2);
    const Shape& p = c.s;
    std::vector<float> out(flat.size(), -1.0f);
    msdaTensor* v = View({p.batch, p.K(), p.heads, p.dims}, MSDA_FLOAT32, c.value_t.data());
    msdaTensor* ss = View({p.L(), 2}, MSDA_INT64, c.shapes.data());
    msdaTensor* st = View({p.L()}, MSDA_INT64, c.starts.data());
    msdaTensor* l = View({p.batch, p.queries, p.heads, p.L(), 3, 2}, MSDA_FLOAT32, c.loc_t.data());
    msdaTensor* a = View({p.batch, p.queries, p.heads, p.L(), 3}, MSDA_FLOAT32, c.attn_t.data());
    msdaTensor* o = View({p.batch, p.queries, p.heads * p.dims}, MSDA_FLOAT32, out.data());
    msdaOptions options;
    msdaOptionsInit(&options);
    options.samplingMethod = discrete ? MSDA_SAMPLING_DISCRETE : MSDA_SAMPLING_BILINEAR;
    uint64_t bytes = 0;
    msdaExecutor* e = nullptr;
    ASSERT_EQ(msdaForwardGetWorkspaceSizeEx(v, ss, st, l, a, o, &options, &bytes, &e),
              MSDA_SUCCESS);
    std::vector<unsigned char> ws(bytes);
    ASSERT_EQ(msdaForward(ws.data(), bytes, e, nullptr), MSDA_SUCCESS);
    EXPECT_EQ(std::memcmp(out.data(), flat.data(), out.size() * sizeof(float)), 0);
    if (!discrete) {  // NULL options are the defaults.
      std::vector<float> plain(flat.size(), -1.0f);
      msdaTensor* o2 = View({p.batch, p.queries, p.heads * p.dims}, MSDA_FLOAT32, plain.data());
      ASSERT_EQ(msdaForwardGetWorkspaceSizeEx(v, ss, st, l, a, o2, nullptr, &bytes, &e),
                MSDA_SUCCESS);
      ws.assign(bytes, 0);
      ASSERT_EQ(msdaForward(ws.data(), bytes, e, nullptr), MSDA_SUCCESS);
      EXPECT_EQ(std::memcmp(plain.data(), flat.data(), out.size() * sizeof(float)), 0);
      msdaDestroyTensor(o2);
    }
    for (msdaTensor* t : {v, ss, st, l, a, o}) msdaDestroyTensor(t);
  }
}

// Both backward strategies agree bit for bit on the variants too.
extern "C" void msdaTestingSetPlannerOptions(int32_t head_major_copy, int32_t backward_strategy);
TEST(Variants, BackwardStrategiesAgree) {
  for (bool discrete : {false, true}) {
    Call<float> c;
    c.s = Shape{2, 30, 4, 8, {{6, 5}, {3, 3}}, {2, 5}};
    c.Fill(9, true);
    msdaTestingSetPlannerOptions(-1, 1);
    const Call<float>::Grads by_head = c.Backward(discrete, 2);
    msdaTestingSetPlannerOptions(-1, 2);
    const Call<float>::Grads sorted = c.Backward(discrete, 2);
    msdaTestingSetPlannerOptions(-1, -1);
    EXPECT_EQ(std::memcmp(by_head.value.data(), sorted.value.data(), sorted.value.size() * 4), 0);
    EXPECT_EQ(std::memcmp(by_head.loc.data(), sorted.loc.data(), sorted.loc.size() * 4), 0);
    EXPECT_EQ(std::memcmp(by_head.attn.data(), sorted.attn.data(), sorted.attn.size() * 4), 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Refusals (docs/errors.md, rows O1-O7): status, the name the message starts with, and
// nothing written.

struct Refusal : ::testing::Test {
  float value[4 * 2 * 2] = {};
  int64_t shapes[4] = {2, 1, 1, 2}, starts[2] = {0, 2};
  float loc[2 * 3 * 2] = {}, attn[2 * 3] = {};
  float out[4];
  int64_t counts[2] = {1, 2};
  msdaTensor *v, *ss, *st, *l, *a, *o;
  void SetUp() override {
    std::fill(out, out + 4, -5.0f);
    v = View({1, 4, 2, 2}, MSDA_FLOAT32, value);
    ss = View({2, 2}, MSDA_INT64, shapes);
    st = View({2}, MSDA_INT64, starts);
    l = View({1, 1, 2, 3, 2}, MSDA_FLOAT32, loc);
    a = View({1, 1, 2, 3}, MSDA_FLOAT32, attn);
    o = View({1, 1, 4}, MSDA_FLOAT32, out);
  }
  void TearDown() override {
    for (msdaTensor* t : {v, ss, st, l, a, o}) msdaDestroyTensor(t);
  }
  msdaOptions Options() {
    msdaOptions options;
    msdaOptionsInit(&options);
    options.numPointsList = counts;
    options.numLevels = 2;
    return options;
  }
  void Expect(const msdaOptions& options, msdaStatus status, const std::string& message) {
    uint64_t bytes = 7;
    msdaExecutor* e = reinterpret_cast<msdaExecutor*>(&bytes);
    EXPECT_EQ(msdaForwardGetWorkspaceSizeEx(v, ss, st, l, a, o, &options, &bytes, &e), status);
    EXPECT_EQ(std::string(msdaGetLastErrorMessage()).rfind(message, 0), 0u)
        << msdaGetLastErrorMessage();
    EXPECT_EQ(e, nullptr);
    EXPECT_EQ(bytes, 0u);
    for (float x : out) EXPECT_EQ(x, -5.0f);
    // The backward refuses the same way.
    float g[4] = {};
    msdaTensor* go = View({1, 1, 4}, MSDA_FLOAT32, g);
    bytes = 7;
    EXPECT_EQ(msdaBackwardGetWorkspaceSizeEx(v, ss, st, l, a, go, nullptr, nullptr, nullptr,
                                             &options, &bytes, &e),
              status);
    EXPECT_EQ(std::string(msdaGetLastErrorMessage()).rfind(message, 0), 0u)
        << msdaGetLastErrorMessage();
    msdaDestroyTensor(go);
  }
};

TEST_F(Refusal, ValidOptionsAreAccepted) {
  uint64_t bytes = 0;
  msdaExecutor* e = nullptr;
  const msdaOptions options = Options();
  ASSERT_EQ(msdaForwardGetWorkspaceSizeEx(v, ss, st, l, a, o, &options, &bytes, &e), MSDA_SUCCESS)
      << msdaGetLastErrorMessage();
  EXPECT_EQ(msdaDestroyExecutor(e), MSDA_SUCCESS);
}

TEST_F(Refusal, O1_OptionsInitNull) {
  EXPECT_EQ(msdaOptionsInit(nullptr), MSDA_ERROR_NULL_POINTER);
  EXPECT_EQ(std::string(msdaGetLastErrorMessage()), "options: is NULL");
}

TEST_F(Refusal, O2_StructSize) {
  msdaOptions options = Options();
  options.structSize = 8;
  Expect(options, MSDA_ERROR_INVALID_VALUE, "options: structSize must be sizeof(msdaOptions)");
}

TEST_F(Refusal, O3_SamplingMethod) {
  msdaOptions options = Options();
  options.samplingMethod = static_cast<msdaSamplingMethod>(5);
  Expect(options, MSDA_ERROR_INVALID_VALUE,
         "options: samplingMethod must be MSDA_SAMPLING_BILINEAR (0) or MSDA_SAMPLING_DISCRETE "
         "(1), got 5");
}

TEST_F(Refusal, O4_CountsNullWithLevels) {
  msdaOptions options = Options();
  options.numPointsList = nullptr;
  Expect(options, MSDA_ERROR_NULL_POINTER, "options: numPointsList is NULL but numLevels is 2");
}

TEST_F(Refusal, O5_CountPerLevel) {
  msdaOptions options = Options();
  options.numLevels = 1;
  Expect(options, MSDA_ERROR_SHAPE_MISMATCH,
         "options: numPointsList has 1 entries but spatial_shapes has 2 levels");
}

TEST_F(Refusal, O6_CountsAtLeastOne) {
  counts[1] = 0;
  Expect(Options(), MSDA_ERROR_INVALID_VALUE, "options: numPointsList[1] must be >= 1, got 0");
  counts[1] = std::numeric_limits<int64_t>::max();
  Expect(Options(), MSDA_ERROR_LIMIT_EXCEEDED, "options: the sum of numPointsList overflows int64");
}

TEST_F(Refusal, O7_FlatLayoutShapes) {
  counts[1] = 3;  // The sum is 4, but the tensors have 3 points.
  Expect(Options(), MSDA_ERROR_SHAPE_MISMATCH,
         "sampling_locations: dim 3 (points, the sum of numPointsList) must be 4, got 3");
  counts[1] = 2;
  msdaDestroyTensor(l);
  l = View({1, 1, 2, 1, 3, 2}, MSDA_FLOAT32, loc);  // The 6-D layout with numPointsList.
  Expect(Options(), MSDA_ERROR_INVALID_RANK,
         "sampling_locations: must have rank 5 [batch, queries, heads, sum of numPointsList, 2]");
  msdaDestroyTensor(l);
  l = View({1, 1, 2, 3, 2}, MSDA_FLOAT32, loc);
  msdaDestroyTensor(a);
  a = View({1, 1, 2, 2}, MSDA_FLOAT32, attn);
  Expect(Options(), MSDA_ERROR_SHAPE_MISMATCH,
         "attention_weights: dim 3 (points, the sum of numPointsList) must be 3, got 2");
}

}  // namespace
