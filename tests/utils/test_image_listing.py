"""Entries named like images that are not files are left out and reported, not dropped silently."""
import logging
import os

from PIL import Image

from sparkmim.pretrain.data import list_images
from sparkmim.utils.images import find_image_files


def test_links_and_folders_named_like_images_are_reported_once(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    os.symlink(tmp_path / "missing.jpg", tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with caplog.at_level(logging.WARNING):
        files = find_image_files(tmp_path)
    assert [p.name for p in files] == ["a.png", "b.jpg"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("3 entries")
    assert "dangling link" in warnings[0] and "link loop" in warnings[0] and "a folder" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in list_images(str(tmp_path))] == ["a.png", "b.jpg"]  # spark-pretrain's listing
    assert any("3 entries" in r.getMessage() for r in caplog.records)


def test_spark_finetune_class_folders_report_them_too(tmp_path, caplog):
    from sparkmim.downstream_imagenet.data import ImageFolderDataset

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "0.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "cat" / "1.png")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path)
    assert len(dataset) == 1 and any("1 entry" in r.getMessage() and "dangling link" in r.getMessage()
                                     for r in caplog.records)
