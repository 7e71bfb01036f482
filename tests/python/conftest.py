import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

torch = pytest.importorskip("torch")

# msda.triton's kernels run on CPU tensors under Triton's interpreter where there is no GPU; it
# must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small, fast tests: a fixed thread count keeps them reproducible on any machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
