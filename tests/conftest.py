"""Suite-wide isolation: a test that changes torch's process-wide settings must not leak them.

Without a GPU, Triton kernels run through Triton's interpreter. Triton decides that when its language
module is first imported, so it is set here, before any test imports triton."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Restore the intra-op thread count (benchmarks set it); float32 reductions differ with it,
    so a leaked setting would make later numerical tests depend on test order."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
