// Every rule a caller can break, checked before any kernel runs. On success the problem and
// the bound pointers are filled in; on refusal a status is returned, the thread's message
// names the tensor and the rule, and nothing was written anywhere.
#ifndef MSDA_SRC_VALIDATE_H_
#define MSDA_SRC_VALIDATE_H_

#include "msda/msda.h"
#include "params.h"
#include "plan.h"
#include "problem.h"

namespace msda {

struct CallTensors {
  const msdaTensor* value = nullptr;
  const msdaTensor* spatial_shapes = nullptr;
  const msdaTensor* level_start_index = nullptr;
  const msdaTensor* sampling_locations = nullptr;
  const msdaTensor* attention_weights = nullptr;
  // Forward only.
  const msdaTensor* output = nullptr;
  // Backward only; any gradient may be null.
  const msdaTensor* grad_output = nullptr;
  const msdaTensor* grad_value = nullptr;
  const msdaTensor* grad_sampling_locations = nullptr;
  const msdaTensor* grad_attention_weights = nullptr;
  const msdaOptions* options = nullptr;  // Null: the defaults.
};

msdaStatus ValidateForward(const CallTensors& call, Problem* problem, Params* params);
msdaStatus ValidateBackward(const CallTensors& call, Problem* problem, Params* params,
                            GradientSet* grads);

}  // namespace msda

#endif  // MSDA_SRC_VALIDATE_H_
