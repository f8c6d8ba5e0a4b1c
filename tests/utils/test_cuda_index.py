"""Which GPU a process takes: its local rank, or the one GPU a scheduler left visible to it; and which
device names the commands take."""
import pytest

from sparkmim.utils.distributed import DeviceError, check_device_name, cuda_index, init_distributed


def test_local_rank_picks_the_gpu_when_a_process_sees_them_all():
    assert [cuda_index(rank, 4) for rank in range(4)] == [0, 1, 2, 3]


def test_one_visible_gpu_per_process_is_gpu_zero():
    assert cuda_index(3, 1) == 0  # e.g. SLURM, one GPU per task, the fourth task of a node


def test_more_processes_than_gpus_is_a_one_line_error():
    with pytest.raises(RuntimeError, match="LOCAL_RANK is 4 but only 4 GPUs are visible"):
        cuda_index(4, 4)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "cuda:-1"])
def test_a_misspelt_device_is_a_device_error_before_any_cuda_call(bad):
    with pytest.raises(DeviceError, match=f"--device must be auto, cuda, cuda:N or cpu, got '{bad}'"):
        init_distributed(bad)


def test_the_plain_names_pass_the_check():
    for good in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        check_device_name(good, ValueError)
