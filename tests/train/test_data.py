"""Tests for ssprompt.train.data (layouts, validation errors, image modes, k-shot sampling) and the label geometry of training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssprompt.runtime.postprocess import resize_label
from ssprompt.train.data.folder import DataError, Sample, SegmentationFolder
from ssprompt.train.data.layouts import CITYSCAPES_CLASSES, open_folder
from ssprompt.train.data.reading import read_image, read_instances, read_label
from ssprompt.train.data.sampling import class_presence, sample_k_shot
from ssprompt.train.features import short_side_size

CAMVID = Path(__file__).parents[2].parent / "shared" / "data" / "camvid"


# --------------------------------------------------------------------------- helpers


def _header(path: Path) -> Image.Image:
    """The image object with only its header read (file closed again)."""
    with Image.open(path) as im:
        return im


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rgb(height: int = 8, width: int = 16, value: int = 100) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def _label(
    height: int = 8, width: int = 16, values: tuple[int, ...] = (0, 1, 2), dtype: type = np.uint8
) -> np.ndarray:
    flat = np.resize(np.array(values, dtype=dtype), height * width)
    return flat.reshape(height, width)


def _flat_folder(
    root: Path,
    stems: tuple[str, ...] = ("b", "a", "c"),
    classes: tuple[str, ...] = ("sky", "road", "car"),
) -> Path:
    """Layout 1: classes.txt, images/*.png, labels/*.png, labels hold 0..2."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    for stem in stems:
        _save(root / "images" / f"{stem}.png", _rgb())
        _save(root / "labels" / f"{stem}.png", _label())
    return root


def _one_sample(tmp_path: Path, label: Image.Image, image: np.ndarray | None = None) -> Sample:
    image_path = _save(tmp_path / "images" / "x.png", _rgb() if image is None else image)
    label_path = tmp_path / "labels" / "x.png"
    label_path.parent.mkdir(parents=True, exist_ok=True)
    label.save(label_path)
    return Sample(image=image_path, label=label_path)


def _fake_folder(presence: np.ndarray, location: str = "/data/fake/train") -> SegmentationFolder:
    """A folder object for sampling tests; only its sizes and names are used."""
    n, c = presence.shape
    samples = [Sample(Path(f"{i}.png"), Path(f"{i}.png")) for i in range(n)]
    names = [f"class{j}" for j in range(c)]
    return SegmentationFolder(Path("/data/fake"), names, 255, samples, "train", Path(location))


# --------------------------------------------------------------------------- layouts


def test_flat_layout_samples_sorted_by_stem_and_paired(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    folder = open_folder(root)
    assert folder.class_names == ["sky", "road", "car"]
    assert folder.void == 255
    assert [s.image.name for s in folder.samples] == ["a.png", "b.png", "c.png"]
    assert all(s.label == root / "labels" / s.image.name for s in folder.samples)


def test_flat_layout_accepts_mixed_case_extensions(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds", stems=("a",))
    _save(root / "images" / "b.JPG", _rgb())
    _save(root / "labels" / "b.png", _label())
    (root / "images" / "notes.txt").write_text("not an image")
    folder = open_folder(root)
    assert [s.image.name for s in folder.samples] == ["a.png", "b.JPG"]


def test_split_layout_opens_the_named_split(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    _flat_folder(root / "train", stems=("t1", "t2"))
    _flat_folder(root / "val", stems=("v1",))
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    folder = open_folder(root, split="val", void=3)
    assert [s.image.stem for s in folder.samples] == ["v1"]
    assert folder.void == 3
    assert folder.location == root / "val"


def test_split_layout_without_split_lists_the_splits(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    _flat_folder(root / "train")
    _flat_folder(root / "val")
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    with pytest.raises(DataError, match="has splits train, val; pick one with --split") as info:
        open_folder(root)
    assert str(root) in str(info.value)


def test_unknown_split_names_the_missing_folder(tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    _flat_folder(root / "train")
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    with pytest.raises(DataError, match="splits found: train") as info:
        open_folder(root, split="test")
    assert str(root / "test" / "images") in str(info.value)


def _cityscapes(root: Path) -> Path:
    for split, cities in (("train", {"aachen": 2, "bremen": 1}), ("val", {"lindau": 1})):
        for city, count in cities.items():
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb())
                _save(
                    root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                    _label(values=(0, 18, 255, i)),
                )
                # Distractors that ship with Cityscapes and must be ignored.
                _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _label())
    return root


def test_cityscapes_layout_defaults_to_train_and_forces_void_255(tmp_path: Path) -> None:
    root = _cityscapes(tmp_path / "cityscapes")
    folder = open_folder(root, void=11)
    assert folder.class_names == list(CITYSCAPES_CLASSES)
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[18] == "bicycle"
    assert folder.void == 255
    assert [s.image.name for s in folder.samples] == [
        "aachen_000000_000019_leftImg8bit.png",
        "aachen_000001_000019_leftImg8bit.png",
        "bremen_000000_000019_leftImg8bit.png",
    ]
    second = folder.samples[1]
    expected = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"
    assert second.label == expected
    assert set(np.unique(read_label(second, 19, folder.void))) == {0, 1, 18, 255}


def test_cityscapes_val_split(tmp_path: Path) -> None:
    root = _cityscapes(tmp_path / "cityscapes")
    folder = open_folder(root, split="val")
    assert [s.image.parent.name for s in folder.samples] == ["lindau"]


def test_cityscapes_image_without_label(tmp_path: Path) -> None:
    root = _cityscapes(tmp_path / "cityscapes")
    label = root / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelTrainIds.png"
    label.unlink()
    with pytest.raises(DataError, match="image has no label") as info:
        open_folder(root)
    assert "bremen_000000_000019_leftImg8bit.png" in str(info.value)
    assert str(label) in str(info.value)


# --------------------------------------------------------------------------- folder errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        open_folder(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_root_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="not a directory") as info:
        open_folder(path)
    assert "file.txt" in str(info.value)


def test_missing_classes_txt_names_the_expected_path(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="missing classes.txt") as info:
        open_folder(root)
    assert str(root / "classes.txt") in str(info.value)


def test_empty_classes_txt(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    (root / "classes.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="classes.txt is empty"):
        open_folder(root)


def test_duplicate_class_names(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds", classes=("sky", "road", "sky"))
    with pytest.raises(DataError, match="duplicate class name 'sky'") as info:
        open_folder(root)
    assert "classes.txt" in str(info.value)


def test_void_colliding_with_a_class(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    message = "void 1 collides with class 1 .'road'. of 3 classes"
    with pytest.raises(DataError, match=message) as info:
        open_folder(root, void=1)
    assert str(root / "classes.txt") in str(info.value)


def test_void_outside_the_16_bit_range(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    assert open_folder(root, void=256).void == 256  # 16-bit labels (issue 29 item 12)
    with pytest.raises(DataError, match=r"void 65536 is outside \[0, 65535\]"):
        open_folder(root, void=65536)


def test_no_images_names_the_folder(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds", stems=())
    (root / "images").mkdir()
    (root / "labels").mkdir()
    with pytest.raises(DataError, match="no images found") as info:
        open_folder(root)
    assert str(root / "images") in str(info.value)


def test_image_without_label_names_both_paths(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds")
    (root / "labels" / "b.png").unlink()
    with pytest.raises(DataError, match="image has no label") as info:
        open_folder(root)
    assert str(root / "images" / "b.png") in str(info.value)
    assert str(root / "labels" / "b.png") in str(info.value)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds\nnewline")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError) as info:
        open_folder(root)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- labels


def test_label_values_outside_classes(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(values=(0, 1, 7, 9, 255))))
    message = r"label values 7, 9 are outside \[0, 3\) and are not void 255"
    with pytest.raises(DataError, match=message) as info:
        read_label(sample, num_classes=3, void=255)
    assert str(sample.label) in str(info.value)


def test_label_bad_values_are_capped_at_five(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(values=(0, 10, 11, 12, 13, 14, 15, 16))))
    with pytest.raises(DataError, match=r"values 10, 11, 12, 13, 14 \(\+2 more\)"):
        read_label(sample, num_classes=3, void=255)


def test_label_with_void_and_classes_is_returned_as_uint8(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(values=(0, 2, 11))))
    label = read_label(sample, num_classes=3, void=11)
    assert label.dtype == np.uint8 and label.shape == (8, 16)
    assert label[0, :3].tolist() == [0, 2, 11]


def test_label_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(height=8, width=12)))
    with pytest.raises(DataError, match="label size 12x8 differs from image size 16x8") as info:
        read_label(sample, 3, 255)
    assert str(sample.label) in str(info.value)


def test_palette_label_uses_indices_not_colours(tmp_path: Path) -> None:
    palette_label = Image.fromarray(_label(values=(0, 1, 2))).convert("L")
    palette_label = palette_label.convert("P")  # keeps the values as indices
    palette_label.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 * 3 - 9))
    sample = _one_sample(tmp_path, palette_label)
    assert _header(sample.label).mode == "P"
    values = read_label(sample, 3, 255)
    assert values[0, :3].tolist() == [0, 1, 2]


def test_16bit_label_in_range_is_accepted(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(values=(0, 2, 255)).astype(np.uint16)))
    assert _header(sample.label).mode == "I;16"
    values = read_label(sample, 3, 255)
    assert values.dtype == np.uint8 and values[0, :3].tolist() == [0, 2, 255]


def test_16bit_label_out_of_range_is_rejected(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label(values=(0, 300), dtype=np.uint16)))
    with pytest.raises(DataError, match="label values 300 are outside"):
        read_label(sample, 3, 255)


def test_rgb_label_is_rejected(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_rgb(value=1)))
    with pytest.raises(DataError, match="label is RGB .multi-channel.") as info:
        read_label(sample, 3, 255)
    assert str(sample.label) in str(info.value)


def test_unreadable_label(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label()))
    sample.label.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read label .cannot identify image file.") as info:
        read_label(sample, 3, 255)
    assert str(sample.label) in str(info.value)


def test_unreadable_image_is_reported_by_read_label_and_read_image(tmp_path: Path) -> None:
    sample = _one_sample(tmp_path, Image.fromarray(_label()))
    sample.image.write_bytes(b"\x00garbage")
    message = "cannot read image .cannot identify image file"
    for call in (lambda: read_label(sample, 3, 255), lambda: read_image(sample.image)):
        with pytest.raises(DataError, match=message) as info:
            call()
        assert str(sample.image) in str(info.value)


def test_truncated_image_cannot_be_read(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = _save(tmp_path / "t.png", noise)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read image") as info:
        read_image(path)
    assert "t.png" in str(info.value)


def test_class_presence_marks_the_classes_of_each_label(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds", stems=("a",))
    _save(root / "images" / "b.png", _rgb())
    _save(root / "labels" / "b.png", _label(values=(2, 255)))
    presence = class_presence(open_folder(root), progress=False)
    assert presence.dtype == bool
    assert presence.tolist() == [[True, True, True], [False, False, True]]


# --------------------------------------------------------------------------- images


def test_16bit_image_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 257]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", values)
    assert _header(path).mode == "I;16"
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 100, 255, 1]
    assert (image[..., 0] == image[..., 2]).all()


def test_dark_32bit_integer_image_is_scaled_as_16bit(tmp_path: Path) -> None:
    im = Image.new("I", (2, 1))
    im.putdata([257 * 50, 257 * 10])  # max below 2**14: still 16-bit data, not stretched
    path = tmp_path / "deep.tif"
    im.save(path)
    assert read_image(path)[0, :, 1].tolist() == [50, 10]


def test_grayscale_palette_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    gray = _save(tmp_path / "g.png", np.full((2, 3), 77, dtype=np.uint8))
    rgba = _save(tmp_path / "a.png", np.array([[[10, 20, 30, 0]]], dtype=np.uint8))
    palette = tmp_path / "p.png"
    im = Image.new("P", (1, 1))
    im.putpalette([5, 6, 7] + [0] * 765)
    im.save(palette)
    assert read_image(gray).shape == (2, 3, 3) and (read_image(gray) == 77).all()
    assert read_image(rgba).tolist() == [[[10, 20, 30]]]
    assert read_image(palette).tolist() == [[[5, 6, 7]]]


def _exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 16x8 (W x H) JPEG whose EXIF says it displays rotated, i.e. as 8x16."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(height=8, width=16)).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied_to_image(tmp_path: Path) -> None:
    path = _exif_rotated_jpeg(tmp_path / "r.jpg")
    assert _header(path).size == (16, 8)
    assert read_image(path).shape == (16, 8, 3)


def test_label_size_check_uses_the_rotated_image_size(tmp_path: Path) -> None:
    image = _exif_rotated_jpeg(tmp_path / "images" / "r.jpg")
    upright = _save(tmp_path / "labels" / "r.png", _label(height=16, width=8))
    assert read_label(Sample(image, upright), 3, 255).shape == (16, 8)
    raw = _save(tmp_path / "labels" / "raw.png", _label(height=8, width=16))
    with pytest.raises(DataError, match="label size 16x8 differs from image size 8x16") as info:
        read_label(Sample(image, raw), 3, 255)
    assert "raw.png" in str(info.value)


# --------------------------------------------------------------------------- k-shot


def _random_presence(seed: int, n: int = 60, c: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    presence = rng.random((n, c)) < np.linspace(0.1, 0.9, c)
    presence[: c * 4] |= np.tile(np.eye(c, dtype=bool), (4, 1))  # every class in >= 4 images
    return presence


def test_k_shot_is_deterministic_for_a_seed() -> None:
    presence = _random_presence(0)
    folder = _fake_folder(presence)
    first = sample_k_shot(folder, 2, seed=3, presence=presence)
    assert first == sample_k_shot(folder, 2, seed=3, presence=presence)
    assert first == sorted(first) and len(set(first)) == len(first)
    others = {tuple(sample_k_shot(folder, 2, seed=s, presence=presence)) for s in range(10)}
    assert len(others) > 1  # the seed does matter


@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_shot_covers_every_class_at_least_k_times(k: int) -> None:
    for seed in range(5):
        presence = _random_presence(seed)
        indices = sample_k_shot(_fake_folder(presence), k, seed=seed, presence=presence)
        assert presence[indices].sum(axis=0).min() >= k
        # Greedy per class: never more than k images per class were added.
        assert len(indices) <= k * presence.shape[1]


def test_k_shot_counts_images_picked_for_earlier_classes() -> None:
    # Class 0 occurs only in image 0, which also holds classes 1 and 2: nothing else is needed.
    presence = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=bool)
    for seed in range(8):
        assert sample_k_shot(_fake_folder(presence), 1, seed=seed, presence=presence) == [0]


def test_k_larger_than_class_support_names_the_class(tmp_path: Path) -> None:
    presence = np.ones((10, 3), dtype=bool)
    presence[3:, 1] = False  # class1 in 3 images
    message = "class 'class1' appears in 3 images of /data/fake/train, fewer than --shots 4"
    with pytest.raises(DataError, match=message):
        sample_k_shot(_fake_folder(presence), 4, presence=presence)


def test_class_absent_everywhere_is_an_error() -> None:
    presence = np.ones((10, 3), dtype=bool)
    presence[:, 2] = False
    with pytest.raises(DataError, match="class 'class2' appears in 0 images"):
        sample_k_shot(_fake_folder(presence), 1, presence=presence)


def test_k_below_one_is_an_error() -> None:
    presence = np.ones((4, 2), dtype=bool)
    with pytest.raises(DataError, match="--shots 0 is invalid"):
        sample_k_shot(_fake_folder(presence), 0, presence=presence)


def test_k_shot_scans_labels_when_presence_is_not_given(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "ds", stems=("a", "b"))
    _save(root / "labels" / "b.png", _label(values=(9,)))  # invalid label, found by the scan
    with pytest.raises(DataError, match="label values 9"):
        sample_k_shot(open_folder(root), 1)


# --------------------------------------------------------------------------- geometry


def test_resize_label_is_nearest_and_keeps_values() -> None:
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    up = resize_label(label, (4, 6))
    assert up.shape == (4, 6) and up.dtype == np.uint8
    assert up.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 255, 255, 255]] * 2
    assert resize_label(up, (2, 2)).tolist() == label.tolist()


def test_resize_label_matches_pil_nearest() -> None:
    label = np.random.default_rng(0).integers(0, 12, (37, 53), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(label).resize((20, 15), Image.Resampling.NEAREST))
    assert np.array_equal(resize_label(label, (15, 20)), expected)


@pytest.mark.parametrize(
    ("height", "width", "short", "expected"),
    [
        (360, 480, 256, (256, 341)),
        (480, 360, 256, (341, 256)),
        (100, 100, 50, (50, 50)),
        (2, 3, 1, (1, 2)),
    ],
)
def test_short_side_size(height: int, width: int, short: int, expected: tuple[int, int]) -> None:
    assert short_side_size(height, width, short) == expected


# --------------------------------------------------------------------------- real data


def test_camvid_train_split() -> None:
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not available at {CAMVID}")
    folder = open_folder(CAMVID, split="train", void=11)
    assert len(folder.samples) == 367
    assert len(folder.class_names) == 11
    presence = class_presence(folder, progress=False)
    indices = sample_k_shot(folder, 1, presence=presence)
    assert presence[indices].any(axis=0).all()
    assert indices == sample_k_shot(folder, 1, presence=presence)


# --------------------------------------------------------------------------- things and instances


def test_thing_marker_sets_the_countable_classes_and_leaves_the_names_clean(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", classes=("sky", "road", "car [thing]"))
    folder = open_folder(root)
    assert folder.class_names == ["sky", "road", "car"] and folder.thing_classes == [2]
    assert open_folder(_flat_folder(tmp_path / "e")).thing_classes == []


def test_a_marker_without_a_name_is_refused(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", classes=("sky", "[thing]"))
    with pytest.raises(DataError, match=r"classes.txt: a \[thing\] line without a class name"):
        open_folder(root)


def test_instance_maps_pair_with_their_images_and_read_as_ids(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", stems=("a", "b"))
    ids = np.zeros((8, 16), dtype=np.uint8)
    ids[2:4, 3:6] = 7
    for stem in ("a", "b"):
        _save(root / "instances" / f"{stem}.png", ids)
    folder = open_folder(root)
    assert folder.samples[1].instances == root / "instances" / "b.png"
    read = read_instances(folder.samples[0])
    assert read.dtype == np.int32 and int((read == 7).sum()) == 6 and set(np.unique(read)) == {0, 7}


def test_an_image_without_its_instance_map_names_the_expected_file(tmp_path: Path) -> None:
    root = _flat_folder(tmp_path / "d", stems=("a", "b"))
    _save(root / "instances" / "a.png", np.zeros((8, 16), dtype=np.uint8))
    with pytest.raises(DataError, match=r"b.png: image has no instance map \(expected .*instances/b.png\)"):
        open_folder(root)


def test_cityscapes_instance_ids_keep_only_instances_and_mark_its_things(tmp_path: Path) -> None:
    root = _cityscapes(tmp_path / "cityscapes")
    stem = "aachen_000000_000019"
    values = np.full((8, 16), 7, dtype=np.uint16)  # road's labelId: no instance; 16-bit as Cityscapes ships it
    values[0, :4], values[1, :2] = 26001, 24000  # car 1, person 0
    Image.fromarray(values).save(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_instanceIds.png")
    folder = open_folder(root)
    assert [CITYSCAPES_CLASSES[c] for c in folder.thing_classes] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    first, second = folder.samples[0], folder.samples[1]
    assert second.instances is None and read_instances(second) is None
    read = read_instances(first)
    assert int((read == 26001).sum()) == 4 and int((read == 24000).sum()) == 2 and int((read == 0).sum()) == 8 * 16 - 6
