"""ssp-run --task instance / panoptic on the demo's exported graph: COCO files that pycocotools reads,
the same instances as the PyTorch model gives, and graphs from before the instance outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssprompt.runtime.cli import run_command
from ssprompt.runtime.contract import CLASS_PROBS, IOU, MASK_LOGITS, METADATA_PREFIX, OUTPUTS
from ssprompt.runtime.instances import instances_from_prompts
from ssprompt.runtime.preprocess import letterbox

pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def val_images(world_root) -> list[Path]:
    return sorted((world_root / "val" / "images").iterdir())[:6]


def _run(model, images, out, *extra):
    result = CliRunner().invoke(run_command, [str(model), *map(str, images), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def test_instance_json_loads_in_pycocotools_and_holds_the_pytorch_models_instances(exported_onnx, demo_run, val_images,
                                                                                   tmp_path):
    import torch
    from pycocotools.coco import COCO

    from ssprompt.export.graph import ExportGraph
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    summary = _run(exported_onnx, val_images, tmp_path, "--task", "instance", "--batch", "2")
    coco = COCO()
    coco.dataset = {"images": [{"id": r["image_id"], "height": r["height"], "width": r["width"]} for r in summary["images"]],
                    "categories": summary["categories"], "annotations": []}
    coco.createIndex()
    results = coco.loadRes(str(tmp_path / "instances.json"))  # pycocotools reads the file as it is

    pack = load_pack(demo_run[1])
    model, _ = model_from_pack(pack, device="cpu")
    graph = ExportGraph(model)
    total = 0
    for record in summary["images"]:
        image = np.asarray(Image.open(record["file"]).convert("RGB"))
        square, placement = letterbox(image, model.image_size, model.pad_value)
        with torch.no_grad():
            out = dict(zip(OUTPUTS, (t[0].numpy() for t in graph(torch.from_numpy(square[None])))))
        expected = instances_from_prompts(out[MASK_LOGITS], out[IOU], out[CLASS_PROBS], pack.thing_classes, placement)
        found = sorted(results.loadAnns(results.getAnnIds(imgIds=[record["image_id"]])), key=lambda a: -a["score"])
        assert [a["category_id"] - 1 for a in found] == expected.classes.tolist()
        assert [a["score"] for a in found] == pytest.approx(expected.scores.tolist(), abs=1e-5)
        for annotation, mask in zip(found, expected.masks):
            decoded = results.annToMask(annotation).astype(bool)
            assert decoded.shape == image.shape[:2]
            assert (decoded != mask).sum() <= 2  # fp32 ONNX Runtime against PyTorch: a logit at 0 may flip
        total += len(found)
    assert total > 0


def test_panoptic_pngs_and_json_describe_the_same_segments(exported_onnx, val_images, tmp_path):
    summary = _run(exported_onnx, val_images, tmp_path, "--task", "panoptic", "--overlay")
    listing = json.loads((tmp_path / "panoptic.json").read_text())
    assert [c["isthing"] for c in listing["categories"]] == [0, 1, 1, 1, 1]  # the world's classes.txt markers
    segments = 0
    for record, annotation in zip(summary["images"], listing["annotations"]):
        rgb = np.asarray(Image.open(tmp_path / record["panoptic"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert ids.shape == (record["height"], record["width"])
        listed = {s["id"]: s["area"] for s in annotation["segments_info"]}
        present = {int(i): int((ids == i).sum()) for i in np.unique(ids) if i != 0}
        assert present == listed
        assert annotation["file_name"] == Path(record["panoptic"]).name
        assert (tmp_path / record["overlay"]).is_file()
        segments += len(listed)
    assert segments > 0


def test_a_graph_from_before_instance_outputs_runs_semantic_and_refuses_instance_in_one_line(exported_onnx, val_images,
                                                                                              tmp_path):
    import onnx

    model = onnx.load(str(exported_onnx))  # made into a version 1 graph: no class_probs, no contract fields
    kept = [p for p in model.metadata_props
            if p.key not in (METADATA_PREFIX + "contract_version", METADATA_PREFIX + "thing_classes")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    outputs = [o for o in model.graph.output if o.name != CLASS_PROBS]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    _run(old, val_images[:1], tmp_path / "semantic")
    refused = CliRunner().invoke(run_command, [str(old), str(val_images[0]), "--out", str(tmp_path / "i"), "--task", "instance"])
    assert refused.exit_code == 1
    assert "contract version 1" in refused.output and "re-export it with ssp-export" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "i").exists()


def test_a_rerun_with_another_task_removes_the_first_tasks_files(exported_onnx, val_images, tmp_path):
    _run(exported_onnx, val_images[:2], tmp_path, "--task", "panoptic")
    _run(exported_onnx, val_images[:2], tmp_path, "--task", "instance")
    assert (tmp_path / "instances.json").is_file()
    assert not (tmp_path / "panoptic.json").exists() and not list((tmp_path / "panoptic").glob("*.png"))
    _run(exported_onnx, val_images[:2], tmp_path)
    assert len(list((tmp_path / "labels").glob("*.png"))) == 2 and not (tmp_path / "instances.json").exists()
    _run(exported_onnx, val_images[:2], tmp_path, "--task", "panoptic")
    assert not list((tmp_path / "labels").glob("*.png")) and len(list((tmp_path / "panoptic").glob("*.png"))) == 2
