#include "validate.h"

#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "error.h"
#include "tensor.h"

namespace msda {
namespace {

enum class Role { kInput, kOutput };

struct Named {
  const char* name;
  const msdaTensor* tensor;
  Role role;
};

std::string ShapeString(const msdaTensor& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.dims[i]);
  }
  return s + "]";
}

bool IsFloat(msdaDataType d) {
  return d == MSDA_FLOAT32 || d == MSDA_FLOAT16 || d == MSDA_BFLOAT16 || d == MSDA_FLOAT64;
}
bool IsIndex(msdaDataType d) { return d == MSDA_INT32 || d == MSDA_INT64; }

msdaStatus CheckDevice(const Named& n, const msdaTensor& reference) {
  const msdaTensor& t = *n.tensor;
  if (t.device == MSDA_DEVICE_CUDA) {
    return Refuse(MSDA_ERROR_INVALID_DEVICE,
                  std::string(n.name) +
                      ": device MSDA_DEVICE_CUDA is reserved; this build has only the CPU "
                      "backend (MSDA_DEVICE_CPU)");
  }
  if (t.device != MSDA_DEVICE_CPU) {
    return Refuse(MSDA_ERROR_INVALID_DEVICE,
                  std::string(n.name) + ": unknown device " + std::to_string(t.device));
  }
  if (t.device_id != reference.device_id) {
    return Refuse(MSDA_ERROR_INVALID_DEVICE,
                  std::string(n.name) + ": must be on the same device as value (device id " +
                      std::to_string(reference.device_id) + "), got device id " +
                      std::to_string(t.device_id));
  }
  return MSDA_SUCCESS;
}

msdaStatus CheckRank(const Named& n, size_t rank, const char* layout) {
  if (n.tensor->dims.size() != rank) {
    return Refuse(MSDA_ERROR_INVALID_RANK, std::string(n.name) + ": must have rank " +
                                               std::to_string(rank) + " " + layout + ", got " +
                                               ShapeString(*n.tensor));
  }
  return MSDA_SUCCESS;
}

// Checks dims against expected values; -1 in expected means "any". what names each dim.
// Pointer and count, so that the calls with braced lists allocate nothing.
msdaStatus CheckDims(const Named& n, const int64_t* expected, size_t count,
                     const char* const* what) {
  const msdaTensor& t = *n.tensor;
  for (size_t i = 0; i < count; ++i) {
    if (expected[i] >= 0 && t.dims[i] != expected[i]) {
      return Refuse(MSDA_ERROR_SHAPE_MISMATCH,
                    std::string(n.name) + ": dim " + std::to_string(i) + " (" + what[i] +
                        ") must be " + std::to_string(expected[i]) + ", got " +
                        std::to_string(t.dims[i]) + " in shape " + ShapeString(t));
    }
  }
  return MSDA_SUCCESS;
}
msdaStatus CheckDims(const Named& n, std::initializer_list<int64_t> expected,
                     std::initializer_list<const char*> what) {
  return CheckDims(n, expected.begin(), expected.size(), what.begin());
}
msdaStatus CheckDims(const Named& n, const std::vector<int64_t>& expected,
                     const std::vector<const char*>& what) {
  return CheckDims(n, expected.data(), expected.size(), what.data());
}
msdaStatus CheckDims(const Named& n, const std::vector<int64_t>& expected,
                     std::initializer_list<const char*> what) {
  return CheckDims(n, expected.data(), expected.size(), what.begin());
}

msdaStatus CheckDtype(const Named& n, msdaDataType expected, const char* rule) {
  if (n.tensor->dtype != expected) {
    return Refuse(MSDA_ERROR_INVALID_DTYPE, std::string(n.name) + ": dtype must be " +
                                                DataTypeName(expected) + " (" + rule + "), got " +
                                                DataTypeName(n.tensor->dtype));
  }
  return MSDA_SUCCESS;
}

// Memory rules: sizes fit int64, data present when there are elements, outputs do not alias
// themselves, each other or any input.
msdaStatus CheckMemory(const std::vector<Named>& tensors) {
  struct Span {
    int64_t begin, end;
    const char* base;
  };
  std::vector<Span> spans(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Named& n = tensors[i];
    const msdaTensor& t = *n.tensor;
    int64_t begin, end;
    if (NumElements(t) < 0 || !ByteSpan(t, &begin, &end)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED,
                    std::string(n.name) + ": element count or byte span of shape " +
                        ShapeString(t) + " with its strides and offset overflows int64");
    }
    if (NumElements(t) > 0 && t.data == nullptr) {
      return Refuse(MSDA_ERROR_NULL_POINTER,
                    std::string(n.name) + ": data is NULL but the tensor has elements");
    }
    if (n.role == Role::kOutput && SelfOverlaps(t)) {
      return Refuse(MSDA_ERROR_INVALID_LAYOUT,
                    std::string(n.name) +
                        ": output strides make distinct elements share memory (an output must "
                        "not overlap itself)");
    }
    spans[i] = {begin, end, static_cast<const char*>(t.data)};
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].role != Role::kOutput || spans[i].begin == spans[i].end) continue;
    const uintptr_t ib = reinterpret_cast<uintptr_t>(spans[i].base) + spans[i].begin;
    const uintptr_t ie = reinterpret_cast<uintptr_t>(spans[i].base) + spans[i].end;
    for (size_t j = 0; j < tensors.size(); ++j) {
      if (j == i || spans[j].begin == spans[j].end) continue;
      const uintptr_t jb = reinterpret_cast<uintptr_t>(spans[j].base) + spans[j].begin;
      const uintptr_t je = reinterpret_cast<uintptr_t>(spans[j].base) + spans[j].end;
      if (ib < je && jb < ie) {
        return Refuse(MSDA_ERROR_INVALID_LAYOUT,
                      std::string(tensors[i].name) + ": output memory overlaps " + tensors[j].name +
                          " (outputs must not share memory with any input "
                          "or other output)");
      }
    }
  }
  return MSDA_SUCCESS;
}

int64_t ReadIndex(const msdaTensor& t, int64_t element) {
  const char* p = static_cast<const char*>(t.data);
  if (t.dtype == MSDA_INT32) return reinterpret_cast<const int32_t*>(p)[element];
  return reinterpret_cast<const int64_t*>(p)[element];
}

// Reads spatial_shapes and level_start_index (host memory on the CPU) into the level table.
msdaStatus ReadLevels(const msdaTensor& shapes, const msdaTensor& starts, int64_t keys,
                      std::vector<Level>* levels) {
  const int64_t num_levels = shapes.dims[0];
  levels->assign(num_levels, Level());
  int64_t next_start = 0;
  for (int64_t l = 0; l < num_levels; ++l) {
    Level& level = (*levels)[l];
    level.height = ReadIndex(shapes, shapes.offset + l * shapes.strides[0]);
    level.width = ReadIndex(shapes, shapes.offset + l * shapes.strides[0] + shapes.strides[1]);
    level.start = ReadIndex(starts, starts.offset + l * starts.strides[0]);
    if (level.height < 1 || level.width < 1) {
      return Refuse(MSDA_ERROR_INVALID_VALUE, "spatial_shapes: level " + std::to_string(l) +
                                                  " has (H, W) = (" + std::to_string(level.height) +
                                                  ", " + std::to_string(level.width) +
                                                  "); both must be >= 1");
    }
    int64_t area;
    if (__builtin_mul_overflow(level.height, level.width, &area) ||
        __builtin_add_overflow(next_start, area, &area)) {
      return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "spatial_shapes: level " + std::to_string(l) +
                                                   " makes the number of keys overflow int64");
    }
    if (level.start != next_start) {
      return Refuse(MSDA_ERROR_INVALID_VALUE,
                    "level_start_index: entry " + std::to_string(l) + " must be " +
                        std::to_string(next_start) +
                        " (the sum of H*W of the levels before it), got " +
                        std::to_string(level.start));
    }
    next_start = area;
  }
  if (next_start != keys) {
    return Refuse(MSDA_ERROR_INVALID_VALUE, "spatial_shapes: the sum of H*W over levels is " +
                                                std::to_string(next_start) + " but value has " +
                                                std::to_string(keys) + " keys (dim 1)");
  }
  return MSDA_SUCCESS;
}

#define MSDA_RETURN_IF_ERROR(expr)               \
  do {                                           \
    const msdaStatus status_ = (expr);           \
    if (status_ != MSDA_SUCCESS) return status_; \
  } while (0)

// The rules shared by forward and backward: the five inputs, plus the tensors in `outputs`
// (already named), which must also be CPU tensors.
msdaStatus ValidateCommon(const CallTensors& call, const std::vector<Named>& extra, Problem* p) {
  const std::vector<Named> inputs = {
      {"value", call.value, Role::kInput},
      {"spatial_shapes", call.spatial_shapes, Role::kInput},
      {"level_start_index", call.level_start_index, Role::kInput},
      {"sampling_locations", call.sampling_locations, Role::kInput},
      {"attention_weights", call.attention_weights, Role::kInput},
  };
  std::vector<Named> all;
  all.reserve(inputs.size() + extra.size());
  all.insert(all.end(), inputs.begin(), inputs.end());
  all.insert(all.end(), extra.begin(), extra.end());
  for (const Named& n : all) {
    if (n.tensor == nullptr && (n.role == Role::kInput || std::strcmp(n.name, "output") == 0)) {
      return Refuse(MSDA_ERROR_NULL_POINTER, std::string(n.name) + ": tensor is NULL");
    }
  }
  std::vector<Named> present;
  present.reserve(all.size());
  for (const Named& n : all) {
    if (n.tensor != nullptr) present.push_back(n);
  }
  for (const Named& n : present) MSDA_RETURN_IF_ERROR(CheckDevice(n, *call.value));

  // Dtypes.
  const Named& value = inputs[0];
  const Named& shapes = inputs[1];
  const Named& starts = inputs[2];
  const Named& locs = inputs[3];
  const Named& weights = inputs[4];
  if (!IsFloat(call.value->dtype)) {
    return Refuse(MSDA_ERROR_INVALID_DTYPE,
                  std::string("value: dtype must be FLOAT32, FLOAT16, BFLOAT16 or FLOAT64, got ") +
                      DataTypeName(call.value->dtype));
  }
  const msdaDataType vt = call.value->dtype;
  for (const Named* n : {&shapes, &starts}) {
    if (!IsIndex(n->tensor->dtype)) {
      return Refuse(MSDA_ERROR_INVALID_DTYPE, std::string(n->name) +
                                                  ": dtype must be INT32 or INT64, got " +
                                                  DataTypeName(n->tensor->dtype));
    }
  }
  const msdaDataType lt = call.sampling_locations->dtype;
  if (lt != vt && lt != MSDA_FLOAT32) {
    return Refuse(MSDA_ERROR_INVALID_DTYPE,
                  std::string("sampling_locations: dtype must be value's dtype (") +
                      DataTypeName(vt) + ") or FLOAT32, got " + DataTypeName(lt));
  }
  MSDA_RETURN_IF_ERROR(CheckDtype(weights, vt, "value's dtype"));
  for (const Named& n : extra) {
    if (n.tensor == nullptr) continue;
    const bool is_loc_grad = std::strcmp(n.name, "grad_sampling_locations") == 0;
    MSDA_RETURN_IF_ERROR(CheckDtype(n, is_loc_grad ? lt : vt,
                                    is_loc_grad ? "sampling_locations' dtype" : "value's dtype"));
  }

  // Options (the ...Ex calls).
  const msdaOptions* options = call.options;
  if (options != nullptr) {
    if (options->structSize != sizeof(msdaOptions)) {
      return Refuse(MSDA_ERROR_INVALID_VALUE, "options: structSize must be sizeof(msdaOptions) = " +
                                                  std::to_string(sizeof(msdaOptions)) +
                                                  " (set by msdaOptionsInit), got " +
                                                  std::to_string(options->structSize));
    }
    // Read as an integer: a value outside the enum may not be loaded as one (UBSan's enum check).
    int32_t method = 0;
    std::memcpy(&method, &options->samplingMethod, sizeof method);
    if (method != MSDA_SAMPLING_BILINEAR && method != MSDA_SAMPLING_DISCRETE) {
      return Refuse(MSDA_ERROR_INVALID_VALUE,
                    "options: samplingMethod must be MSDA_SAMPLING_BILINEAR (0) or "
                    "MSDA_SAMPLING_DISCRETE (1), got " +
                        std::to_string(method));
    }
    if (options->numPointsList == nullptr && options->numLevels != 0) {
      return Refuse(MSDA_ERROR_NULL_POINTER, "options: numPointsList is NULL but numLevels is " +
                                                 std::to_string(options->numLevels));
    }
    p->sampling = method == MSDA_SAMPLING_DISCRETE ? Sampling::kDiscrete : Sampling::kBilinear;
  }
  const bool flat = options != nullptr && options->numPointsList != nullptr;

  // Ranks and dims.
  MSDA_RETURN_IF_ERROR(CheckRank(value, 4, "[batch, keys, heads, embed_dims]"));
  MSDA_RETURN_IF_ERROR(CheckRank(shapes, 2, "[levels, 2]"));
  MSDA_RETURN_IF_ERROR(CheckRank(starts, 1, "[levels]"));
  const size_t loc_rank = flat ? 5 : 6;
  const char* const loc_layout = flat ? "[batch, queries, heads, sum of numPointsList, 2]"
                                      : "[batch, queries, heads, levels, points, 2]";
  const char* const attn_layout = flat ? "[batch, queries, heads, sum of numPointsList]"
                                       : "[batch, queries, heads, levels, points]";
  MSDA_RETURN_IF_ERROR(CheckRank(locs, loc_rank, loc_layout));
  MSDA_RETURN_IF_ERROR(CheckRank(weights, loc_rank - 1, attn_layout));
  p->batch = call.value->dims[0];
  p->keys = call.value->dims[1];
  p->heads = call.value->dims[2];
  p->dims = call.value->dims[3];
  const int64_t num_levels = call.spatial_shapes->dims[0];
  p->queries = call.sampling_locations->dims[1];
  p->value_dtype = vt;
  p->loc_dtype = lt;
  if (p->heads < 1 || p->dims < 1) {
    return Refuse(MSDA_ERROR_SHAPE_MISMATCH,
                  "value: heads (dim 2) and embed_dims (dim 3) must be >= 1, got shape " +
                      ShapeString(*call.value));
  }
  if (num_levels < 1) {
    return Refuse(MSDA_ERROR_SHAPE_MISMATCH, "spatial_shapes: must have at least one level");
  }
  MSDA_RETURN_IF_ERROR(CheckDims(shapes, {-1, 2}, {"levels", "(H, W)"}));
  MSDA_RETURN_IF_ERROR(CheckDims(starts, {num_levels}, {"levels, from spatial_shapes"}));
  std::vector<int64_t> point_dims;  // The dims of sampling_locations before the (x, y) dim.
  std::vector<const char*> point_names;
  if (flat) {
    if (static_cast<int64_t>(options->numLevels) != num_levels) {
      return Refuse(MSDA_ERROR_SHAPE_MISMATCH, "options: numPointsList has " +
                                                   std::to_string(options->numLevels) +
                                                   " entries but spatial_shapes has " +
                                                   std::to_string(num_levels) + " levels");
    }
    std::vector<int64_t> counts(num_levels);
    int64_t total = 0;
    for (int64_t l = 0; l < num_levels; ++l) {
      counts[l] = options->numPointsList[l];
      if (counts[l] < 1) {
        return Refuse(MSDA_ERROR_INVALID_VALUE, "options: numPointsList[" + std::to_string(l) +
                                                    "] must be >= 1, got " +
                                                    std::to_string(counts[l]));
      }
      if (__builtin_add_overflow(total, counts[l], &total)) {
        return Refuse(MSDA_ERROR_LIMIT_EXCEEDED,
                      "options: the sum of numPointsList overflows int64");
      }
    }
    // Equal counts are the 6-D problem seen through the flat layout (BindPoints).
    bool equal = true;
    for (int64_t c : counts) equal = equal && c == counts[0];
    if (equal) {
      p->points = counts[0];
    } else {
      p->SetLevelPoints(counts);
    }
    point_dims = {p->batch, -1, p->heads, total};
    point_names = {"batch, from value", "queries", "heads, from value",
                   "points, the sum of numPointsList"};
  } else {
    p->points = call.sampling_locations->dims[4];
    point_dims = {p->batch, -1, p->heads, num_levels, -1};
    point_names = {"batch, from value", "queries", "heads, from value",
                   "levels, from spatial_shapes", "points"};
  }
  {
    std::vector<int64_t> expected = point_dims;
    std::vector<const char*> what = point_names;
    expected.push_back(2);
    what.push_back("(x, y)");
    MSDA_RETURN_IF_ERROR(CheckDims(locs, expected, what));
  }
  if (!flat && p->points < 1) {
    return Refuse(MSDA_ERROR_SHAPE_MISMATCH,
                  "sampling_locations: points (dim 4) must be >= 1, got shape " +
                      ShapeString(*call.sampling_locations));
  }
  // attention_weights: the same dims as sampling_locations but the last.
  point_dims[1] = p->queries;
  point_names[1] = "queries, from sampling_locations";
  if (!flat) {
    point_dims[4] = p->points;
    point_names[4] = "points, from sampling_locations";
  }
  MSDA_RETURN_IF_ERROR(CheckDims(weights, point_dims, point_names));
  int64_t channels;
  if (__builtin_mul_overflow(p->heads, p->dims, &channels)) {
    return Refuse(MSDA_ERROR_LIMIT_EXCEEDED, "value: heads * embed_dims overflows int64");
  }
  for (const Named& n : extra) {
    if (n.tensor == nullptr) continue;
    auto is = [&n](const char* name) { return std::strcmp(n.name, name) == 0; };
    if (is("output") || is("grad_output")) {
      MSDA_RETURN_IF_ERROR(CheckRank(n, 3, "[batch, queries, heads * embed_dims]"));
      MSDA_RETURN_IF_ERROR(CheckDims(n, {p->batch, p->queries, channels},
                                     {"batch", "queries", "heads * embed_dims"}));
    } else if (is("grad_value")) {
      MSDA_RETURN_IF_ERROR(CheckRank(n, 4, "[batch, keys, heads, embed_dims], like value"));
      MSDA_RETURN_IF_ERROR(
          CheckDims(n, call.value->dims, {"batch", "keys", "heads", "embed_dims"}));
    } else if (is("grad_sampling_locations")) {
      MSDA_RETURN_IF_ERROR(CheckRank(n, loc_rank, "like sampling_locations"));
      static const char* const kFlat[] = {"batch", "queries", "heads", "points", "(x, y)"};
      static const char* const kLevels[] = {"batch",  "queries", "heads",
                                            "levels", "points",  "(x, y)"};
      const std::vector<int64_t>& dims = call.sampling_locations->dims;
      MSDA_RETURN_IF_ERROR(CheckDims(n, dims.data(), dims.size(), flat ? kFlat : kLevels));
    } else if (is("grad_attention_weights")) {
      MSDA_RETURN_IF_ERROR(CheckRank(n, loc_rank - 1, "like attention_weights"));
      static const char* const kFlat[] = {"batch", "queries", "heads", "points"};
      static const char* const kLevels[] = {"batch", "queries", "heads", "levels", "points"};
      const std::vector<int64_t>& dims = call.attention_weights->dims;
      MSDA_RETURN_IF_ERROR(CheckDims(n, dims.data(), dims.size(), flat ? kFlat : kLevels));
    }
  }

  MSDA_RETURN_IF_ERROR(CheckMemory(present));
  return ReadLevels(*call.spatial_shapes, *call.level_start_index, p->keys, &p->levels);
}

void CopyStrides(const msdaTensor& t, ValueStrides* st) {
  const int64_t* s = t.strides.data();
  *st = ValueStrides{s[0], s[1], s[2], s[3]};
}
// Points tensors in the flat layout [..., N(, 2)] get a level stride: P times the point
// stride when the counts are equal (a 6-D view), 0 otherwise (Problem::TensorPoint).
int64_t FlatLevelStride(const Problem& p, int64_t point_stride) {
  return p.flat_points() ? 0 : p.points * point_stride;
}
void CopyStrides(const msdaTensor& t, const Problem& p, LocationStrides* st) {
  const int64_t* s = t.strides.data();
  if (t.dims.size() == 5) {
    *st = LocationStrides{s[0], s[1], s[2], FlatLevelStride(p, s[3]), s[3], s[4]};
  } else {
    *st = LocationStrides{s[0], s[1], s[2], s[3], s[4], s[5]};
  }
}
void CopyStrides(const msdaTensor& t, const Problem& p, WeightStrides* st) {
  const int64_t* s = t.strides.data();
  if (t.dims.size() == 4) {
    *st = WeightStrides{s[0], s[1], s[2], FlatLevelStride(p, s[3]), s[3]};
  } else {
    *st = WeightStrides{s[0], s[1], s[2], s[3], s[4]};
  }
}
void CopyStrides(const msdaTensor& t, RowStrides* st) {
  const int64_t* s = t.strides.data();
  *st = RowStrides{s[0], s[1], s[2]};
}

void BindInputs(const CallTensors& call, const Problem& p, Params* params) {
  params->value = BasePointer(*call.value);
  CopyStrides(*call.value, &params->value_strides);
  params->loc = BasePointer(*call.sampling_locations);
  CopyStrides(*call.sampling_locations, p, &params->loc_strides);
  params->attn = BasePointer(*call.attention_weights);
  CopyStrides(*call.attention_weights, p, &params->attn_strides);
}

}  // namespace

msdaStatus ValidateForward(const CallTensors& call, Problem* problem, Params* params) {
  MSDA_RETURN_IF_ERROR(ValidateCommon(call, {{"output", call.output, Role::kOutput}}, problem));
  *params = Params();
  BindInputs(call, *problem, params);
  params->out = BasePointer(*call.output);
  CopyStrides(*call.output, &params->out_strides);
  return MSDA_SUCCESS;
}

msdaStatus ValidateBackward(const CallTensors& call, Problem* problem, Params* params,
                            GradientSet* grads) {
  if (call.grad_output == nullptr) {
    return Refuse(MSDA_ERROR_NULL_POINTER, "grad_output: tensor is NULL");
  }
  MSDA_RETURN_IF_ERROR(
      ValidateCommon(call,
                     {{"grad_output", call.grad_output, Role::kInput},
                      {"grad_value", call.grad_value, Role::kOutput},
                      {"grad_sampling_locations", call.grad_sampling_locations, Role::kOutput},
                      {"grad_attention_weights", call.grad_attention_weights, Role::kOutput}},
                     problem));
  *params = Params();
  BindInputs(call, *problem, params);
  params->grad_out = BasePointer(*call.grad_output);
  CopyStrides(*call.grad_output, &params->grad_out_strides);
  grads->value = call.grad_value != nullptr;
  grads->locations = call.grad_sampling_locations != nullptr;
  grads->weights = call.grad_attention_weights != nullptr;
  if (grads->value) {
    params->grad_value = BasePointer(*call.grad_value);
    CopyStrides(*call.grad_value, &params->grad_value_strides);
  }
  if (grads->locations) {
    params->grad_loc = BasePointer(*call.grad_sampling_locations);
    CopyStrides(*call.grad_sampling_locations, *problem, &params->grad_loc_strides);
  }
  if (grads->weights) {
    params->grad_attn = BasePointer(*call.grad_attention_weights);
    CopyStrides(*call.grad_attention_weights, *problem, &params->grad_attn_strides);
  }
  return MSDA_SUCCESS;
}

}  // namespace msda
