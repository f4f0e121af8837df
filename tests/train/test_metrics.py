"""Values of the loss's resampling, the confusion matrix and the metrics, worked out by hand; ssp-eval
against an mIoU counted from ssp-run's files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from ssprompt.train.loop import label_probabilities
from ssprompt.train.metrics import confusion_matrix, metrics_from_confusion


def test_label_probabilities_at_full_extent_equal_upsampling_the_map():
    semantic = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    upsampled = F.interpolate(semantic[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(label_probabilities(semantic, (16, 16), 16, (16, 16)), upsampled)  # borders included


def test_label_probabilities_sample_only_the_image_inside_the_square():
    semantic = torch.zeros(2, 2, 2)
    semantic[0, 0, :] = 1.0  # class 0 on the top row of cells, class 1 on the bottom row
    semantic[1, 1, :] = 1.0
    top = label_probabilities(semantic, (8, 16), 16, (4, 8))  # the image fills the top half of the square
    # Label rows sit at 1/16, 3/16, 5/16 and 7/16 of the square: 0.375 and 0.125 cells above the top row's
    # centre (the edge value, as upsampling gives), then 0.125 and 0.375 cells below it (mixing in row 1).
    rows = torch.tensor([1.0, 1.0, 0.875, 0.625])[:, None].expand(4, 8)
    torch.testing.assert_close(top[0], rows)
    torch.testing.assert_close(top[1], 1 - rows)


def test_confusion_matrix_counts_pairs_and_leaves_void_out():
    truth = np.array([[0, 0, 1], [1, 255, 2]])
    prediction = np.array([[0, 1, 1], [2, 0, 2]])
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])  # rows: truth, columns: prediction
    np.testing.assert_array_equal(confusion_matrix(truth, prediction, 3, void=255), expected)


def test_metrics_from_confusion_by_hand():
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 neither labelled nor predicted
    metrics = metrics_from_confusion(confusion, ["a", "b", "c"])
    assert metrics["per_class"] == {"a": pytest.approx(3 / 4), "b": pytest.approx(2 / 3), "c": None}
    assert metrics["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 6) and metrics["pixels"] == 6


CAMVID = Path(__file__).parents[2].parent / "shared" / "data" / "camvid"


def _miou_of_written_labels(run_folder: Path, label_folder: Path, num_classes: int, void: int) -> float:
    """mIoU of ssp-run's label PNGs against the truth, counted here from the files alone."""
    summary = json.loads((run_folder / "summary.json").read_text())
    intersection = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for record in summary["images"]:
        predicted = np.asarray(Image.open(run_folder / record["label"]))
        truth = np.asarray(Image.open(label_folder / f"{Path(record['file']).stem}.png"))
        assert predicted.shape == truth.shape
        counted = truth != void
        for c in range(num_classes):
            is_truth, is_predicted = (truth == c) & counted, (predicted == c) & counted
            intersection[c] += np.count_nonzero(is_truth & is_predicted)
            union[c] += np.count_nonzero(is_truth | is_predicted)
    return float(np.mean(intersection[union > 0] / union[union > 0]))


def _eval_and_run(pack: Path, data: Path, split: str, cache: Path, out: Path) -> tuple[float, float]:
    from ssprompt.runtime.cli import run_command
    from ssprompt.train.cli import eval_command
    from ssprompt.train.pack import load_pack
    from ssprompt.export.pipeline import export_pack

    result = CliRunner().invoke(eval_command, ["--prompts", str(pack), "--data", str(data), "--split", split,
                                               "--cache-dir", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output.strip().splitlines()[-1])
    onnx_path = export_pack(pack, out / "model", log=lambda *_: None).onnx
    images = data / split / "images"
    result = CliRunner().invoke(run_command, [str(onnx_path), str(images), "--out", str(out / "run"), "--batch", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    loaded = load_pack(pack)
    written = _miou_of_written_labels(out / "run", data / split / "labels", len(loaded.class_names), loaded.void)
    return evaluated["miou"], written


def test_ssp_eval_scores_what_ssp_run_writes_on_generated_data(demo_run, world_root, tmp_path):
    pytest.importorskip("onnxruntime")
    evaluated, written = _eval_and_run(demo_run[1], world_root, "val", demo_run[2], tmp_path)
    assert abs(evaluated - written) <= 1e-3, (evaluated, written)


@pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid not found at ../shared/data/camvid")
def test_ssp_eval_scores_what_ssp_run_writes_on_camvid_val(tmp_path):
    pytest.importorskip("onnxruntime")
    from ssprompt.train.config import ModelConfig, TrainConfig
    from ssprompt.train.pipeline import train_pack

    config = TrainConfig(data=str(CAMVID), split="train", void=11, shots=1, epochs=1, optimizer="adamw", lr=1e-2,
                         short_side=0, flip=False, cache_dir=str(tmp_path / "cache"))
    train_pack(ModelConfig(num_prompts=64), config, tmp_path / "pack.pt", progress=False, log=lambda *_: None)
    evaluated, written = _eval_and_run(tmp_path / "pack.pt", CAMVID, "val", tmp_path / "cache", tmp_path)
    assert abs(evaluated - written) <= 1e-3, (evaluated, written)


def test_ssp_eval_ap_and_pq_score_what_ssp_run_writes_on_generated_data(demo_run, world_root, exported_onnx, tmp_path):
    pytest.importorskip("onnxruntime")
    from pycocotools import mask as mask_utils

    from ssprompt.runtime.cli import run_command
    from ssprompt.train.cli import eval_command
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.data.reading import read_instances, read_label
    from ssprompt.train.instance_metrics import MaskAP, PanopticQuality, Segments, ground_truth_segments
    from ssprompt.train.pack import load_pack

    result = CliRunner().invoke(eval_command, ["--prompts", str(demo_run[1]), "--data", str(world_root), "--split", "val",
                                               "--cache-dir", str(demo_run[2]), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output.strip().splitlines()[-1])
    assert {"ap", "pq", "sq", "rq", "per_class_ap", "per_class_pq"} <= set(evaluated)
    assert set(evaluated["per_class_ap"]) == {"red disc", "green square", "blue triangle", "yellow disc"}

    pack = load_pack(demo_run[1])
    folder = open_folder(world_root, "val", pack.void)
    for task in ("instance", "panoptic"):
        ran = CliRunner().invoke(run_command, [str(exported_onnx), str(world_root / "val" / "images"), "--out",
                                               str(tmp_path / task), "--task", task, "--batch", "4", "--quiet"])
        assert ran.exit_code == 0, ran.output
    records = json.loads((tmp_path / "instance" / "instances.json").read_text())
    summary = json.loads((tmp_path / "panoptic" / "summary.json").read_text())
    panoptic = {a["image_id"]: a for a in json.loads((tmp_path / "panoptic" / "panoptic.json").read_text())["annotations"]}
    ap, pq = MaskAP(pack.class_names, pack.thing_classes), PanopticQuality(pack.class_names, pack.thing_classes)
    for sample, record in zip(folder.samples, summary["images"]):
        assert Path(record["file"]).name == sample.image.name
        truth = ground_truth_segments(read_label(sample, len(pack.class_names), pack.void), read_instances(sample),
                                      pack.thing_classes, pack.void)
        mine = [r for r in records if r["image_id"] == record["image_id"]]
        masks = np.stack([mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
                          for r in mine]).astype(bool) if mine else np.zeros((0, *truth.ids.shape), dtype=bool)
        ap.update(truth, masks, [r["category_id"] - 1 for r in mine], [r["score"] for r in mine])
        rgb = np.asarray(Image.open(tmp_path / "panoptic" / record["panoptic"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        segments = panoptic[record["image_id"]]["segments_info"]
        pq.update(truth, Segments(ids, {s["id"]: s["category_id"] - 1 for s in segments}))
    from_files, quality = ap.compute(), pq.compute()
    assert evaluated["ap"] == pytest.approx(from_files["ap"], abs=2e-3)
    assert evaluated["pq"] == pytest.approx(quality["pq"], abs=2e-3)
    assert evaluated["ap"] > 0 and evaluated["pq"] > 0
