"""Tests for ssprompt.train.synthetic: the generated demo dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssprompt.train.data.layouts import open_folder
from ssprompt.train.data.reading import read_image, read_label
from ssprompt.train.data.sampling import class_presence, sample_k_shot
from ssprompt.train.synthetic import SYNTHETIC_CLASSES, make_synthetic


def _header(path: Path) -> Image.Image:
    """The image object with only its header read (file closed again)."""
    with Image.open(path) as im:
        return im


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth") / "shapes")


def test_output_opens_with_open_folder(dataset: Path) -> None:
    train = open_folder(dataset, split="train")
    val = open_folder(dataset, split="val")
    assert train.class_names == list(SYNTHETIC_CLASSES)
    assert [s.image.name for s in train.samples[:2]] == ["0000.png", "0001.png"]
    assert (len(train.samples), len(val.samples)) == (32, 16)
    assert _header(train.samples[0].label).mode == "L"
    assert read_image(train.samples[0].image).shape == (96, 128, 3)


def test_no_temporary_folder_is_left_behind(dataset: Path) -> None:
    assert [p.name for p in dataset.parent.iterdir()] == [dataset.name]


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_foreground_class_is_in_60_percent_of_images(dataset: Path, split: str) -> None:
    folder = open_folder(dataset, split=split)
    presence = class_presence(folder, progress=False)
    assert presence[:, 0].all()
    assert presence[:, 1:].mean(axis=0).min() >= 0.6
    assert presence[:, 1:].sum(axis=1).min() >= 1  # every image shows a shape
    indices = sample_k_shot(folder, 4, presence=presence)
    assert presence[indices].sum(axis=0).min() >= 4


def test_shapes_have_a_void_border_and_their_own_colour(dataset: Path) -> None:
    folder = open_folder(dataset, split="train")
    labels = [read_label(s, len(SYNTHETIC_CLASSES), 255) for s in folder.samples[:8]]
    index = next(i for i, label in enumerate(labels) if (label == 1).any())
    label = labels[index]
    image = read_image(folder.samples[index].image).astype(np.int32)
    # The void ring separates every shape from the background.
    inner = label[1:-1, 1:-1]
    is_shape = (inner >= 1) & (inner < len(SYNTHETIC_CLASSES))
    for shifted in (label[1:-1, 2:], label[1:-1, :-2], label[2:, 1:-1], label[:-2, 1:-1]):
        assert not (is_shape & (shifted == 0)).any()
    assert (label == 255).any()
    red = image[label == 1]
    assert (red[:, 0] - red[:, 1:].max(axis=1)).mean() > 100
    background = image[label == 0]
    assert np.abs(background[:, 0] - background[:, 2]).mean() < 40


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = make_synthetic(tmp_path / "a", n_train=4, n_val=2, seed=7)
    second = make_synthetic(tmp_path / "b", n_train=4, n_val=2, seed=7)
    other = make_synthetic(tmp_path / "c", n_train=4, n_val=2, seed=8)
    label = Path("train/labels/0000.png")
    image = Path("val/images/0001.png")
    assert (first / label).read_bytes() == (second / label).read_bytes()
    assert (first / image).read_bytes() == (second / image).read_bytes()
    assert (first / image).read_bytes() != (other / image).read_bytes()


def test_existing_synthetic_root_of_the_same_settings_is_returned_untouched(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "shapes", n_train=2, n_val=1)
    marker = root / "train" / "images" / "0000.png"
    before = marker.stat().st_mtime_ns
    assert make_synthetic(root, n_train=2, n_val=1) == root
    with pytest.raises(FileExistsError, match="other settings"):  # issue 29 item 19: never "made" with 2 images
        make_synthetic(root, n_train=5, n_val=5)
    (root / "dataset.json").unlink()  # one written before the settings were recorded: judged by its counts
    assert make_synthetic(root, n_train=2, n_val=1) == root
    with pytest.raises(FileExistsError, match=r"n_train 2 \(asked 5\)"):
        make_synthetic(root, n_train=5, n_val=1)
    assert marker.stat().st_mtime_ns == before
    assert len(list((root / "train" / "images").iterdir())) == 2


def test_existing_foreign_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset") as info:
        make_synthetic(root)
    assert str(root) in str(info.value)
    assert (root / "notes.txt").read_text() == "keep me"


def test_existing_folder_with_other_classes_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "other"
    root.mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    with pytest.raises(FileExistsError, match=r"other: exists and is not a synthetic dataset \(no classes.txt listing "
                                              r"background, red disc, green square, blue triangle\)"):
        make_synthetic(root)
    assert (root / "classes.txt").read_text() == "sky\nroad\n"


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    make_synthetic(root, n_train=2, n_val=1)
    assert len(open_folder(root, split="val").samples) == 1


def test_custom_void_and_small_size(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "small", n_train=3, n_val=1, size=(24, 30), void=11)
    folder = open_folder(root, split="train", void=11)
    values = np.unique(np.concatenate([read_label(s, 4, 11).ravel() for s in folder.samples]))
    assert 11 in values and 255 not in values
    assert read_image(folder.samples[0].image).shape == (24, 30, 3)


@pytest.mark.parametrize("kwargs, message", [({"void": 2}, r"void must be in \[\d+, 255\], got 2"),
                                             ({"n_train": 0}, "n_train and n_val must be >= 1, got 0"),
                                             ({"size": (8, 8)}, r"size must be at least \d+x\d+, got \(8, 8\)")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_synthetic(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()
