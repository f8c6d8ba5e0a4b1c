"""File-system failures become one line naming the file and the checkpoint that is intact
(:mod:`sparkmim.utils.disk`); the real full-disk and read-only runs are in the trainers' tests."""
import errno
import logging

import pytest
import torch

from sparkmim.utils.disk import (WriteFailedError, check_free_space, keeping_last_good, os_error_in, state_bytes,
                                 writing)


def torch_style_failure(code: int) -> RuntimeError:
    """How ``torch.save`` reports a failed write: its own error, the OS error only in the chain."""
    try:
        try:
            raise OSError(code, "lower-level")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 704 vs 598")
    except RuntimeError as error:
        return error


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EACCES, "permission denied"),
                                          (errno.EROFS, "read-only file system")])
def test_a_buried_file_system_error_becomes_one_line_naming_the_file(tmp_path, code, reason):
    assert os_error_in(torch_style_failure(code)).errno == code
    with pytest.raises(WriteFailedError) as caught:
        with writing(tmp_path / "checkpoint_last.pth"):
            raise torch_style_failure(code)
    assert str(caught.value) == f"{reason} writing {(tmp_path / 'checkpoint_last.pth').resolve()}"


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with writing(tmp_path / "x"):
            raise RuntimeError("a bug")
    with pytest.raises(FileNotFoundError):  # not a space or permission problem: not ours to rephrase
        with writing(tmp_path / "x"):
            raise FileNotFoundError(errno.ENOENT, "gone")


def test_the_intact_checkpoint_is_named_or_its_absence_said(tmp_path):
    last = tmp_path / "checkpoint_last.pth"
    with pytest.raises(WriteFailedError, match="no checkpoint had been written yet"):
        with keeping_last_good(last):
            with writing(tmp_path / "metrics.jsonl"):
                raise torch_style_failure(errno.ENOSPC)
    last.write_bytes(b"saved")
    with pytest.raises(WriteFailedError) as caught:
        with keeping_last_good(last):
            with writing(last):
                raise torch_style_failure(errno.ENOSPC)
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {last.resolve()}; the last good checkpoint is "
                              f"{last.resolve()}") and "--resume auto" in message and "\n" not in message


def test_free_space_check_warns_only_when_short(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert check_free_space(tmp_path, 0, "saving")
        assert not caplog.records
        assert not check_free_space(tmp_path, 2 ** 62, "saving the checkpoint")
    assert "MB free" in caplog.text and "saving the checkpoint needs about" in caplog.text


def test_state_bytes_counts_parameters_and_buffers():
    layer = torch.nn.BatchNorm2d(4)  # weight, bias, mean, var (float32) + num_batches_tracked (int64)
    assert state_bytes(layer) == 4 * 4 * 4 + 8
