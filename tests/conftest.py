"""Suite-wide isolation: a test that changes torch's process-wide settings must not leak them."""
import pytest
import torch


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Restore the intra-op thread count (benchmarks set it); float32 reductions differ with it,
    so a leaked setting would make later numerical tests depend on test order."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
