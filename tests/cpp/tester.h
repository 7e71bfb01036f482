// Test harness: host tensors with arbitrary strided layouts, a garbage-filled workspace, and
// MsdaTester, a builder (in the style of XNNPACK's operator testers) that holds a problem, its
// dtypes, layouts and thread count, builds the tensors, runs forward / backward through the
// C API and compares with the fp64 reference of reference.h.
#ifndef MSDA_TESTS_CPP_TESTER_H_
#define MSDA_TESTS_CPP_TESTER_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "msda/msda.h"
#include "reference.h"
#include "testing.h"  // src/: msdaTestingSetPlannerOptions

namespace msda_test {

struct TensorDeleter {
  void operator()(msdaTensor* t) const { msdaDestroyTensor(t); }
};
using TensorPtr = std::unique_ptr<msdaTensor, TensorDeleter>;

struct ExecutorDeleter {
  void operator()(msdaExecutor* e) const { msdaDestroyExecutor(e); }
};

// How a tensor's elements sit in memory.
struct Layout {
  std::vector<int> order;        // Physical nesting of the logical dims, outermost first
                                 // (empty: row-major). {0, 2, 1, 3} stores value as [B,H,K,D].
  int64_t pad = 0;               // Extra elements past every dim's extent: gaps at each level.
  int64_t offset = 0;            // Elements before the first one.
  std::vector<int64_t> strides;  // Explicit strides in elements; overrides order and pad.
};

inline Layout RowMajor() { return Layout(); }
inline Layout Permuted(std::vector<int> order, int64_t pad = 0, int64_t offset = 0) {
  Layout l;
  l.order = std::move(order);
  l.pad = pad;
  l.offset = offset;
  return l;
}
inline Layout Padded(int64_t pad, int64_t offset) {
  Layout l;
  l.pad = pad;
  l.offset = offset;
  return l;
}
inline Layout Strided(std::vector<int64_t> strides, int64_t offset = 0) {
  Layout l;
  l.strides = std::move(strides);
  l.offset = offset;
  return l;
}

// A strided view over storage it owns. Storage starts filled with `fill` bytes, so that bytes
// the view does not cover can be checked for stray writes.
class HostTensor {
 public:
  HostTensor(std::vector<int64_t> dims, msdaDataType dtype, const Layout& layout = Layout(),
             unsigned char fill = 0xFF, msdaDeviceType device = MSDA_DEVICE_CPU,
             int32_t device_id = 0)
      : dims_(std::move(dims)), dtype_(dtype), offset_(layout.offset), fill_(fill) {
    const size_t rank = dims_.size();
    strides_.assign(rank, 0);
    if (!layout.strides.empty()) {
      strides_ = layout.strides;
    } else {
      std::vector<int> order = layout.order;
      if (order.empty()) {
        order.resize(rank);
        std::iota(order.begin(), order.end(), 0);
      }
      int64_t running = 1;
      for (size_t i = order.size(); i-- > 0;) {
        strides_[order[i]] = running;
        running *= dims_[order[i]] + layout.pad;
      }
    }
    int64_t elements = offset_ + 1 + layout.pad;
    if (numel() > 0) {
      for (size_t i = 0; i < rank; ++i) elements += (dims_[i] - 1) * strides_[i];
    }
    storage_elements_ = elements;
    const size_t bytes = static_cast<size_t>(elements * ElementBytes(dtype_));
    storage_.assign((bytes + 7) / 8, 0);
    Fill(fill);
    handle_.reset(msdaCreateTensor(dims_.data(), rank, dtype_, strides_.data(), offset_, device,
                                   device_id, storage_.data()));
    EXPECT_NE(handle_, nullptr) << "msdaCreateTensor: " << msdaGetLastErrorMessage();
  }

  msdaTensor* get() const { return handle_.get(); }
  const std::vector<int64_t>& dims() const { return dims_; }
  const std::vector<int64_t>& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  msdaDataType dtype() const { return dtype_; }
  int64_t numel() const { return NumElements(dims_); }
  void* data() { return storage_.data(); }
  unsigned char* bytes() { return reinterpret_cast<unsigned char*>(storage_.data()); }
  const unsigned char* bytes() const {
    return reinterpret_cast<const unsigned char*>(storage_.data());
  }
  size_t storage_bytes() const {
    return static_cast<size_t>(storage_elements_ * ElementBytes(dtype_));
  }

  // Storage element index of a row-major logical index.
  int64_t Physical(int64_t logical) const {
    int64_t e = offset_;
    for (size_t i = dims_.size(); i-- > 0;) {
      e += (logical % dims_[i]) * strides_[i];
      logical /= dims_[i];
    }
    return e;
  }
  double Get(int64_t logical) const {
    return LoadElement(bytes() + Physical(logical) * ElementBytes(dtype_), dtype_);
  }
  void Set(int64_t logical, double v) {
    StoreElement(bytes() + Physical(logical) * ElementBytes(dtype_), dtype_, v);
  }
  void SetAll(const std::vector<double>& values) {
    EXPECT_EQ(static_cast<int64_t>(values.size()), numel());
    for (int64_t i = 0; i < numel(); ++i) Set(i, values[i]);
  }
  std::vector<double> GetAll() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[i] = Get(i);
    return v;
  }
  // The bytes of every logical element, in row-major order.
  std::vector<unsigned char> ViewBytes() const {
    const int64_t size = ElementBytes(dtype_);
    std::vector<unsigned char> out(static_cast<size_t>(numel() * size));
    for (int64_t i = 0; i < numel(); ++i) {
      std::memcpy(out.data() + i * size, bytes() + Physical(i) * size, size);
    }
    return out;
  }
  std::vector<unsigned char> AllBytes() const {
    return std::vector<unsigned char>(bytes(), bytes() + storage_bytes());
  }
  // True if every storage byte (view or not) is `byte`.
  bool AllBytesAre(unsigned char byte) const {
    const unsigned char* b = bytes();
    for (size_t i = 0; i < storage_bytes(); ++i) {
      if (b[i] != byte) return false;
    }
    return true;
  }
  void Fill(unsigned char byte) { std::memset(storage_.data(), byte, storage_.size() * 8); }
  // True if every storage byte outside the view still holds the fill byte.
  bool GapsIntact() const {
    std::vector<bool> covered(static_cast<size_t>(storage_elements_), false);
    for (int64_t i = 0; i < numel(); ++i) covered[Physical(i)] = true;
    const int64_t size = ElementBytes(dtype_);
    for (int64_t e = 0; e < storage_elements_; ++e) {
      if (covered[e]) continue;
      for (int64_t k = 0; k < size; ++k) {
        if (bytes()[e * size + k] != fill_) return false;
      }
    }
    return true;
  }

 private:
  std::vector<int64_t> dims_;
  std::vector<int64_t> strides_;
  msdaDataType dtype_;
  int64_t offset_;
  unsigned char fill_;
  int64_t storage_elements_ = 0;
  std::vector<uint64_t> storage_;
  TensorPtr handle_;
};

// Caller-provided workspace: 64-byte aligned, with guard bytes on both sides, and refilled
// with garbage (alternately all 0xFF, i.e. NaN in every float type, and random bytes) before
// every run, since the library must not assume it is zeroed.
class Workspace {
 public:
  static constexpr size_t kGuard = 64;
  explicit Workspace(uint64_t bytes) : bytes_(static_cast<size_t>(bytes)) {
    buffer_.assign(bytes_ + 2 * kGuard + 64, 0x5A);
    const uintptr_t base = reinterpret_cast<uintptr_t>(buffer_.data()) + kGuard;
    start_ =
        static_cast<size_t>((base + 63) / 64 * 64 - reinterpret_cast<uintptr_t>(buffer_.data()));
    Scramble();
  }
  void* data() { return buffer_.data() + start_; }
  uint64_t size() const { return bytes_; }
  void Scramble() {
    static std::atomic<uint64_t> counter{0};
    const uint64_t n = counter.fetch_add(1);
    unsigned char* p = buffer_.data() + start_;
    if (n % 2 == 0) {
      std::memset(p, 0xFF, bytes_);
    } else {
      std::mt19937_64 rng(n);
      size_t i = 0;
      for (; i + 8 <= bytes_; i += 8) {
        const uint64_t r = rng();
        std::memcpy(p + i, &r, 8);
      }
      for (; i < bytes_; ++i) p[i] = static_cast<unsigned char>(rng() >> 56);
    }
  }
  bool GuardsIntact() const {
    for (size_t i = 0; i < start_; ++i) {
      if (buffer_[i] != 0x5A) return false;
    }
    for (size_t i = start_ + bytes_; i < buffer_.size(); ++i) {
      if (buffer_[i] != 0x5A) return false;
    }
    return true;
  }

 private:
  size_t bytes_;
  size_t start_ = 0;
  std::vector<unsigned char> buffer_;
};

// The number of elements where got differs from ref by more than bound + storage rounding of
// `dtype`; with report, the first mismatches are reported with their indices. NaN never
// passes.
inline int64_t CountMismatches(const std::string& what, const std::vector<double>& got,
                               const std::vector<double>& ref, const std::vector<double>& bound,
                               msdaDataType dtype, const std::vector<int64_t>& dims, bool report) {
  if (got.size() != ref.size() || bound.size() != ref.size()) {
    if (report) ADD_FAILURE() << what << ": " << got.size() << " elements, expected " << ref.size();
    return static_cast<int64_t>(std::max(got.size(), ref.size()));
  }
  const double u = UnitRoundoff(dtype), floor = UnderflowFloor(dtype);
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    // Rounding the computed result (within bound of ref) to the dtype: (1 + u) bound.
    const double tol = (1.0 + u) * bound[i] + u * std::fabs(ref[i]) + floor;
    if (!(std::fabs(got[i] - ref[i]) <= tol)) {
      if (report && ++bad <= 8) {
        ADD_FAILURE() << what << IndexString(static_cast<int64_t>(i), dims) << ": got " << got[i]
                      << ", reference " << ref[i] << ", |diff| " << std::fabs(got[i] - ref[i])
                      << " > tolerance " << tol;
      } else if (!report) {
        ++bad;
      }
    }
  }
  return bad;
}

// Expects got to match ref element-wise within bound + storage rounding of `dtype`.
inline void ExpectClose(const std::string& what, const std::vector<double>& got,
                        const std::vector<double>& ref, const std::vector<double>& bound,
                        msdaDataType dtype, const std::vector<int64_t>& dims) {
  const int64_t bad = CountMismatches(what, got, ref, bound, dtype, dims, true);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size()
                    << " elements out of tolerance (dtype " << DtypeName(dtype) << ")";
}

inline std::string LastError() { return msdaGetLastErrorMessage(); }

class MsdaTester {
 public:
  using Levels = std::vector<std::array<int64_t, 2>>;

  MsdaTester& Batch(int64_t n) {
    p_.batch = n;
    return *this;
  }
  MsdaTester& Queries(int64_t n) {
    p_.queries = n;
    return *this;
  }
  MsdaTester& Heads(int64_t n) {
    p_.heads = n;
    return *this;
  }
  MsdaTester& Dims(int64_t n) {
    p_.dims = n;
    return *this;
  }
  MsdaTester& Points(int64_t n) {
    p_.points = n;
    return *this;
  }
  MsdaTester& LevelShapes(Levels levels) {
    p_.levels = std::move(levels);
    return *this;
  }
  // Sets value's dtype (weights, output and value gradients follow), and the locations' dtype
  // unless LocDtype is given.
  MsdaTester& Dtype(msdaDataType t) {
    value_dtype_ = t;
    return *this;
  }
  MsdaTester& LocDtype(msdaDataType t) {
    loc_dtype_ = t;
    loc_dtype_set_ = true;
    return *this;
  }
  MsdaTester& IndexDtype(msdaDataType t) {
    index_dtype_ = t;
    return *this;
  }
  MsdaTester& Threads(int n) {
    threads_ = n;
    return *this;
  }
  MsdaTester& Seed(uint64_t s) {
    seed_ = s;
    return *this;
  }
  // Normalised range the random x and y are drawn from.
  MsdaTester& LocRange(double lo, double hi) {
    loc_lo_ = lo;
    loc_hi_ = hi;
    return *this;
  }
  MsdaTester& AttnRange(double lo, double hi) {
    attn_lo_ = lo;
    attn_hi_ = hi;
    return *this;
  }
  // Keeps random h_im and w_im at least this far (in pixels) from integers, where the bilinear
  // gradient jumps (pixel boundaries and the gate at -1 and H_l): gradients there are
  // compared only by the tests that place points exactly.
  MsdaTester& Margin(double pixels) {
    margin_ = pixels;
    return *this;
  }
  // Edits the generated inputs (placing special points, say); values are then rounded to
  // their dtypes.
  MsdaTester& Edit(std::function<void(const Problem&, Inputs*)> fn) {
    edit_ = std::move(fn);
    return *this;
  }
  MsdaTester& Grads(bool value, bool loc, bool attn) {
    want_value_ = value;
    want_loc_ = loc;
    want_attn_ = attn;
    return *this;
  }
  MsdaTester& ValueLayout(Layout l) {
    value_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& LocLayout(Layout l) {
    loc_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& AttnLayout(Layout l) {
    attn_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& OutLayout(Layout l) {
    out_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& GradOutLayout(Layout l) {
    grad_out_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& GradValueLayout(Layout l) {
    grad_value_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& GradLocLayout(Layout l) {
    grad_loc_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& GradAttnLayout(Layout l) {
    grad_attn_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& ShapesLayout(Layout l) {
    shapes_layout_ = std::move(l);
    return *this;
  }
  MsdaTester& StartsLayout(Layout l) {
    starts_layout_ = std::move(l);
    return *this;
  }

  const Problem& problem() const { return p_; }
  msdaDataType value_dtype() const { return value_dtype_; }
  msdaDataType loc_dtype() const { return loc_dtype_set_ ? loc_dtype_ : value_dtype_; }

  // Random inputs, already rounded to their storage dtypes.
  Inputs MakeInputs() const {
    std::mt19937_64 rng(seed_);
    std::uniform_real_distribution<double> unit(-1.0, 1.0);
    std::uniform_real_distribution<double> attn(attn_lo_, attn_hi_);
    std::uniform_real_distribution<double> loc(loc_lo_, loc_hi_);
    Inputs in;
    in.value.resize(NumElements(p_.value_dims()));
    for (double& v : in.value) v = unit(rng);
    in.attn.resize(NumElements(p_.attn_dims()));
    for (double& v : in.attn) v = attn(rng);
    in.grad_out.resize(NumElements(p_.out_dims()));
    for (double& v : in.grad_out) v = unit(rng);
    in.loc.resize(NumElements(p_.loc_dims()));
    const msdaDataType lt = loc_dtype();
    for (size_t i = 0; i < in.loc.size(); ++i) {
      const int64_t level = static_cast<int64_t>(i / 2 / p_.points) % p_.num_levels();
      // x scales with W_l, y with H_l.
      const double size = static_cast<double>(p_.levels[level][i % 2 == 0 ? 1 : 0]);
      double v = 0;
      for (int tries = 0;; ++tries) {
        v = RoundTo(lt, loc(rng));
        const double im = v * size - 0.5;
        if (margin_ <= 0 || std::fabs(im - std::nearbyint(im)) >= margin_) break;
        if (tries > 10000) {
          ADD_FAILURE() << "cannot place a point away from pixel boundaries";
          break;
        }
      }
      in.loc[i] = v;
    }
    if (edit_) edit_(p_, &in);
    for (double& v : in.value) v = RoundTo(value_dtype_, v);
    for (double& v : in.attn) v = RoundTo(value_dtype_, v);
    for (double& v : in.grad_out) v = RoundTo(value_dtype_, v);
    for (double& v : in.loc) v = RoundTo(lt, v);
    return in;
  }

  // The input tensors of one call, set from `in`.
  struct InputTensors {
    HostTensor value, shapes, starts, loc, attn;
    Inputs seen;  // The inputs read back through the views: what the library reads.
    std::vector<unsigned char> snapshot;
    std::vector<unsigned char> Bytes() const {
      std::vector<unsigned char> all;
      for (const HostTensor* t : {&value, &shapes, &starts, &loc, &attn}) {
        const std::vector<unsigned char> b = t->AllBytes();
        all.insert(all.end(), b.begin(), b.end());
      }
      return all;
    }
  };
  std::unique_ptr<InputTensors> MakeInputTensors(const Inputs& in) const {
    const int64_t L = p_.num_levels();
    std::unique_ptr<InputTensors> t(
        new InputTensors{HostTensor(p_.value_dims(), value_dtype_, value_layout_),
                         HostTensor({L, 2}, index_dtype_, shapes_layout_),
                         HostTensor({L}, index_dtype_, starts_layout_),
                         HostTensor(p_.loc_dims(), loc_dtype(), loc_layout_),
                         HostTensor(p_.attn_dims(), value_dtype_, attn_layout_),
                         Inputs(),
                         {}});
    t->value.SetAll(in.value);
    t->loc.SetAll(in.loc);
    t->attn.SetAll(in.attn);
    const std::vector<int64_t> starts = p_.level_start();
    for (int64_t l = 0; l < L; ++l) {
      t->shapes.Set(2 * l, static_cast<double>(p_.levels[l][0]));
      t->shapes.Set(2 * l + 1, static_cast<double>(p_.levels[l][1]));
      t->starts.Set(l, static_cast<double>(starts[l]));
    }
    t->seen.value = t->value.GetAll();
    t->seen.loc = t->loc.GetAll();
    t->seen.attn = t->attn.GetAll();
    t->seen.grad_out = in.grad_out;
    t->snapshot = t->Bytes();
    return t;
  }

  struct ForwardRun {
    Inputs seen;
    std::vector<double> out;
    std::vector<unsigned char> out_bytes;
  };

  // Runs the forward `repeats` times, each with fresh NaN-filled output storage and freshly
  // scrambled workspace, and checks that every run gives the same bytes, writes nothing
  // outside the output view or the workspace, and leaves the inputs alone.
  ForwardRun RunForward(const Inputs& in, int repeats = 2) const {
    ForwardRun run;
    std::unique_ptr<InputTensors> t = MakeInputTensors(in);
    run.seen = t->seen;
    for (int rep = 0; rep < repeats; ++rep) {
      HostTensor out(p_.out_dims(), value_dtype_, out_layout_, 0xFF);
      EXPECT_EQ(msdaSetNumThreads(threads_), MSDA_SUCCESS);
      uint64_t ws_size = 0;
      msdaExecutor* ex = nullptr;
      const msdaStatus planned =
          msdaForwardGetWorkspaceSize(t->value.get(), t->shapes.get(), t->starts.get(),
                                      t->loc.get(), t->attn.get(), out.get(), &ws_size, &ex);
      EXPECT_EQ(planned, MSDA_SUCCESS) << LastError();
      if (planned != MSDA_SUCCESS) return run;
      Workspace ws(ws_size);  // Filled with 0xFF or random bytes, alternately.
      const msdaStatus ran = msdaForward(ws.data(), ws_size, ex, nullptr);
      EXPECT_EQ(ran, MSDA_SUCCESS) << LastError();
      EXPECT_TRUE(ws.GuardsIntact()) << "forward wrote outside its workspace";
      EXPECT_TRUE(out.GapsIntact()) << "forward wrote outside the output view";
      if (rep == 0) {
        run.out = out.GetAll();
        run.out_bytes = out.ViewBytes();
      } else {
        EXPECT_TRUE(out.ViewBytes() == run.out_bytes)
            << "forward output depends on the run (workspace contents?)";
      }
    }
    EXPECT_TRUE(t->Bytes() == t->snapshot) << "forward modified an input";
    return run;
  }

  struct BackwardRun {
    Inputs seen;
    std::vector<double> grad_value, grad_loc, grad_attn;
    std::vector<unsigned char> value_bytes, loc_bytes, attn_bytes;
  };

  // Runs the backward `repeats` times (fresh NaN-filled gradient storage, scrambled workspace)
  // and checks the runs agree bitwise and write nowhere else. The runs alternate the two
  // strategies for grad_value, by head (where it can run) and the counting sort, so that every
  // backward test also checks that they agree byte for byte.
  BackwardRun RunBackward(const Inputs& in, int repeats = 2) const {
    struct StrategyReset {
      ~StrategyReset() { msdaTestingSetPlannerOptions(-1, -1); }
    } reset;
    BackwardRun run;
    std::unique_ptr<InputTensors> t = MakeInputTensors(in);
    HostTensor grad_out(p_.out_dims(), value_dtype_, grad_out_layout_);
    grad_out.SetAll(in.grad_out);
    run.seen = t->seen;
    run.seen.grad_out = grad_out.GetAll();
    const std::vector<unsigned char> grad_out_bytes = grad_out.AllBytes();
    for (int rep = 0; rep < repeats; ++rep) {
      std::unique_ptr<HostTensor> gv, gl, ga;
      if (want_value_) gv.reset(new HostTensor(p_.value_dims(), value_dtype_, grad_value_layout_));
      if (want_loc_) gl.reset(new HostTensor(p_.loc_dims(), loc_dtype(), grad_loc_layout_));
      if (want_attn_) ga.reset(new HostTensor(p_.attn_dims(), value_dtype_, grad_attn_layout_));
      msdaTestingSetPlannerOptions(-1, rep % 2 == 0 ? 1 : 2);  // By head, counting sort.
      EXPECT_EQ(msdaSetNumThreads(threads_), MSDA_SUCCESS);
      uint64_t ws_size = 0;
      msdaExecutor* ex = nullptr;
      const msdaStatus planned = msdaBackwardGetWorkspaceSize(
          t->value.get(), t->shapes.get(), t->starts.get(), t->loc.get(), t->attn.get(),
          grad_out.get(), gv ? gv->get() : nullptr, gl ? gl->get() : nullptr,
          ga ? ga->get() : nullptr, &ws_size, &ex);
      EXPECT_EQ(planned, MSDA_SUCCESS) << LastError();
      if (planned != MSDA_SUCCESS) return run;
      Workspace ws(ws_size);  // Filled with 0xFF or random bytes, alternately.
      const msdaStatus ran = msdaBackward(ws.data(), ws_size, ex, nullptr);
      EXPECT_EQ(ran, MSDA_SUCCESS) << LastError();
      EXPECT_TRUE(ws.GuardsIntact()) << "backward wrote outside its workspace";
      struct Out {
        const char* name;
        HostTensor* tensor;
        std::vector<double>* values;
        std::vector<unsigned char>* bytes;
      };
      for (const Out& o :
           {Out{"grad_value", gv.get(), &run.grad_value, &run.value_bytes},
            Out{"grad_sampling_locations", gl.get(), &run.grad_loc, &run.loc_bytes},
            Out{"grad_attention_weights", ga.get(), &run.grad_attn, &run.attn_bytes}}) {
        if (o.tensor == nullptr) continue;
        EXPECT_TRUE(o.tensor->GapsIntact()) << "backward wrote outside the " << o.name << " view";
        if (rep == 0) {
          *o.values = o.tensor->GetAll();
          *o.bytes = o.tensor->ViewBytes();
        } else {
          EXPECT_TRUE(o.tensor->ViewBytes() == *o.bytes)
              << o.name
              << " differs between two runs of the same backward (the by-head and "
                 "counting-sort strategies, alternately)";
        }
      }
    }
    EXPECT_TRUE(t->Bytes() == t->snapshot) << "backward modified an input";
    EXPECT_TRUE(grad_out.AllBytes() == grad_out_bytes) << "backward modified grad_output";
    return run;
  }

  // Forward vs the reference, on random (or edited) inputs.
  void TestForward() const {
    const Inputs in = MakeInputs();
    const ForwardRun run = RunForward(in);
    if (::testing::Test::HasFailure()) return;
    const ForwardResult ref = ReferenceForward(p_, run.seen, ArithmeticRoundoff(value_dtype_));
    ExpectClose("output", run.out, ref.out, ref.bound, value_dtype_, p_.out_dims());
  }

  // Every requested gradient vs the reference.
  void TestBackward() const {
    const Inputs in = MakeInputs();
    const BackwardRun run = RunBackward(in);
    if (::testing::Test::HasFailure()) return;
    const BackwardResult ref = ReferenceBackward(p_, run.seen, ArithmeticRoundoff(value_dtype_));
    if (want_value_) {
      ExpectClose("grad_value", run.grad_value, ref.grad_value, ref.bound_value, value_dtype_,
                  p_.value_dims());
    }
    if (want_loc_) {
      ExpectClose("grad_sampling_locations", run.grad_loc, ref.grad_loc, ref.bound_loc, loc_dtype(),
                  p_.loc_dims());
    }
    if (want_attn_) {
      ExpectClose("grad_attention_weights", run.grad_attn, ref.grad_attn, ref.bound_attn,
                  value_dtype_, p_.attn_dims());
    }
  }

 private:
  Problem p_;
  msdaDataType value_dtype_ = MSDA_FLOAT32;
  msdaDataType loc_dtype_ = MSDA_FLOAT32;
  bool loc_dtype_set_ = false;
  msdaDataType index_dtype_ = MSDA_INT64;
  int threads_ = 2;
  uint64_t seed_ = 0x5EED;
  double loc_lo_ = -0.1, loc_hi_ = 1.1;
  double attn_lo_ = -1.0, attn_hi_ = 1.0;
  double margin_ = 1e-3;
  std::function<void(const Problem&, Inputs*)> edit_;
  bool want_value_ = true, want_loc_ = true, want_attn_ = true;
  Layout value_layout_, loc_layout_, attn_layout_, out_layout_, grad_out_layout_,
      grad_value_layout_, grad_loc_layout_, grad_attn_layout_, shapes_layout_, starts_layout_;
};

}  // namespace msda_test

#endif  // MSDA_TESTS_CPP_TESTER_H_
