"""Reading a checkpoint: a file that is not one (another kind of file, a truncated one) is named as such in one
line, without advice that could not help; a torch.save file that needs full unpickling is refused unless allowed,
with torch's reason in one plain line; and a file that fails even then is one line too."""
import argparse
import pickle
import sys
import types

import pytest
import torch

from sparkmim.utils.checkpoint import (CheckpointReadError, NoStateDictError, UnsafeCheckpointError, load_file,
                                       unwrap_state_dict)
from sparkmim.utils.errors import UserError


def test_files_that_are_not_checkpoints_say_so_even_when_unsafe_loading_is_allowed(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"weight": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "config.yaml").write_text("model: resnet50\n")
    (tmp_path / "image.jpg").write_bytes(b"\xff\xd8\xff\xe0 not much of a picture")
    with open(tmp_path / "plain.pkl", "wb") as handle:  # a plain pickle: torch.load cannot read it either way
        pickle.dump({"weight": [1.0, 2.0]}, handle)
    for name in ("truncated.pth", "config.yaml", "image.jpg", "plain.pkl"):
        for allow_unsafe in (False, True):
            with pytest.raises(CheckpointReadError, match="is not a PyTorch checkpoint") as raised:
                load_file(tmp_path / name, allow_unsafe=allow_unsafe)
            message = str(raised.value)
            assert str(tmp_path / name) in message and "\n" not in message and "allow-unsafe" not in message
    assert isinstance(raised.value, UserError)


def test_a_torch_file_that_needs_full_unpickling_is_refused_in_one_plain_line(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"weight": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError) as raised:
        load_file(path)
    message = str(raised.value)
    assert "argparse.Namespace" in message and "pass the allow-unsafe option" in message
    assert "\n" not in message and "\x1b" not in message  # torch's message spans lines and has terminal codes
    assert load_file(path, allow_unsafe=True)["args"].lr == 0.1
    # the older (before PyTorch 1.6) file layout is recognised as torch's too
    torch.save({"weight": torch.ones(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_file(tmp_path / "legacy.pth")["weight"], torch.ones(2))


def test_a_file_that_fails_even_with_full_unpickling_is_one_line(tmp_path, monkeypatch):
    module = types.ModuleType("vanishing_module")

    class Settings:  # pickled by reference to a module that will be gone when the file is read
        pass

    Settings.__module__, Settings.__qualname__ = module.__name__, "Settings"
    module.Settings = Settings
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({"settings": Settings()}, tmp_path / "needs_code.pth")
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(CheckpointReadError, match=r"cannot be read even with full unpickling \(ModuleNotFoundError"):
        load_file(tmp_path / "needs_code.pth", allow_unsafe=True)


def test_a_mapping_without_tensors_is_a_user_error():
    with pytest.raises(NoStateDictError, match="no state dict found"):
        unwrap_state_dict({"model": {}, "epoch": 1})
    assert issubclass(NoStateDictError, (UserError, ValueError))


def test_a_saved_checkpoint_has_the_permissions_of_any_new_file(tmp_path):
    # the temporary file used to come from mkstemp (owner-only, 0600), and kept its mode when renamed
    import os

    from sparkmim.utils.checkpoint import save_atomic

    previous = os.umask(0o022)
    try:
        path = save_atomic({"weight": torch.ones(2)}, tmp_path / "checkpoint.pth")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_a_folder_given_as_a_checkpoint_is_named_a_folder(tmp_path):
    # "checkpoint not found: run" for a run folder that exists sent users looking for a missing path
    with pytest.raises(CheckpointReadError, match=f"{tmp_path} is a folder, not a checkpoint file "
                                                  r"\(e\.g\. .*checkpoint_last\.pth\)"):
        load_file(tmp_path)
