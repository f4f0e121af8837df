import numpy as np

from ssprompt.runtime.coco import panoptic_overlay
from ssprompt.runtime.instances import Panoptic
from ssprompt.runtime.palette import default_palette, instance_colours, unpainted_classes
from ssprompt.runtime.postprocess import overlay


def test_background_and_void_names_are_unpainted_whatever_their_case():
    assert unpainted_classes(["Background", "car", "void ", "road", "unlabeled"]) == {0, 2, 4}


def test_semantic_overlay_leaves_unpainted_classes_as_the_image():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]])
    picture = overlay(image, labels, [[255, 0, 0], [0, 0, 255]], alpha=0.5, unpainted={0})
    np.testing.assert_array_equal(picture[0, 0], [100, 100, 100])  # background: the image as it was
    np.testing.assert_array_equal(picture[0, 1], [50, 50, 178])  # class 1: half the image, half blue (177.5 rounds up)


def test_panoptic_overlay_paints_stuff_unless_its_class_is_unpainted():
    image = np.zeros((1, 4, 3), np.uint8)
    ids = np.array([[1, 1, 2, 2]])
    segments = [{"id": 1, "class": 0, "thing": False}, {"id": 2, "class": 1, "thing": False}]
    panoptic = Panoptic(ids=ids, segments=segments)
    picture = panoptic_overlay(image, panoptic, [[200, 0, 0], [0, 200, 0]], stuff_alpha=0.5, unpainted={0})
    np.testing.assert_array_equal(picture[0, 0], [0, 0, 0])  # unpainted background, not on an edge
    np.testing.assert_array_equal(picture[0, 3], [0, 100, 0])  # class 1 at half its colour


def test_instance_colours_are_the_palette_hues_at_full_brightness():
    palette, instances = default_palette(4), instance_colours(4)
    np.testing.assert_array_equal(instances[0::2], np.asarray(palette[0::2]))  # even entries: same brightness
    assert (instances[1::2].max(axis=1) > np.asarray(palette[1::2]).max(axis=1)).all()  # odd ones brighter
