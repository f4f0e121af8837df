"""Tests for ssprompt.train.world: the miniature world's scenes and its downstream task."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssprompt.train.data.layouts import open_folder
from ssprompt.train.world import TASK_CLASSES, TASK_THINGS, Thing, draw_things, make_world, pretraining_scene


def test_occluded_thing_keeps_only_its_visible_pixels():
    back = Thing("red", "square", "plain", (20, 20, 40, 40))
    front = Thing("blue", "square", "plain", (40, 20, 40, 40))  # covers the right half of `back`
    scene = draw_things((96, 96), [back, front], np.random.default_rng(0))
    assert [t.name for t in scene.things] == ["red square", "blue square"]
    assert scene.instances[40, 30] == 1 and scene.instances[40, 60] == 2
    assert scene.instances[40, 40] == -1  # the front square's edge is void
    assert scene.instances[5, 5] == 0


def test_a_thing_hidden_to_a_sliver_is_dropped_and_void():
    back = Thing("red", "square", "plain", (20, 20, 40, 40))
    front = Thing("blue", "square", "plain", (22, 20, 40, 40))  # leaves a 2-pixel strip of `back`
    scene = draw_things((96, 96), [back, front], np.random.default_rng(0))
    assert [t.name for t in scene.things] == ["blue square"]
    assert scene.instances[40, 20] == -1


def test_pretraining_scenes_are_seeded():
    first = pretraining_scene(np.random.default_rng(3))
    again = pretraining_scene(np.random.default_rng(3))
    assert np.array_equal(first.image, again.image) and first.image.shape == (256, 256, 3)
    assert not np.array_equal(first.image, pretraining_scene(np.random.default_rng(4)).image)


@pytest.mark.parametrize("background", ["checker", "waves"])
def test_unseen_backgrounds_are_grey_patterns_not_class_colours(background):
    """Background is labelled background, so a pattern must not be drawn in a class's colour."""
    spreads = []
    for seed in range(12):
        scene = draw_things((96, 96), [], np.random.default_rng(seed), background=background)
        rgb = scene.image.reshape(-1, 3).astype(np.float32)
        spreads.append(np.median(rgb.max(1) - rgb.min(1)))  # 0 for a pure grey pixel
    assert max(spreads) < 25  # a tint of +-6 and pixel noise give 8-12; any RGB colour (as before) gave 39-98


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world") / "w", n_train=6, n_val=3, seed=5)


def test_world_opens_as_a_dataset_with_the_task_classes(world):
    folder = open_folder(world, "train")
    assert folder.class_names == list(TASK_CLASSES) and len(folder) == 6
    assert [TASK_CLASSES[c] for c in folder.thing_classes] == list(TASK_THINGS) == list(TASK_CLASSES[1:])
    assert all(sample.instances is not None for sample in folder.samples)
    assert len(open_folder(world, "val")) == 3


def test_clutter_and_background_are_class_0_and_things_their_class(world):
    folder = open_folder(world, "train")
    for sample in folder.samples:
        label = np.asarray(Image.open(sample.label))
        instances = np.asarray(Image.open(world / "train" / "instances" / sample.label.name))
        assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 255}
        assert np.array_equal(label == 255, instances == 255)
        # every task instance carries one class; pixels outside instances are background (or void)
        for i in set(np.unique(instances)) - {0, 255}:
            assert len(np.unique(label[instances == i])) == 1 and label[instances == i][0] > 0
        assert set(np.unique(label[instances == 0])) == {0}


def test_world_is_reproducible_and_kept(world, tmp_path):
    again = make_world(tmp_path / "w", n_train=6, n_val=3, seed=5)
    for name in ("train/images/0003.png", "val/labels/0002.png", "val/instances/0001.png"):
        assert (again / name).read_bytes() == (world / name).read_bytes()
    assert make_world(world, n_train=6, n_val=3, seed=5) == world  # an existing world of these settings is kept
    with pytest.raises(FileExistsError, match=r"holds a generated dataset of other settings \(n_train 6 \(asked 99\)"):
        make_world(world, n_train=99, n_val=3, seed=5)  # never "made" while it holds 6 images (issue 29 item 19)
    assert len(open_folder(world, "train")) == 6


def test_a_folder_that_is_not_a_world_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a generated world"):
        make_world(tmp_path / "other")


def test_a_world_from_before_the_thing_markers_gets_them_and_keeps_its_files(world, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(world, old)
    (old / "classes.txt").write_text("".join(f"{name}\n" for name in TASK_CLASSES))
    (old / "dataset.json").unlink()  # nor did it record its settings
    image = (old / "val" / "images" / "0000.png").read_bytes()
    assert make_world(old, n_train=6, n_val=3) == old
    assert open_folder(old, "val").thing_classes == [1, 2, 3, 4]
    assert (old / "val" / "images" / "0000.png").read_bytes() == image
