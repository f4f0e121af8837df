"""ssp-export --int8: calibrated QDQ graph, its calibration set, and its parity gate (the demo pack, tiny backbones)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from ssprompt.export import parity as parity_module
from ssprompt.export.cli import export_command
from ssprompt.export.int8 import Int8Config, calibration_files, calibration_set
from ssprompt.export.pipeline import ExportError, export_pack
from ssprompt.export.tensorrt import tensorrt_available
from ssprompt.runtime.contract import GraphMetadata
from ssprompt.runtime.cli import bench_command, run_command
from ssprompt.train.data.layouts import open_folder
from ssprompt.train.pack import load_pack

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

CALIB = 3


@pytest.fixture(scope="module")
def int8_export(demo_run, tmp_path_factory):
    """The demo pack exported with --int8 (calibrated on CALIB training images) and, without TensorRT, --engine."""
    return export_pack(demo_run[1], tmp_path_factory.mktemp("export") / "int8", int8=Int8Config(), calib_images=CALIB,
                       engine=not tensorrt_available(), log=lambda *_: None)


def _training_images(pack_path: Path) -> list[Path]:
    config = load_pack(pack_path).train_config
    return [s.image for s in open_folder(config["data"], config["split"]).samples]


def test_int8_graph_passes_its_gate_with_int8_weights_and_names_its_calibration_set(int8_export, demo_run):
    pack_path = demo_run[1]
    model = onnx.load(str(int8_export.onnx))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) > 10
    meta = GraphMetadata.decode({p.key: p.value for p in model.metadata_props})
    digests = "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in _training_images(pack_path)[:CALIB])
    assert meta.precision == "int8"
    assert meta.calibration == {"method": "minmax", "images": CALIB, "sha256": hashlib.sha256(digests.encode()).hexdigest()}
    assert int8_export.parity.precision == "int8" and int8_export.parity.passed


def test_ssp_run_and_ssp_bench_run_the_int8_graph_unchanged(int8_export, demo_run, tmp_path):
    pack_path = demo_run[1]
    image = _training_images(pack_path)[-1]
    ran = CliRunner().invoke(run_command, [str(int8_export.onnx), str(image), "--out", str(tmp_path / "run"), "--quiet"])
    assert ran.exit_code == 0, ran.output
    record = json.loads((tmp_path / "run" / "summary.json").read_text())["images"][0]
    assert record["file"] == str(image)
    assert Image.open(tmp_path / "run" / record["label"]).size == Image.open(image).size  # labels at the image's size
    bench = CliRunner().invoke(bench_command, [str(int8_export.onnx), "--batch", "1", "--warmup", "0", "--iters", "1", "--json"])
    assert bench.exit_code == 0 and json.loads(bench.output.strip().splitlines()[-1])["environment"]["precision"] == "int8"


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT present: the engine is built instead")
def test_the_trtexec_line_for_an_int8_graph_asks_for_int8_and_fp16(int8_export):
    script = (int8_export.out / "build_engine.sh").read_text()
    assert "--int8 --fp16" in script and "--stronglyTyped" not in script


def test_calibration_reads_training_images_and_never_evaluation_ones(demo_run, monkeypatch):
    pack_path = demo_run[1]
    from ssprompt.train.data import reading

    read = []
    real = reading.read_image
    monkeypatch.setattr(reading, "read_image", lambda path, *a, **k: read.append(Path(path).resolve()) or real(path, *a, **k))
    files, evaluation = calibration_files(None, load_pack(pack_path).train_config)
    calibration_set(files[:5], 256, (124, 116, 104), evaluation)
    config = load_pack(pack_path).train_config
    held_out = {s.image.resolve() for s in open_folder(config["data"], config["val_split"]).samples}
    assert len(read) == 5 and held_out and not set(read) & held_out
    assert set(read) <= {p.resolve() for p in _training_images(pack_path)}


def test_a_calibration_folder_holding_an_evaluation_image_is_refused(demo_run, tmp_path):
    pack_path = demo_run[1]
    config = load_pack(pack_path).train_config
    val_image = open_folder(config["data"], config["val_split"]).samples[0].image
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "copy.png").write_bytes(val_image.read_bytes())  # same contents, other name
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--int8",
                                                 "--calib", str(tmp_path / "calib")])
    assert result.exit_code == 1 and "copy.png: calibration image is the evaluation image" in result.output
    assert val_image.name in result.output and not (tmp_path / "o").exists()


def test_an_int8_graph_below_the_gate_is_not_written_and_the_costly_op_types_are_named(demo_run, tmp_path, monkeypatch):
    pack_path = demo_run[1]
    monkeypatch.setitem(parity_module.THRESHOLDS, "int8", (1.01, float("inf"), float("inf")))  # unreachable
    keep = ("Add", "Clip", "Gemm", "LayerNormalization", "Mul", "Relu", "Sigmoid", "Softmax")  # quantize MatMul, Conv
    with pytest.raises(ExportError) as raised:
        export_pack(pack_path, tmp_path / "o", int8=Int8Config(keep_float=keep), calib_images=2, log=lambda *_: None)
    message = str(raised.value)
    assert message.startswith("int8 parity gate failed: labels agree on ") and "(need 101%)" in message
    assert "op types that cost most: " in message and "MatMul (" in message and "Conv (" in message
    assert "\n" not in message
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".ssprompt-tmp-*"))


def test_fp16_and_int8_together_are_refused(demo_run, tmp_path):
    pack_path = demo_run[1]
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--int8", "--fp16"])
    assert result.exit_code == 1 and "--fp16 and --int8 exclude each other" in result.output
    assert not (tmp_path / "o").exists()


def _two_op_type_graph(path: Path) -> Path:
    """uint8 (1, 2, 2, 3) -> Cast -> MatMul (3 x 4) -> Relu -> Add: a MatMul's and an Add's tensors, one shared."""
    from onnx import TensorProto, helper, numpy_helper

    from ssprompt.runtime.contract import INPUT

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "weight")
    shift = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "shift")
    nodes = [helper.make_node("Cast", [INPUT], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["pixels", "weight"], ["projected"]),
             helper.make_node("Relu", ["projected"], ["rectified"]),
             helper.make_node("Add", ["rectified", "shift"], ["out"])]
    graph = helper.make_graph(nodes, "two_op_types", [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, [1, 2, 2, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 2, 4])], [weight, shift])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(("method", "passes"), [("minmax", 1), ("entropy", 2)])
def test_calibration_ranges_equal_onnxruntimes_own_calibrator(tmp_path, method, passes):
    """Ranges from our calibration (priority-ordered session; histograms one op type a pass, merged) equal those of
    onnxruntime's calibrator run as it comes, over every op type together, for each tensor of either op type."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from ssprompt.export.int8 import _ImageReader, calibration_ranges

    model = _two_op_type_graph(tmp_path / "model.onnx")
    images = np.random.default_rng(1).integers(0, 256, size=(3, 2, 2, 3), dtype=np.uint8)
    logged: list[str] = []
    ranges = calibration_ranges(model, images, method, ["MatMul", "Add"], log=logged.append)
    joint = create_calibrator(model, ["MatMul", "Add"], augmented_model_path=str(tmp_path / "joint.onnx"),
                              calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}[method],
                              extra_options={"symmetric": True})
    for index in range(len(images)):
        joint.collect_data(_ImageReader(images[index:index + 1]))
    expected = joint.compute_data().data
    assert len(logged) == passes
    assert {"pixels", "projected", "rectified", "out"} <= set(expected)
    assert set(ranges.data) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(ranges.data[name].range_value), np.asarray(value.range_value), err_msg=name)
