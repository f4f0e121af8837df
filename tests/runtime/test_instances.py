"""Instance and panoptic post-processing (runtime/instances.py) and their COCO formats (runtime/coco.py),
on hand-built prompt outputs."""

import numpy as np
import pytest

from ssprompt.runtime.coco import (categories, instance_overlay, instance_records, panoptic_png, panoptic_record)
from ssprompt.runtime.instances import (InstanceOptions, Instances, Panoptic, PanopticOptions, instances_from_prompts,
                                        mask_nms, panoptic_from_prompts, prompt_classes, restore_mask_logits)
from ssprompt.runtime.preprocess import Letterbox

SQUARE = Letterbox(size=8, height=8, width=8, source_height=8, source_width=8)  # masks at the image's own size
THINGS = [1, 2]  # classes: 0 background (stuff), 1 disc, 2 square (things)


def _logits(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 8.0, -8.0).astype(np.float32)


def _box(top: int, left: int, bottom: int, right: int, size: int = 8) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_a_prompt_scores_its_best_class_probability_times_its_clipped_iou():
    classes, scores = prompt_classes(np.array([0.5, 1.3, -0.2]), np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]))
    assert classes.tolist() == [1, 0, 1]
    assert scores == pytest.approx([0.4, 0.6, 0.0])  # 0.8 * 0.5, 0.6 * clip(1.3) = 0.6 * 1, 0.9 * clip(-0.2) = 0


def test_mask_logits_come_back_over_the_image_part_of_the_square_only():
    # A 4 x 8 image letterboxed into 8 x 8 (top half); masks are 4 x 4 over the square, so the image covers rows 0-1.
    placement = Letterbox(size=8, height=4, width=8, source_height=4, source_width=8)
    logits = np.full((4, 4), -8.0, dtype=np.float32)
    logits[:2, 2:] = 8.0  # the right half of the image's rows; rows 2-3 are padding
    restored = restore_mask_logits(logits, placement)
    assert restored.shape == (4, 8)
    assert ((restored > 0) == _box(0, 4, 4, 8, 8)[:4]).all()


@pytest.mark.parametrize("height, width", [(37, 53), (53, 37), (120, 200)])
def test_mask_logits_restore_as_sams_two_step_resize_does(height, width):
    """SAM (postprocess_masks) upsamples to the square input, crops the image, resizes to the original;
    one bilinear resize of the image's part of the mask grid is that to within interpolation error.
    (A box off by a quarter mask cell gives a mean error above 0.06 and agreement under 0.99.)"""
    torch = pytest.importorskip("torch")
    from torch.nn.functional import interpolate

    from ssprompt.runtime.preprocess import resized_extent

    side, mask_side = 64, 16
    inside = resized_extent(height, width, side)
    coarse = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 4, 4)).astype(np.float32))
    logits = 4 * interpolate(coarse, (mask_side, mask_side), mode="bilinear", align_corners=False)  # smooth, like SAM's
    square = interpolate(logits, (side, side), mode="bilinear", align_corners=False)[..., :inside[0], :inside[1]]
    reference = interpolate(square, (height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    ours = restore_mask_logits(logits[0, 0].numpy(), Letterbox(side, *inside, height, width))
    assert ours.shape == (height, width)
    assert np.abs(ours - reference).mean() < 0.02
    assert ((ours > 0) == (reference > 0)).mean() > 0.995


def test_mask_nms_drops_a_near_duplicate_and_keeps_a_distinct_mask():
    a = _box(0, 0, 4, 4)  # 16 pixels
    b = _box(0, 0, 4, 5)  # 20 pixels, IoU with a 16 / 20 = 0.8
    c = _box(5, 5, 8, 8)
    masks = np.stack([a, b, c]).reshape(3, -1)
    assert mask_nms(masks, 0.7) == [0, 2]
    assert mask_nms(masks, 0.8) == [0, 1, 2]  # 0.8 is not above 0.8


def _prompts():
    """Four prompts: two near-duplicates of a disc, a square, and the background (35 pixels around them)."""
    masks = np.stack([_logits(_box(0, 0, 4, 4)), _logits(_box(0, 0, 4, 5)), _logits(_box(5, 5, 8, 8)),
                      _logits(~(_box(0, 0, 4, 5) | _box(5, 5, 8, 8)))])
    iou = np.array([0.9, 0.8, 0.5, 1.0], dtype=np.float32)
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.9, 0.0], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]], dtype=np.float32)
    return masks, iou, probs


def test_instances_are_things_ranked_by_score_without_duplicates():
    masks, iou, probs = _prompts()
    found = instances_from_prompts(masks, iou, probs, THINGS, SQUARE)
    # scores: 0.8 * 0.9 = 0.72, 0.9 * 0.8 = 0.72 (a tie: the earlier prompt first), 0.6 * 0.5 = 0.3, background is stuff
    assert found.prompts.tolist() == [0, 2]
    assert found.classes.tolist() == [1, 2]
    assert found.scores == pytest.approx([0.72, 0.3])
    assert (found.masks[0] == _box(0, 0, 4, 4)).all() and (found.masks[1] == _box(5, 5, 8, 8)).all()


def test_instance_options_cut_by_score_and_count():
    masks, iou, probs = _prompts()
    assert instances_from_prompts(masks, iou, probs, THINGS, SQUARE, InstanceOptions(score_threshold=0.5)).prompts.tolist() == [0]
    assert instances_from_prompts(masks, iou, probs, THINGS, SQUARE, InstanceOptions(top_k=1)).prompts.tolist() == [0]
    assert instances_from_prompts(masks, iou, probs, THINGS, SQUARE, InstanceOptions(nms_iou=0.9)).prompts.tolist() == [0, 1, 2]


def test_panoptic_merges_stuff_gives_each_thing_a_segment_and_leaves_the_unclaimed_void():
    masks, iou, probs = _prompts()
    second_background = _logits(_box(6, 0, 8, 3))  # inside the first background prompt's mask
    masks = np.concatenate([masks, second_background[None]])
    iou = np.append(iou, 0.95).astype(np.float32)
    probs = np.concatenate([probs, [[0.95, 0.03, 0.02]]]).astype(np.float32)
    panoptic = panoptic_from_prompts(masks, iou, probs, THINGS, SQUARE)
    by_class = {s["class"]: s for s in panoptic.segments}
    # Background: scores 0.9 and 0.95 * 0.95 = 0.9025; the second claims its 6 pixels first, the first keeps
    # 29 / 35 >= 0.8 of its mask, and the two merge into one segment of 35 pixels.
    assert len([s for s in panoptic.segments if s["class"] == 0]) == 1
    assert by_class[0]["area"] == 35 == int((panoptic.ids == by_class[0]["id"]).sum())
    # The disc (prompt 0, 16 pixels) wins all of them against its duplicate (score tie, first kept); the
    # duplicate (prompt 1) wins only the 4 pixels of column 4: 4 / 20 < 0.8, no segment.
    assert by_class[1]["area"] == 16 and by_class[1]["thing"]
    # The square scores 0.3 * sigmoid(8) on its 9 pixels against the background's 0.9 * sigmoid(-8): it wins them.
    assert by_class[2]["area"] == 9
    assert sorted(s["class"] for s in panoptic.segments) == [0, 1, 2]
    # The 4 pixels of column 4, rows 0-3: the duplicate lost its segment and the background's mask excludes them.
    assert (panoptic.ids[:4, 4] == 0).all() and int((panoptic.ids == 0).sum()) == 4


def test_a_prompt_above_the_object_threshold_only_claims_pixels():
    masks, iou, probs = _prompts()
    panoptic = panoptic_from_prompts(masks, iou, probs, THINGS, SQUARE, PanopticOptions(object_threshold=0.8))
    assert [s["class"] for s in panoptic.segments] == [0]  # only the background scores above 0.8
    assert int((panoptic.ids == 0).sum()) == 64 - 35  # what it does not cover stays void


def test_instance_records_decode_to_the_same_masks_in_pycocotools():
    from pycocotools import mask as mask_utils

    masks, _, _ = _prompts()
    instances = Instances(masks=np.stack([_box(0, 0, 4, 4), _box(5, 5, 8, 8)]), classes=np.array([1, 2]),
                          scores=np.array([0.72, 0.3], dtype=np.float32), prompts=np.array([0, 2]))
    records = instance_records(7, instances)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in records] == [
        (7, 2, pytest.approx(0.72)), (7, 3, pytest.approx(0.3))]  # category id = class + 1
    assert "bbox" not in records[0]  # pycocotools' loadRes would take the box's area for the mask's
    for record, mask in zip(records, instances.masks):
        rle = {**record["segmentation"], "counts": record["segmentation"]["counts"].encode()}
        assert (mask_utils.decode(rle) == mask).all()
    assert isinstance(records[0]["segmentation"]["counts"], str)  # JSON-ready


def test_panoptic_png_encodes_ids_as_coco_does_and_the_record_lists_every_segment():
    ids = np.zeros((2, 3), dtype=np.int32)
    ids[0, :2], ids[1, 2] = 1, 70000  # 70000 = 112 + 256 * 17 + 65536 * 1
    png = panoptic_png(ids)
    assert png[1, 2].tolist() == [112, 17, 1] and png[0, 0].tolist() == [1, 0, 0] and png[1, 0].tolist() == [0, 0, 0]
    panoptic = Panoptic(ids, [{"id": 1, "class": 0, "thing": False, "score": 0.9, "area": 2},
                              {"id": 70000, "class": 2, "thing": True, "score": 0.5, "area": 1}])
    record = panoptic_record(3, "a.png", panoptic)
    assert [(s["id"], s["category_id"], s["area"], s["bbox"]) for s in record["segments_info"]] == [
        (1, 1, 2, [0, 0, 2, 1]), (70000, 3, 1, [2, 1, 1, 1])]


def test_categories_mark_things_and_start_at_one():
    listing = categories(["background", "disc"], [1], [[0, 0, 0], [255, 0, 0]])
    assert [(c["id"], c["name"], c["isthing"]) for c in listing] == [(1, "background", 0), (2, "disc", 1)]


def test_each_instance_gets_its_own_colour_and_the_rest_of_the_image_stays():
    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    instances = Instances(masks=np.stack([_box(0, 0, 4, 4), _box(5, 5, 8, 8)]), classes=np.array([1, 1]),
                          scores=np.array([0.9, 0.8], dtype=np.float32), prompts=np.array([0, 1]))
    picture = instance_overlay(image, instances)
    assert (picture[7, 0] == 100).all()
    assert not (picture[0, 0] == picture[7, 7]).all()  # same class, different instances, different colours


def test_out_of_range_options_are_refused():
    with pytest.raises(ValueError, match="nms_iou"):
        InstanceOptions(nms_iou=1.5)
    with pytest.raises(ValueError, match="panoptic thresholds"):
        PanopticOptions(object_threshold=-0.1)
