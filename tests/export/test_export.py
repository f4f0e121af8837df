import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ssprompt.export import parity as parity_module
from ssprompt.export.cli import export_command
from ssprompt.export.graph import ExportGraph
from ssprompt.export.pipeline import ExportError, calibration_images, export_pack
from ssprompt.export.tensorrt import BatchRange, tensorrt_available
from ssprompt.runtime.contract import INPUT, LABELS, MASK_LOGITS, OUTPUTS, GraphMetadata
from ssprompt.train.backbones import file_sha256
from ssprompt.train.pack import load_pack
from ssprompt.train.pipeline import model_from_pack

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def pack_path(demo_run) -> Path:
    return demo_run[1]


@pytest.fixture(scope="module")
def fp32_export(pack_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "fp32"
    return export_pack(pack_path, out, engine=True, triton=True, batch=BatchRange(1, 2, 4), log=lambda *_: None)


@pytest.fixture(scope="module")
def torch_graph(pack_path):
    model, _ = model_from_pack(load_pack(pack_path), device="cpu")
    return ExportGraph(model)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch(fp32_export, torch_graph, batch):
    images = np.random.default_rng(batch).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(fp32_export.onnx), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT: images})))
    with torch.no_grad():
        reference = dict(zip(OUTPUTS, (t.numpy() for t in torch_graph(torch.from_numpy(images)))))
    assert onnx_out[LABELS].shape == (batch, 256, 256)
    np.testing.assert_array_equal(onnx_out[LABELS], reference[LABELS])
    np.testing.assert_allclose(onnx_out[MASK_LOGITS], reference[MASK_LOGITS], atol=1e-3, rtol=1e-4)


def test_exported_model_passes_onnx_checker_with_opset_17(fp32_export):
    onnx.checker.check_model(str(fp32_export.onnx))
    model = onnx.load(str(fp32_export.onnx))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == [INPUT]
    assert [o.name for o in model.graph.output] == list(OUTPUTS)


def test_layer_norm_2d_exports_as_layer_normalization(fp32_export, torch_graph):
    from segment_anything.modeling.common import LayerNorm2d

    assert not any(isinstance(m, LayerNorm2d) for m in torch_graph.modules())
    ops = [n.op_type for n in onnx.load(str(fp32_export.onnx)).graph.node]
    # LayerNorm2d's hand-written mean/variance would export as ReduceMean; nothing else uses it
    assert "ReduceMean" not in ops and "LayerNormalization" in ops


def test_export_graph_computes_what_the_trained_model_computes(torch_graph, pack_path):
    model, _ = model_from_pack(load_pack(pack_path), device="cpu")
    images = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8))
    with torch.no_grad():
        labels, _, masks, iou, class_ids, class_probs = torch_graph(images)
        pred = model(*model.encode(images))
        expected = torch.nn.functional.interpolate(pred.semantic, size=(256, 256), mode="bilinear", align_corners=False).argmax(1)
    torch.testing.assert_close(masks, pred.masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, pred.iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(class_probs, pred.class_logits.softmax(dim=-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(class_ids.long(), class_probs.argmax(dim=-1))
    assert (labels == expected).float().mean() > 0.999


def test_fp16_parity_holds_on_the_pretrained_decoders_confident_masks(torch_graph, fp16_export):
    """FP16 agrees with PyTorch where it is hard: a trained decoder's mask logits lie far from zero
    (a random one's stay within about ±0.1, where any rounding agrees)."""
    from ssprompt.train.world import task_scene

    images = torch.from_numpy(task_scene(np.random.default_rng(3), (256, 256)).image[None])
    with torch.no_grad():
        masks = torch_graph(images)[2]
    assert masks.abs().median() > 1.0
    assert fp16_export.parity.passed and fp16_export.parity.label_agreement >= 0.99
    assert 1e-5 < fp16_export.parity.class_probs_max_error < 0.02  # the instance outputs are compared too
    assert fp16_export.parity.mask_max_error > 1e-3  # FP16 really computed: its error is not FP32's


@pytest.fixture(scope="module")
def fp16_export(pack_path, tmp_path_factory):
    return export_pack(pack_path, tmp_path_factory.mktemp("export") / "fp16", fp16=True, log=lambda *_: None)


def test_fp16_export_keeps_only_the_listed_ops_in_fp32(fp16_export):
    from ssprompt.export.fp16 import KEEP_FP32

    result = fp16_export  # its parity gate passed
    model = onnx.load(str(result.onnx))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    computing = {"MatMul", "Gemm", "Softmax", "LayerNormalization", "Div", "Erf", "Add", "Mul", "Resize", "ReduceSum"}
    seen = set()
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    for node in model.graph.node:
        if node.op_type in computing and types.get(node.input[0]) in floats:  # not the integer shape arithmetic
            seen.add(node.op_type)
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT16, node.name  # everything else computes in FP16
        if node.op_type in KEEP_FP32:
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, node.name
    assert {"MatMul", "Softmax", "LayerNormalization"} <= seen and any(n.op_type in KEEP_FP32 for n in model.graph.node)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [
        onnx.TensorProto.INT32, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT32,
        onnx.TensorProto.FLOAT]


def test_the_graphs_inputs_and_outputs_are_the_contract_tables(fp32_export):
    """Names, order, element types and every axis of the exported graph, against runtime/contract.py's table at the
    sizes its metadata states."""
    from onnx.helper import tensor_dtype_to_np_dtype

    from ssprompt.runtime.contract import BATCH_AXIS, INPUT_SPECS, OUTPUT_SPECS

    model = onnx.load(str(fp32_export.onnx))
    sizes = GraphMetadata.decode({p.key: p.value for p in model.metadata_props}).axis_sizes()
    assert sizes == {"side": 256, "mask": 64, "prompts": 64, "classes": 5}
    for declared, specs in ((model.graph.input, INPUT_SPECS), (model.graph.output, OUTPUT_SPECS)):
        assert [v.name for v in declared] == [spec.name for spec in specs]
        for value, spec in zip(declared, specs):
            assert tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == np.dtype(spec.dtype), spec.name
            dims = tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)
            assert dims == spec.shape(sizes) and dims[0] == BATCH_AXIS, spec.name


def test_every_axis_but_the_batch_is_declared_static_and_matches_the_outputs(fp32_export):
    session = ort.InferenceSession(str(fp32_export.onnx), providers=["CPUExecutionProvider"])
    declared = {o.name: o.shape for o in session.get_outputs()}
    assert declared == {"labels": ["batch", 256, 256], "confidence": ["batch", 256, 256], "mask_logits": ["batch", 64, 64, 64],
                        "iou": ["batch", 64], "class_ids": ["batch", 64], "class_probs": ["batch", 64, 5]}
    outputs = session.run(None, {INPUT: np.zeros((2, 256, 256, 3), np.uint8)})
    for output, array in zip(session.get_outputs(), outputs):
        assert list(array.shape) == [2, *declared[output.name][1:]]


def test_metadata_round_trips(fp32_export, pack_path):
    session = ort.InferenceSession(str(fp32_export.onnx), providers=["CPUExecutionProvider"])
    meta = GraphMetadata.decode(session.get_modelmeta().custom_metadata_map)
    pack = load_pack(pack_path)
    assert meta.class_names == pack.class_names
    assert meta.palette == pack.palette
    assert meta.input_size == 256 and meta.num_prompts == 64 and meta.mask_size == 64
    assert meta.pack_sha256 == file_sha256(pack_path)
    assert meta.backbones["sam_sha256"] == pack.backbones["sam_sha256"]
    assert meta.precision == "fp32" and len(meta.normalization.sam_mean) == 3 and meta.engine is None
    assert meta.contract_version == 2 and meta.thing_classes == pack.thing_classes == [1, 2, 3, 4]


def test_triton_config_parses_and_names_the_real_io(fp32_export):
    pytest.importorskip("tritonclient.grpc")
    from ssprompt.export.triton import validate_config

    config_path = fp32_export.triton[0]  # the ONNX Runtime model; [1] is the plan where TensorRT built one
    config = validate_config(config_path)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert [i.name for i in config.input] == [INPUT] and list(config.input[0].dims) == [256, 256, 3]
    assert [o.name for o in config.output] == list(OUTPUTS)
    assert (config_path.parent / "1" / "model.onnx").is_file()


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT present: the engine is built instead")
def test_without_tensorrt_build_engine_sh_builds_an_engine_the_runner_accepts(fp32_export, tmp_path, fake_trtexec_env):
    """The sidecar is written at export with the build left pending, and completed by build_engine.sh after trtexec
    (a fake one here) on the machine that builds the engine, wherever the folder was copied."""
    import shutil

    from ssprompt.runtime.gpu import UNKNOWN_GPU, gpu_name
    from ssprompt.runtime.sidecar import PENDING, check_sidecar, read_sidecar

    assert fp32_export.engine is None and fp32_export.trtexec == f"sh {fp32_export.out}/build_engine.sh"
    pending = read_sidecar(fp32_export.out / "model.plan").engine
    assert (pending.tensorrt_version, pending.gpu, pending.batch) == (PENDING, PENDING, [1, 2, 4])
    assert pending.onnx_sha256 == file_sha256(fp32_export.onnx)
    target = tmp_path / "target machine" / "model"
    shutil.copytree(fp32_export.out, target)
    result = subprocess.run(["sh", str(target / "build_engine.sh")], env=fake_trtexec_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args = (target / "model.plan.partial.args").read_text().split()
    assert "--minShapes=images:1x256x256x3" in args and "--maxShapes=images:4x256x256x3" in args
    facts = read_sidecar(target / "model.plan").engine
    check_sidecar(target / "model.plan", facts, "10.9.0.34", gpu_name() or UNKNOWN_GPU)
    assert (facts.batch, facts.onnx_sha256) == ([1, 2, 4], pending.onnx_sha256)


@pytest.mark.skipif(not tensorrt_available(), reason="tensorrt does not import here")
def test_engine_and_sidecar_are_written(fp32_export):
    meta = GraphMetadata.decode(json.loads((fp32_export.out / "model.plan.json").read_text()))
    assert meta.engine.tensorrt_version and meta.engine.onnx_sha256 == file_sha256(fp32_export.onnx)


def test_checkpoint_that_differs_from_the_pack_is_refused(pack_path, tmp_path, tiny_backbones):
    other = tmp_path / "other_sam.pth"
    state = {k: v.clone() for k, v in tiny_backbones.sam.state_dict().items()}
    next(iter(state.values())).add_(1.0)
    torch.save(state, other)
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--sam-checkpoint", str(other), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "SAM weights" in result.output and "differ from the pack's" in result.output
    assert not (tmp_path / "o").exists()


def test_truncated_pack_is_refused(pack_path, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(pack_path.read_bytes()[:1000])
    result = CliRunner().invoke(export_command, ["--prompts", str(cut), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "cut.pt: not a readable pack" in result.output
    assert not (tmp_path / "o").exists()


def test_force_never_replaces_a_folder_that_is_not_an_export(pack_path, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--force"])
    assert result.exit_code != 0 and "not an ssprompt export folder" in result.output
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_existing_output_is_refused_without_force(pack_path, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--force" in result.output
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_failed_parity_gate_says_by_how_much_and_writes_nothing(pack_path, tmp_path, monkeypatch):
    monkeypatch.setitem(parity_module.THRESHOLDS, "fp32", (1.1, 0.0, 0.0))  # unreachable
    with pytest.raises(ExportError, match=r"parity gate failed: fp32 parity .* labels agree on 100\.000% \(need 110\.0%\)"):
        export_pack(pack_path, tmp_path / "o", log=lambda *_: None)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".ssprompt-tmp-*"))


def test_calibration_folder_without_images_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no images for the parity check"):
        calibration_images(256, (124, 116, 104), tmp_path / "empty")


@pytest.mark.parametrize("text", ["8", "4:2:8", "a:b:c", "0:1:2"])
def test_bad_batch_range_is_refused(text):
    with pytest.raises(ValueError, match="--batch"):
        BatchRange.parse(text)


def test_a_failed_fp16_conversion_is_one_line_and_writes_nothing(pack_path, tmp_path, monkeypatch):
    from ssprompt.export import pipeline

    def broken(model):
        onnx.checker.check_model(onnx.ModelProto())  # raises onnx's own ValidationError, as a bad conversion would

    monkeypatch.setattr(pipeline, "to_fp16", broken)
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--fp16"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith("Error: FP16 conversion failed:")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".ssprompt-tmp-*"))


def _onnx_runtime_export(pack_path, tmp_path, flag):
    """An FP16 export with `flag` (--ort-attention, --ort-fused) through the CLI, which must pass the parity gate;
    returns its ONNX model and the module traced for it."""
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--fp16", flag])
    assert result.exit_code == 0, result.output
    assert "fp16 parity" in result.output and "labels agree" in result.output
    return onnx.load(str(tmp_path / "o" / "model.onnx")), ExportGraph(model_from_pack(load_pack(pack_path), device="cpu")[0],
                                                                      flag.removeprefix("--"))


def test_ort_attention_export_fuses_every_encoder_attention_and_passes_the_fp16_gate(pack_path, tmp_path):
    model, graph = _onnx_runtime_export(pack_path, tmp_path, "--ort-attention")
    fused = [n for n in model.graph.node if n.domain == "com.microsoft"]
    assert graph.swapped_attention > 0
    assert [n.op_type for n in fused] == ["MultiHeadAttention"] * graph.swapped_attention
    assert not [n for n in model.graph.node if n.op_type == "Softmax" and "image_encoder" in n.name]


def test_ort_fused_export_fuses_attention_and_residual_norms_and_passes_the_fp16_gate(pack_path, tmp_path):
    model, graph = _onnx_runtime_export(pack_path, tmp_path, "--ort-fused")
    attention = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    # The encoder's and CLIP's attentions, and per group of prompts the decoder's three token-to-image ones.
    groups = -(-graph.decoder.num_prompts // graph.decoder.chunk)
    assert len(attention) == graph.swapped_attention + 3 * groups
    assert sum(n.op_type == "SkipLayerNormalization" for n in model.graph.node) > 0
    assert not [n for n in model.graph.node if n.op_type == "Softmax" and ("image_encoder" in n.name or "clip" in n.name)]


@pytest.mark.parametrize("flag", ["--ort-attention", "--ort-fused"])
def test_engine_with_onnx_runtime_ops_is_refused_in_one_line(pack_path, tmp_path, flag):
    result = CliRunner().invoke(export_command, ["--prompts", str(pack_path), "--out", str(tmp_path / "o"), "--engine",
                                                 flag])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: --engine: TensorRT cannot build ONNX Runtime's contrib ops ({flag}); export without {flag} for TensorRT"]
    assert not (tmp_path / "o").exists()
