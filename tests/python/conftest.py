import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

torch = pytest.importorskip("torch")

# Small, fast tests: a fixed thread count keeps them reproducible on any machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
