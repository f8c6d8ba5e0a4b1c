"""Fine-tuning data: folders, unreadable files, distributed evaluation shards, transforms, recipes."""
import numpy as np
import pytest
import yaml
from PIL import Image

from sparkmim.downstream_imagenet.config import DEFAULTS, RECIPE_DIR, FinetuneConfig, parse, resolve, resolve_eval
from sparkmim.downstream_imagenet.data import (DataError, ImageFolderDataset, RedrawRefusedPosterize,
                                               ShardSampler, check_same_classes, collate_skipping,
                                               eval_transform, train_transform)
from sparkmim.utils.config import ConfigError


def make_folder(root, classes, per_class=2, size=24):
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (size, size), (index * 40, 10, 200)).save(root / name / f"{index}.png")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    dataset = ImageFolderDataset(tmp_path, eval_transform(FinetuneConfig.from_mapping(dict(DEFAULTS, input_size=32))))
    assert dataset.classes == ["a", "b"] and len(dataset) == 5
    batch = collate_skipping([dataset[i] for i in range(len(dataset))])
    assert batch.skipped == 1
    assert tuple(batch.images.shape) == (4, 3, 32, 32)
    assert batch.targets.tolist() == [0, 0, 1, 1]


def test_empty_class_folder_and_class_mismatch_are_errors(tmp_path):
    make_folder(tmp_path / "train", ["a", "b"])
    make_folder(tmp_path / "val", ["a", "c"])
    with pytest.raises(DataError, match="only in train \\['b'\\], only in val \\['c'\\]"):
        check_same_classes(ImageFolderDataset(tmp_path / "train"), ImageFolderDataset(tmp_path / "val"))
    make_folder(tmp_path / "val2", ["a", "b", "c"])  # a side with nothing of its own is not listed as []
    with pytest.raises(DataError, match="class folders differ: only in val \\['c'\\]$"):
        check_same_classes(ImageFolderDataset(tmp_path / "train"), ImageFolderDataset(tmp_path / "val2"))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="contains no image files"):
        ImageFolderDataset(tmp_path / "train")


def test_eval_only_reads_the_data_it_is_given_and_needs_only_val(tmp_path, capsys):
    """A run trained with --train-dir/--val-dir, evaluated on new data: the new --data replaces the saved folders
    (it was silently ignored), a folder with only val/ is enough, and other classes are named."""
    from sparkmim.downstream_imagenet.main import main

    make_folder(tmp_path / "train", ["a", "b"], per_class=4)
    make_folder(tmp_path / "val", ["a", "b"], per_class=3)
    out = tmp_path / "run"
    assert main(["--model", "test_resnet", "--train-dir", str(tmp_path / "train"), "--val-dir", str(tmp_path / "val"),
                 "--input-size", "32", "--batch-size", "4", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
                 "--device", "cpu", "--no-progress", "--mixup", "0", "--cutmix", "0", "--ema", "0",
                 "--repeated-aug", "0", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    make_folder(tmp_path / "new" / "val", ["a", "b"], per_class=1)
    evaluate = ["--eval-only", "--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0", "--device", "cpu"]
    assert main([*evaluate, "--data", str(tmp_path / "new")]) == 0
    assert "(2 images, 0 unreadable skipped)" in capsys.readouterr().out
    assert main(evaluate) == 0  # nothing given: the folders it was trained with
    assert "(6 images, 0 unreadable skipped)" in capsys.readouterr().out
    make_folder(tmp_path / "other" / "val", ["a", "c"], per_class=1)
    assert main([*evaluate, "--data", str(tmp_path / "other")]) == 2
    assert ("the validation classes differ from the 2 classes the checkpoint was trained on: only in the checkpoint "
            "['b'], only in the validation folder ['c']") in capsys.readouterr().err
    assert main([*evaluate, "--data", str(tmp_path / "nothing")]) == 2
    assert "must contain a val/ class folder (missing val/); or give --val-dir" in capsys.readouterr().err
    assert main([*evaluate, "--input-size", "70"]) == 2  # training refuses it; evaluation accepted it
    assert "multiple of the encoder's total stride 32; use e.g. --input-size 64" in capsys.readouterr().err


def test_options_that_build_another_network_are_named_not_a_tensor_list(tmp_path, capsys):
    """Resuming or evaluating with another --in-chans, --model-kwargs or --linear-probe than the checkpoint was
    trained with failed inside load_state_dict with a multi-kilobyte list of mis-shaped tensors."""
    from sparkmim.downstream_imagenet.main import main

    make_folder(tmp_path / "data" / "train", ["a", "b"], per_class=4)
    make_folder(tmp_path / "data" / "val", ["a", "b"], per_class=1)
    out = tmp_path / "run"
    train = ["--model", "test_resnet", "--data", str(tmp_path / "data"), "--input-size", "32", "--batch-size", "4",
             "--warmup-epochs", "0", "--workers", "0", "--device", "cpu", "--no-progress", "--mixup", "0",
             "--cutmix", "0", "--ema", "0", "--repeated-aug", "0", "--output-dir", str(out)]
    assert main([*train, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*train, "--epochs", "2", "--resume", "auto", "--model-kwargs", '{"stem_width": 8}']) == 2
    assert capsys.readouterr().err.strip() == (
        f"spark-finetune: error: {out / 'checkpoint_last.pth'} was trained with no --model-kwargs, this run has "
        """--model-kwargs '{"stem_width": 8}'; give the options it was trained with""")
    evaluate = ["--eval-only", "--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0", "--device", "cpu"]
    assert main([*evaluate, "--linear-probe"]) == 2
    assert "was trained with no --linear-probe, this run has --linear-probe;" in capsys.readouterr().err
    assert main([*evaluate, "--in-chans", "1", "--mean", "0.5", "--std", "0.2"]) == 2
    assert "was trained with --in-chans 3, this run has --in-chans 1;" in capsys.readouterr().err
    # --overwrite starts afresh: an earlier run's best EMA checkpoint (this run keeps no EMA) must not stay beside it
    (out / "checkpoint_best_ema.pth").write_bytes((out / "checkpoint_best.pth").read_bytes())
    assert main([*train, "--epochs", "1", "--overwrite"]) == 0
    assert not (out / "checkpoint_best_ema.pth").exists() and (out / "checkpoint_best.pth").exists()


def test_shards_cover_every_image_once():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


@pytest.mark.parametrize("policy, expected", [
    ("trivial", "TrivialAugmentWide"),
    ("rand-m9-mstd0.5-inc1", "RedrawRefusedPosterize"),
    ("v0", "RedrawRefusedPosterize"),
    ("none", None),
])
def test_train_transform_policies(policy, expected):
    transform = train_transform(FinetuneConfig.from_mapping(dict(DEFAULTS, auto_augment=policy, input_size=32, reprob=0.25)))
    names = [type(step).__name__ for step in transform.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation" and names[-1] == "RandomErasing"
    if expected:
        assert names[2] == expected
    else:
        assert len(names) == 5
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for _ in range(50):  # includes draws that Pillow >= 13 refuses for the timm policies
        assert tuple(transform(image).shape) == (3, 32, 32)


def test_refused_posterize_is_redrawn_other_errors_are_not():
    draws = iter([ValueError("bits must be between or equal to 1 and 8"), "ok"])

    def policy(_image):
        value = next(draws)
        if isinstance(value, Exception):
            raise value
        return value

    assert RedrawRefusedPosterize(policy)(None) == "ok"
    with pytest.raises(ValueError, match="other"):
        RedrawRefusedPosterize(lambda _image: (_ for _ in ()).throw(ValueError("other")))(None)


PAPER_TABLE = {  # bs, epochs, warmup, opt, base lr, layer decay, wd, mixup, rep. aug, drop path, EMA
    "convnext_small": (4096, 400, 20, "adamw", 2e-4, 0.7, 0.01, 0.8, 3, 0.3, 0.9999),
    "convnext_base": (4096, 400, 20, "adamw", 1e-4, 0.7, 0.01, 0.8, 3, 0.4, 0.9999),
    "convnext_large": (4096, 200, 10, "adamw", 1e-4, 0.7, 0.02, 0.8, 3, 0.5, 0.9999),
    "convnext_large_384": (1024, 200, 20, "adamw", 6e-5, 0.7, 0.01, 0.8, 3, 0.5, 0.99995),
    "resnet50": (2048, 300, 5, "lamb", 2e-3, 0.7, 0.02, 0.1, 0, 0.05, 0.9999),
    "resnet101": (2048, 300, 5, "lamb", 1e-3, 0.8, 0.02, 0.1, 0, 0.2, 0.9999),
    "resnet152": (2048, 300, 5, "lamb", 1e-3, 0.8, 0.02, 0.1, 0, 0.2, 0.9999),
    "resnet200": (2048, 300, 5, "lamb", 1e-3, 0.8, 0.02, 0.1, 0, 0.2, 0.9999),
}
KEYS = ("batch_size", "epochs", "warmup_epochs", "opt", "base_lr", "layer_decay", "weight_decay", "mixup",
        "repeated_aug", "drop_path", "ema")


@pytest.mark.parametrize("recipe", sorted(PAPER_TABLE))
def test_builtin_recipes_match_the_paper_table(recipe):
    model, size = ("convnext_large", "384") if recipe == "convnext_large_384" else (recipe, None)
    argv = ["--model", model, "--data", "d", "--output-dir", "o"] + (["--input-size", size] if size else [])
    config = resolve(parse(argv))
    assert tuple(config[key] for key in KEYS) == PAPER_TABLE[recipe]


def test_layers_override_in_order(tmp_path):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({"epochs": 100, "base_lr": 3e-3}))
    config = resolve(parse(["--model", "resnet50", "--data", "d", "--output-dir", "o",
                            "--recipe", str(tmp_path / "mine.yaml"), "--base-lr", "4e-3"]))
    assert (config["epochs"], config["base_lr"], config["batch_size"]) == (100, 4e-3, 2048)
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"epoch": 100}))
    with pytest.raises(ConfigError, match="unknown option 'epoch'"):
        parse(["--recipe", str(tmp_path / "typo.yaml")])
    assert {p.stem for p in RECIPE_DIR.glob("*.yaml")} == set(PAPER_TABLE) | {"linear_probe", "default"}


def test_data_and_separate_folders_together_are_one_line(tmp_path):
    # --data d --train-dir t was Path(None)'s TypeError; with both folders, --data was ignored without a word
    base = ["--model", "resnet18", "--data", "d", "--output-dir", "o"]
    with pytest.raises(ConfigError, match="or --train-dir and --val-dir, not --data with --train-dir$"):
        resolve(parse([*base, "--train-dir", "t"]))
    with pytest.raises(ConfigError, match="not --data with --train-dir and --val-dir$"):
        resolve(parse([*base, "--train-dir", "t", "--val-dir", "v"]))
    with pytest.raises(ConfigError, match="not --data with --val-dir$"):
        resolve_eval(parse(["--data", "d", "--val-dir", "v"]), {"model": "resnet18"})


def test_model_without_recipe_gets_the_default_recipe_and_linear_probe_its_own():
    config = resolve(parse(["--model", "efficientnet_b0", "--data", "d", "--output-dir", "o"]))
    # the paper's ResNet-50 recipe, without stochastic depth
    assert tuple(config[key] for key in KEYS) == PAPER_TABLE["resnet50"][:9] + (0.0, 0.9999)
    assert (config.model_recipe, config.layer_grouping) == ("default", "auto")
    assert resolve(parse(["--model", "resnet50", "--data", "d", "--output-dir", "o"])).model_recipe == "resnet50"
    probe = resolve(parse(["--model", "efficientnet_b0", "--data", "d", "--output-dir", "o", "--linear-probe",
                           "--layer-decay", "0.6"]))
    assert (probe.opt, probe.layer_decay) == ("lars", 0.6)  # kept in the record; the run ignores it
