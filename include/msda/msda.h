/*
 * msda: MultiScale Deformable Attention, forward and backward.
 *
 * This is the one public header of the library. It is plain C (C99), so that any engine can
 * call it. The interface is two-stage, as in the spec it comes from:
 *
 *   1. msdaForwardGetWorkspaceSize / msdaBackwardGetWorkspaceSize validate every tensor, plan
 *      the work (how it is split over threads, how much scratch each piece needs) and return
 *      an executor plus the number of workspace bytes the caller must provide.
 *   2. msdaForward / msdaBackward run the planned work on caller-provided workspace.
 *
 * Semantics are those of the original Deformable DETR kernel (bilinear sampling with zero
 * padding, align_corners = False); docs/semantics.md spells them out.
 *
 * Shapes (B batch, K keys, H heads, D embed dims, Q queries, L levels, P points):
 *   value               [B, K, H, D]        K = sum over levels of H_l * W_l
 *   spatial_shapes      [L, 2]              rows (H_l, W_l)
 *   level_start_index   [L]                 prefix sums of H_l * W_l, starting at 0
 *   sampling_locations  [B, Q, H, L, P, 2]  normalised to [0, 1], last dim (x, y)
 *   attention_weights   [B, Q, H, L, P]     used as given (no softmax inside)
 *   output              [B, Q, H * D]
 *
 * Threads: every call may be made from any thread. Tensors and executors are not locked: an
 * executor must not be run from two threads at once, and an output tensor must not be written
 * by two calls at once. Distinct executors may run concurrently. msdaGetLastErrorMessage is
 * thread-local.
 */
#ifndef MSDA_MSDA_H_
#define MSDA_MSDA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#if defined(MSDA_BUILDING_LIBRARY)
#define MSDA_API __declspec(dllexport)
#else
#define MSDA_API
#endif
#else
#define MSDA_API __attribute__((visibility("default")))
#endif

#define MSDA_VERSION_MAJOR 0
#define MSDA_VERSION_MINOR 1
#define MSDA_VERSION_PATCH 0
/* Encodes a version as one integer, e.g. 0.1.0 -> 100. */
#define MSDA_VERSION_ENCODE(major, minor, patch) ((major)*10000 + (minor)*100 + (patch))
#define MSDA_VERSION MSDA_VERSION_ENCODE(MSDA_VERSION_MAJOR, MSDA_VERSION_MINOR, MSDA_VERSION_PATCH)

typedef enum msdaDataType {
  MSDA_FLOAT32 = 0,
  MSDA_FLOAT16 = 1,
  MSDA_BFLOAT16 = 2,
  MSDA_FLOAT64 = 3,
  MSDA_INT32 = 4,
  MSDA_INT64 = 5,
} msdaDataType;

typedef enum msdaDeviceType {
  MSDA_DEVICE_CPU = 0,
  MSDA_DEVICE_CUDA = 1, /* Reserved: no CUDA backend is built yet; such tensors are refused. */
} msdaDeviceType;

typedef enum msdaStatus {
  MSDA_SUCCESS = 0,
  MSDA_ERROR_NULL_POINTER = 1,        /* A required pointer (tensor, data, out-param) is NULL. */
  MSDA_ERROR_INVALID_RANK = 2,        /* A tensor has the wrong number of dimensions. */
  MSDA_ERROR_SHAPE_MISMATCH = 3,      /* A dimension disagrees with the others. */
  MSDA_ERROR_INVALID_DTYPE = 4,       /* A dtype is not accepted for that tensor. */
  MSDA_ERROR_INVALID_DEVICE = 5,      /* Tensors on different or unsupported devices. */
  MSDA_ERROR_INVALID_LAYOUT = 6,      /* A negative dim, stride or offset, or an output that */
                                      /* overlaps itself or an input. */
  MSDA_ERROR_INVALID_VALUE = 7,       /* spatial_shapes / level_start_index contents are wrong. */
  MSDA_ERROR_LIMIT_EXCEEDED = 8,      /* A size past the documented limits (see README). */
  MSDA_ERROR_WORKSPACE_TOO_SMALL = 9, /* The run call got a NULL or too small workspace. */
  MSDA_ERROR_INVALID_EXECUTOR = 10,   /* NULL, already released, or of the other direction. */
  MSDA_ERROR_OUT_OF_MEMORY = 11,      /* The library could not allocate host memory. */
  MSDA_ERROR_INTERNAL = 12,           /* A bug in msda: please report it. */
} msdaStatus;

/* A view of caller-owned memory: dims, strides (in elements), an offset (in elements) and a
 * data pointer. The tensor never owns or frees the data. */
typedef struct msdaTensor msdaTensor;
/* The plan of one forward or backward call, made by a GetWorkspaceSize call. */
typedef struct msdaExecutor msdaExecutor;
/* A device stream. On the CPU the run is synchronous and the stream is ignored (may be NULL). */
typedef void* msdaStream;

/* Version of the library the program runs against, encoded as MSDA_VERSION. */
MSDA_API int32_t msdaGetVersion(void);

/* Bytes per element of a dtype (2, 4 or 8), or 0 for a value that is no msdaDataType. */
MSDA_API int64_t msdaDataTypeSize(msdaDataType dtype);

/* Creates a tensor view. dims has ndim entries (ndim <= 8), each >= 0. strides has ndim
 * entries in elements, each >= 0, or is NULL for a contiguous row-major layout. offset is in
 * elements and is added to data before any stride. Returns NULL (and sets the last error
 * message) on bad arguments or when out of memory. */
MSDA_API msdaTensor* msdaCreateTensor(const int64_t* dims, uint64_t ndim, msdaDataType dtype,
                                      const int64_t* strides, int64_t offset, msdaDeviceType device,
                                      int32_t deviceId, void* data);
/* Frees the view (not the data). NULL is accepted and does nothing. */
MSDA_API msdaStatus msdaDestroyTensor(msdaTensor* tensor);

/* Validates the forward call, plans it, and returns the workspace size in bytes and an
 * executor. On any refusal *executor is set to NULL, *workspaceSize to 0, and no output is
 * touched. The contents of spatialShapes and levelStartIndex are read here (they live on the
 * host for a CPU call) and recorded in the executor; the data pointers of every tensor are
 * recorded too, so the tensors may be destroyed before the run call but their memory must
 * stay valid until it. */
MSDA_API msdaStatus msdaForwardGetWorkspaceSize(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights, msdaTensor* output,
    uint64_t* workspaceSize, msdaExecutor** executor);

/* Runs a forward executor. workspace must hold at least the size GetWorkspaceSize returned
 * (it may be NULL when that size is 0); its contents need not be initialised and it may have
 * any alignment (the size includes room to align it internally). Unless the
 * executor was made repeatable, this call releases it, whatever the outcome, except when it
 * is refused with MSDA_ERROR_INVALID_EXECUTOR. */
MSDA_API msdaStatus msdaForward(void* workspace, uint64_t workspaceSize, msdaExecutor* executor,
                                msdaStream stream);

/* Validates and plans the backward call. gradOutput has the output's shape. Any of the three
 * gradient outputs may be NULL to skip computing it (all three NULL is a valid no-op). Gradients
 * are overwritten, not accumulated. grad_value has value's shape and dtype, grad_sampling_
 * locations has samplingLocations' shape and dtype, gradAttentionWeights has
 * attentionWeights' shape and dtype. The backward is deterministic: bitwise the same result
 * for every run and every thread count. */
MSDA_API msdaStatus msdaBackwardGetWorkspaceSize(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights,
    const msdaTensor* gradOutput, msdaTensor* gradValue, msdaTensor* gradSamplingLocations,
    msdaTensor* gradAttentionWeights, uint64_t* workspaceSize, msdaExecutor** executor);

/* Runs a backward executor; same rules as msdaForward. */
MSDA_API msdaStatus msdaBackward(void* workspace, uint64_t workspaceSize, msdaExecutor* executor,
                                 msdaStream stream);

/* Operator variants, through one extension point: the ...Ex calls take an options struct
 * (NULL: the defaults, i.e. the calls above). Initialise it with msdaOptionsInit, then set
 * the fields you need; structSize lets later versions add fields without breaking callers.
 *
 *   samplingMethod  MSDA_SAMPLING_BILINEAR (default): bilinear with zero padding, as above.
 *                   MSDA_SAMPLING_DISCRETE: RT-DETRv2's "discrete" method; each point reads
 *                   one pixel, x index clamp(trunc(x * W_l + 0.5), 0, W_l - 1) (y alike), no
 *                   padding; the backward's location gradient is zero.
 *   numPointsList   NULL (default): every level has P points, sampling_locations
 *                   [B, Q, H, L, P, 2], attention_weights [B, Q, H, L, P].
 *                   Else numLevels counts P_l >= 1 (numLevels = L, the rows of spatial_shapes):
 *                   sampling_locations [B, Q, H, N, 2] and attention_weights [B, Q, H, N],
 *                   N = sum of P_l, level l's points after those of the levels before it (as
 *                   RT-DETRv2's num_points_list). The counts are read at planning time. */
typedef enum msdaSamplingMethod {
  MSDA_SAMPLING_BILINEAR = 0,
  MSDA_SAMPLING_DISCRETE = 1,
} msdaSamplingMethod;

typedef struct msdaOptions {
  uint64_t structSize; /* sizeof(msdaOptions), set by msdaOptionsInit. */
  msdaSamplingMethod samplingMethod;
  const int64_t* numPointsList;
  uint64_t numLevels; /* Entries of numPointsList. */
} msdaOptions;

/* Fills *options with the defaults (and structSize). NULL is refused. */
MSDA_API msdaStatus msdaOptionsInit(msdaOptions* options);

/* msdaForwardGetWorkspaceSize / msdaBackwardGetWorkspaceSize with options (may be NULL); the
 * executors they return run with msdaForward / msdaBackward. */
MSDA_API msdaStatus msdaForwardGetWorkspaceSizeEx(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights, msdaTensor* output,
    const msdaOptions* options, uint64_t* workspaceSize, msdaExecutor** executor);
MSDA_API msdaStatus msdaBackwardGetWorkspaceSizeEx(
    const msdaTensor* value, const msdaTensor* spatialShapes, const msdaTensor* levelStartIndex,
    const msdaTensor* samplingLocations, const msdaTensor* attentionWeights,
    const msdaTensor* gradOutput, msdaTensor* gradValue, msdaTensor* gradSamplingLocations,
    msdaTensor* gradAttentionWeights, const msdaOptions* options, uint64_t* workspaceSize,
    msdaExecutor** executor);

/* Makes an executor repeatable: run calls no longer release it, so it may be run again (on
 * the same tensors' memory, whose contents may change between runs, except spatial_shapes
 * and level_start_index, which were read at planning time). Free it with msdaDestroyExecutor. */
MSDA_API msdaStatus msdaSetExecutorRepeatable(msdaExecutor* executor);
/* Points a repeatable executor at new memory, as a setup step: data[i] becomes the data
 * pointer of the i-th tensor argument of the GetWorkspaceSize call that made it, in that
 * call's order (forward: value, spatialShapes, levelStartIndex, samplingLocations,
 * attentionWeights, output, count 6; backward: value, spatialShapes, levelStartIndex,
 * samplingLocations, attentionWeights, gradOutput, gradValue, gradSamplingLocations,
 * gradAttentionWeights, count 9). Every tensor keeps the dims, dtype, strides and offset it
 * was planned with, so a run after it computes what a fresh GetWorkspaceSize call on the new
 * memory would, without validating and planning again. spatialShapes and levelStartIndex
 * were read at planning and are not read again: their entries are ignored. A gradient that
 * was NULL at planning stays skipped: its entry must be NULL. Refused, with the executor
 * unchanged, when the executor is not live and repeatable, count differs, a tensor with
 * elements gets NULL, or an output would overlap an input or another output. */
MSDA_API msdaStatus msdaExecutorSetData(msdaExecutor* executor, void* const* data, uint64_t count);
/* Frees an executor that was not released by a run call. NULL is accepted. */
MSDA_API msdaStatus msdaDestroyExecutor(msdaExecutor* executor);

/* Threads. A GetWorkspaceSize call plans for the thread count set on the calling thread by
 * msdaSetNumThreads (0, the default, means: the MSDA_NUM_THREADS environment variable if it
 * is set, else every hardware thread), at most MSDA_MAX_NUM_THREADS (larger settings are
 * refused, a larger environment value or hardware count is clamped). The run call uses the
 * planned count, or fewer when the system refuses to create threads (same results). Results
 * do not depend on the thread count. The pool's threads sleep when idle (no spinning) and
 * exit after a second without work. */
#define MSDA_MAX_NUM_THREADS 1024
MSDA_API msdaStatus msdaSetNumThreads(int32_t numThreads);
/* The thread count the next GetWorkspaceSize call on this thread will plan for. */
MSDA_API int32_t msdaGetNumThreads(void);

/* A parallel runner: a run call hands each of its parallel sections to it instead of msda's
 * own pool, so that msda runs on the threads of the host's runtime (an OpenMP team, a task
 * system) rather than beside them, competing for the same cores. The runner calls
 * work(context, i) on up to numThreads threads, each with a distinct i in [0, numThreads),
 * possibly concurrently, and returns only after every call has returned, with their writes
 * visible to the caller. msda hands its tasks out dynamically among the calls, so any number of
 * calls gives the same result; calls with i out of range or past the numThreads-th take no
 * task, and tasks no call took run on the calling thread after the runner returns. work does
 * not throw; the runner must not throw or return early. user is passed back unchanged. */
typedef void (*msdaParallelWork)(void* context, int32_t threadIndex);
typedef void (*msdaParallelRunner)(msdaParallelWork work, void* context, int32_t numThreads,
                                   void* user);
/* Sets the runner for run calls made on the calling thread; NULL (the default) restores
 * msda's own pool. Sections planned for one thread run on the caller without the runner. */
MSDA_API msdaStatus msdaSetParallelRunner(msdaParallelRunner runner, void* user);

/* Writes a human-readable description of the executor's plan (tiles, threads, workspace
 * layout) into buffer (NUL-terminated, truncated to bufferSize). Returns the length the full
 * text needs, excluding the NUL, or -1 for a NULL or released executor. For debugging. */
MSDA_API int64_t msdaExecutorDescribe(const msdaExecutor* executor, char* buffer,
                                      uint64_t bufferSize);

/* The message of the last refusal on the calling thread ("" if none). Valid until the next
 * msda call on this thread. */
MSDA_API const char* msdaGetLastErrorMessage(void);
/* The status of the last refusal on the calling thread (MSDA_SUCCESS if none), with the same
 * lifetime: how a NULL from msdaCreateTensor says which rule it broke. */
MSDA_API msdaStatus msdaGetLastErrorStatus(void);
/* A fixed name for a status, e.g. "MSDA_ERROR_SHAPE_MISMATCH". */
MSDA_API const char* msdaStatusString(msdaStatus status);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDA_MSDA_H_ */
