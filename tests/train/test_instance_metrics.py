"""Panoptic quality and COCO mask AP (train/instance_metrics.py): hand-worked values, a reference check."""

import numpy as np
import pytest

from ssprompt.train.instance_metrics import MaskAP, PanopticQuality, Segments, ground_truth_segments

VOID = 255


def _segments(rows: list[list[int]], classes: dict[int, int]) -> Segments:
    return Segments(np.array(rows, dtype=np.int32), classes)


# ground_truth_segments ------------------------------------------------------------------------

def test_ground_truth_segments_stuff_then_instances_with_unowned_thing_pixels_void():
    # classes: 0 road (stuff), 1 car (thing), 2 sky (stuff), 3 person (thing)
    labels = np.array([[2, 2, 2, 2, VOID],
                       [0, 1, 1, 1, 1],
                       [0, 0, 3, 1, VOID]])
    instances = np.array([[0, 0, 0, 0, 1003],        # 1003: only on void pixels -> dropped
                          [0, 1001, 1001, 1002, 0],  # (1, 4): car pixel with no instance -> void
                          [0, 0, 1002, 1002, 1002]])  # (2, 4): instance pixel labelled void -> void
    segments = ground_truth_segments(labels, instances, things=[1, 3], void=VOID)
    # stuff in class order: road -> 1, sky -> 2; then instances ascending: 1001 -> 3, 1002 -> 4.
    # 1002 has labels car, person, car -> car (2 of 3).
    np.testing.assert_array_equal(segments.ids, [[2, 2, 2, 2, 0],
                                                 [1, 3, 3, 4, 0],
                                                 [1, 1, 4, 4, 0]])
    assert segments.classes == {1: 0, 2: 2, 3: 1, 4: 1}


def test_ground_truth_instance_ids_on_stuff_pixels_leave_them_to_the_stuff_segment():
    labels = np.array([[0, 0, 1, 1]])
    instances = np.array([[7, 7, 1001, 1001]])  # 7: a stuff pixel's raw id, as in Cityscapes' instanceIds
    segments = ground_truth_segments(labels, instances, things=[1], void=VOID)
    # road -> 1; instance 7 owns no thing pixel and is dropped, so 1001 -> 2 (not 3).
    np.testing.assert_array_equal(segments.ids, [[1, 1, 2, 2]])
    assert segments.classes == {1: 0, 2: 1}


# PanopticQuality ------------------------------------------------------------------------------

NAMES = ["road", "car", "person"]  # road stuff; car, person things
THINGS = [1, 2]


def test_pq_hand_worked_tp_fp_fn_and_exact_stuff():
    truth = _segments([[1, 1, 1, 1, 1, 1, 1, 1],
                       [2, 2, 2, 2, 3, 3, 1, 1],
                       [2, 2, 2, 2, 3, 3, 1, 1],
                       [1, 1, 1, 1, 1, 1, 1, 1]], {1: 0, 2: 1, 3: 1})
    prediction = _segments([[1, 1, 1, 1, 1, 1, 1, 1],
                            [2, 2, 2, 5, 5, 0, 1, 1],
                            [2, 2, 2, 5, 5, 0, 1, 1],
                            [1, 1, 1, 1, 1, 1, 1, 1]], {1: 0, 2: 1, 5: 1, 9: 2})  # 9: no pixels, ignored
    metric = PanopticQuality(NAMES, THINGS)
    metric.update(truth, prediction)
    result = metric.compute()
    # road: exact, IoU 20/20 = 1 -> TP 1: PQ = SQ = RQ = 1.
    # car: pred 2 vs gt 2: I = 6, U = 6 + 8 - 6 = 8 -> IoU 0.75, TP.
    #      pred 5 (4 px) vs gt 2: 2/(4+8-2) = 0.2; vs gt 3: 2/(4+4-2) = 1/3 -> FP.
    #      gt 3 unmatched -> FN (its other 2 px are predicted void, which is no segment).
    #      PQ = 0.75 / (1 + 0.5 + 0.5) = 0.375, SQ = 0.75, RQ = 1 / 2 = 0.5.
    # person: absent everywhere -> None, left out of the means.
    assert result["per_class"]["road"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert result["per_class"]["car"] == pytest.approx({"pq": 0.375, "sq": 0.75, "rq": 0.5, "tp": 1, "fp": 1, "fn": 1})
    assert result["per_class"]["person"] is None
    # means over road and car: pq (1 + 0.375)/2, sq (1 + 0.75)/2, rq (1 + 0.5)/2
    assert result["pq"] == pytest.approx(0.6875)
    assert result["sq"] == pytest.approx(0.875)
    assert result["rq"] == pytest.approx(0.75)
    assert result["pq_things"] == pytest.approx(0.375)
    assert result["pq_stuff"] == pytest.approx(1.0)


def test_pq_accumulates_over_images_before_dividing():
    truth = _segments([[1, 1, 1, 1]], {1: 1})
    metric = PanopticQuality(NAMES, THINGS)
    metric.update(truth, _segments([[1, 1, 1, 0]], {1: 1}))  # IoU 3/4, TP
    metric.update(truth, _segments([[2, 2, 2, 2]], {2: 2}))  # wrong class: car FN, person FP
    car = metric.compute()["per_class"]["car"]
    # car: TP 1, FN 1, iou_sum 0.75 -> PQ = 0.75 / (1 + 0.5) = 0.5 (not the mean of 0.75 and 0)
    assert car == pytest.approx({"pq": 0.5, "sq": 0.75, "rq": 2 / 3, "tp": 1, "fp": 0, "fn": 1})


def test_pq_prediction_mostly_on_void_is_not_a_false_positive():
    truth = _segments([[1, 1, 1, 1, 1, 1, 0, 0]], {1: 1})
    metric = PanopticQuality(NAMES, THINGS)
    # pred 1: I 5, U 5 + 6 - 5 = 6 -> 5/6 TP; pred 2: 3 px, 2 on void (2/3 > 1/2) -> not FP.
    metric.update(truth, _segments([[1, 1, 1, 1, 1, 2, 2, 2]], {1: 1, 2: 1}))
    assert metric.compute()["per_class"]["car"] == pytest.approx(
        {"pq": 5 / 6, "sq": 5 / 6, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0})
    metric = PanopticQuality(NAMES, THINGS)
    # pred 1: 4/6 TP; pred 2: 4 px, 2 on void: exactly half is not "more than half" -> FP.
    metric.update(truth, _segments([[1, 1, 1, 1, 2, 2, 2, 2]], {1: 1, 2: 1}))
    assert metric.compute()["per_class"]["car"] == pytest.approx(
        {"pq": (4 / 6) / 1.5, "sq": 4 / 6, "rq": 1 / 1.5, "tp": 1, "fp": 1, "fn": 0})


def test_pq_predicted_pixels_on_void_leave_the_union():
    truth = _segments([[1, 1, 1, 1, 0, 0, 0, 0]], {1: 1})
    prediction = _segments([[0, 1, 1, 1, 1, 1, 1, 0]], {1: 1})
    metric = PanopticQuality(NAMES, THINGS)
    metric.update(truth, prediction)
    # I = 3, pred 6 px of which 3 on void: U = 6 + 4 - 3 - 3 = 4 -> IoU 0.75, a match.
    # Without the void term U = 7 and IoU = 3/7 < 0.5: no match, FP + FN.
    assert metric.compute()["per_class"]["car"] == pytest.approx(
        {"pq": 0.75, "sq": 0.75, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0})


def test_pq_iou_of_exactly_one_half_does_not_match():
    truth = _segments([[1, 1, 1, 1]], {1: 1})
    metric = PanopticQuality(NAMES, THINGS)
    metric.update(truth, _segments([[1, 1, 2, 2]], {1: 1, 2: 1}))
    # each pred: I 2, U 2 + 4 - 2 = 4 -> IoU 0.5, not > 0.5: FN 1, FP 2, PQ 0.
    assert metric.compute()["per_class"]["car"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 2, "fn": 1}


def test_pq_with_nothing_seen_is_none():
    result = PanopticQuality(NAMES, THINGS).compute()
    assert result["pq"] is result["pq_things"] is result["pq_stuff"] is None
    assert result["per_class"] == {"road": None, "car": None, "person": None}


def test_pq_refuses_mismatched_shapes_and_unknown_classes():
    metric = PanopticQuality(NAMES, THINGS)
    with pytest.raises(ValueError, match=r"\(1, 4\).*\(2, 2\)"):
        metric.update(_segments([[1, 1, 1, 1]], {1: 1}), _segments([[1, 1], [1, 1]], {1: 1}))
    with pytest.raises(ValueError, match="class 3, outside 0..2"):
        metric.update(_segments([[1, 1]], {1: 1}), _segments([[1, 1]], {1: 3}))
    with pytest.raises(ValueError, match="segment id 2 has no class"):
        metric.update(_segments([[1, 2]], {1: 1}), _segments([[1, 1]], {1: 1}))
    with pytest.raises(ValueError, match="thing classes"):
        PanopticQuality(NAMES, [3])


# PanopticQuality against torchmetrics ----------------------------------------------------------

REF_THINGS, REF_STUFF = [0, 1], [2, 3, 4, 5]  # stuff 5 never occurs


def _scene(rng: np.random.Generator, things: list[tuple], cuts: list[int], bands: list[int], shape) -> Segments:
    """Stuff in vertical bands split at `cuts`, thing rectangles painted over them in order."""
    labels = np.empty(shape, dtype=np.int64)
    for band, start, stop in zip(bands, [0, *cuts], [*cuts, shape[1]]):
        labels[:, start:stop] = band
    instances = np.zeros(shape, dtype=np.int64)
    for k, (y0, x0, y1, x1, cls) in enumerate(things, start=1):
        labels[y0:y1, x0:x1] = cls
        instances[y0:y1, x0:x1] = k
    return ground_truth_segments(labels, instances, REF_THINGS, VOID)


def _reference_fixture(seed: int = 7, images: int = 4, shape=(40, 48)) -> list[tuple[Segments, Segments]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(images):
        cuts = sorted(rng.choice(np.arange(6, shape[1] - 6), size=2, replace=False).tolist())
        bands = rng.choice(REF_STUFF[:3], size=3).tolist()
        boxes = []
        for _ in range(5):
            y0, x0 = rng.integers(0, shape[0] - 6), rng.integers(0, shape[1] - 6)
            boxes.append((y0, x0, y0 + rng.integers(6, 14), x0 + rng.integers(6, 14), int(rng.choice(REF_THINGS))))
        predicted_boxes = []
        for y0, x0, y1, x1, cls in boxes:
            if rng.random() < 0.15:
                continue  # missed
            if rng.random() < 0.15:
                cls = 1 - cls  # wrong thing class
            y0, x0, y1, x1 = (int(np.clip(v + rng.integers(-2, 3), 0, limit)) for v, limit in
                              zip((y0, x0, y1, x1), (shape[0] - 1, shape[1] - 1, shape[0], shape[1])))
            predicted_boxes.append((y0, x0, max(y1, y0 + 1), max(x1, x0 + 1), cls))
        for _ in range(int(rng.integers(0, 3))):  # spurious
            y0, x0 = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            predicted_boxes.append((y0, x0, y0 + 4, x0 + 4, int(rng.choice(REF_THINGS))))
        predicted_cuts = sorted(int(np.clip(c + rng.integers(-4, 5), 1, shape[1] - 1)) for c in cuts)
        predicted_bands = [b if rng.random() < 0.8 else int(rng.choice(REF_STUFF[:3])) for b in bands]
        pairs.append((_scene(rng, boxes, cuts, bands, shape),
                      _scene(rng, predicted_boxes, predicted_cuts, predicted_bands, shape)))
    return pairs


def _as_torchmetrics(segments: Segments):
    """(H, W, 2) (category_id, instance_id): things keep their segment id, stuff gets 0."""
    import torch

    category = np.vectorize(segments.classes.get)(segments.ids)
    instance = np.where(np.isin(category, REF_THINGS), segments.ids, 0)
    return torch.from_numpy(np.stack([category, instance], axis=-1).astype(np.int64))


def test_pq_equals_torchmetrics_on_a_void_free_fixture():
    # torchmetrics differs from panopticapi only where there is void: it also drops target pixels
    # predicted as void from the union and does not count an unmatched target that is mostly
    # predicted void as FN. It has no crowd regions. It merges every stuff class into one segment
    # per image (as ground_truth_segments does). Without void and with one segment per stuff class
    # the definitions agree; its class mean, like panopticapi's, is over classes with TP+FP+FN > 0.
    tm = pytest.importorskip("torchmetrics.detection")
    import torch

    names = ["t0", "t1", "s2", "s3", "s4", "s5"]
    ours = PanopticQuality(names, REF_THINGS)
    reference = tm.PanopticQuality(things=set(REF_THINGS), stuffs=set(REF_STUFF),
                                   return_sq_and_rq=True, return_per_class=True)
    pairs = _reference_fixture()
    for truth, prediction in pairs:
        assert (truth.ids != 0).all() and (prediction.ids != 0).all()
        ours.update(truth, prediction)
        reference.update(_as_torchmetrics(prediction)[None], _as_torchmetrics(truth)[None])
    result = ours.compute()
    # torchmetrics' per-class rows: things sorted, then stuff sorted = class order 0..5 here.
    per_class = reference.compute().double().numpy()
    tp, fp, fn = (getattr(reference, state).numpy()
                  for state in ("true_positives", "false_positives", "false_negatives"))
    assert tp.sum() >= 8 and fp.sum() >= 4 and fn.sum() >= 4  # the fixture exercises all three
    for c, name in enumerate(names):
        mine = result["per_class"][name]
        if tp[c] + fp[c] + fn[c] == 0:
            assert mine is None
            continue
        assert (mine["tp"], mine["fp"], mine["fn"]) == (tp[c], fp[c], fn[c])
        assert [mine["pq"], mine["sq"], mine["rq"]] == pytest.approx(per_class[c].tolist(), abs=1e-6)
    assert result["per_class"]["s5"] is None
    means = torch.stack([reference.true_positives, reference.false_positives, reference.false_negatives]).sum(0) > 0
    assert [result["pq"], result["sq"], result["rq"]] == pytest.approx(per_class[means.numpy()].mean(0).tolist(), abs=1e-6)


# MaskAP ---------------------------------------------------------------------------------------

AP_NAMES = ["car", "person", "road"]  # car, person things; road stuff
AP_THINGS = [0, 1]


def test_mask_ap_single_match_at_iou_072():
    ids = np.full((12, 12), 1, dtype=np.int32)
    ids[1:11, 1:11] = 2  # car: 10 x 10 = 100 px
    truth = Segments(ids, {1: 2, 2: 0})
    mask = np.zeros((1, 12, 12), dtype=bool)
    mask[0, 2:10, 2:11] = True  # 8 x 9 = 72 px, all inside the car: IoU 72/100 = 0.72
    metric = MaskAP(AP_NAMES, AP_THINGS)
    metric.update(truth, mask, [0], [0.9])
    result = metric.compute()
    # matched at IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (AP 1 each), not at 0.75..0.95 (AP 0):
    # AP = 5/10.
    assert result["ap"] == pytest.approx(0.5)
    assert result["ap50"] == pytest.approx(1.0)
    assert result["ap75"] == pytest.approx(0.0)
    # person has no ground truth (the stuff road segment is not COCO ground truth): None.
    assert result["per_class"] == {"car": pytest.approx(0.5), "person": None}


def test_mask_ap_ranked_false_positive_gives_two_thirds():
    ids = np.zeros((10, 10), dtype=np.int32)
    ids[0:4, 0:4], ids[6:10, 6:10] = 1, 2
    truth = Segments(ids, {1: 0, 2: 0})
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 0:4, 6:10] = True  # on no car, top score: FP
    masks[1], masks[2] = ids == 1, ids == 2  # perfect
    metric = MaskAP(AP_NAMES, AP_THINGS)
    metric.update(truth, masks, [0, 0, 0], [0.9, 0.8, 0.7])
    result = metric.compute()
    # ranked FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 0.5, 1. The interpolated precision
    # (max to the right) is 2/3 at every recall point 0..1, at every IoU threshold: AP = 2/3.
    assert result["ap"] == pytest.approx(2 / 3)
    assert result["ap50"] == pytest.approx(2 / 3)
    assert result["ap75"] == pytest.approx(2 / 3)
    assert result["per_class"]["car"] == pytest.approx(2 / 3)


def test_mask_ap_prediction_of_a_class_without_ground_truth_leaves_it_none():
    ids = np.zeros((6, 6), dtype=np.int32)
    ids[0:3, 0:3] = 1
    metric = MaskAP(AP_NAMES, AP_THINGS)
    masks = np.stack([ids == 1, ids == 0])
    metric.update(Segments(ids, {1: 0}), masks, [0, 1], [0.5, 0.9])
    # car: one perfect match -> 1; person: a prediction but no ground truth -> None (COCO's -1),
    # and it does not pull the mean down.
    result = metric.compute()
    assert [result["ap"], result["ap50"], result["ap75"], result["per_class"]["car"]] == pytest.approx([1.0] * 4)
    assert result["per_class"]["person"] is None


def test_mask_ap_without_predictions_is_zero_and_without_ground_truth_none():
    ids = np.zeros((6, 6), dtype=np.int32)
    ids[0:3, 0:3] = 1
    metric = MaskAP(AP_NAMES, AP_THINGS)
    metric.update(Segments(ids, {1: 0}), np.zeros((0, 6, 6), dtype=bool), [], [])
    assert metric.compute() == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": {"car": 0.0, "person": None}}

    metric = MaskAP(AP_NAMES, AP_THINGS)
    road = Segments(np.ones((6, 6), dtype=np.int32), {1: 2})  # only stuff: no thing ground truth
    metric.update(road, (ids == 1)[None], [0], [0.9])
    assert metric.compute() == {"ap": None, "ap50": None, "ap75": None, "per_class": {"car": None, "person": None}}


def test_mask_ap_refuses_bad_inputs():
    truth = Segments(np.ones((6, 6), dtype=np.int32), {1: 0})
    metric = MaskAP(AP_NAMES, AP_THINGS)
    with pytest.raises(ValueError, match=r"\(1, 5, 6\).*\(6, 6\)"):
        metric.update(truth, np.zeros((1, 5, 6), dtype=bool), [0], [0.5])
    with pytest.raises(ValueError, match=r"\[2\] are not thing classes"):
        metric.update(truth, np.zeros((1, 6, 6), dtype=bool), [2], [0.5])
    with pytest.raises(ValueError, match="as many"):
        metric.update(truth, np.zeros((2, 6, 6), dtype=bool), [0], [0.5])
