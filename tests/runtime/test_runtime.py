import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ssprompt.runtime.ort_runner import OnnxRuntimeRunner
from ssprompt.runtime.runner import open_runner
from ssprompt.runtime.errors import ModelError
from ssprompt.runtime.sidecar import check_sidecar
from ssprompt.runtime.cli import bench_command, run_command
from ssprompt.runtime.contract import INPUT, LABELS, MASK_LOGITS
from ssprompt.runtime.postprocess import restore_labels
from ssprompt.runtime.preprocess import letterbox

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_model(exported_onnx) -> Path:
    return exported_onnx


@pytest.fixture(scope="module")
def val_images(world_root) -> list[Path]:
    return sorted((world_root / "val" / "images").iterdir())[:3]


def test_ssp_run_labels_equal_the_pytorch_model(onnx_model, val_images, demo_run, tmp_path):
    import torch

    from ssprompt.export.graph import ExportGraph
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    result = CliRunner().invoke(run_command, [str(onnx_model), *map(str, val_images), "--out", str(tmp_path), "--batch", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    model, _ = model_from_pack(load_pack(demo_run[1]), device="cpu")
    graph = ExportGraph(model)
    for path in val_images:
        image = np.asarray(Image.open(path).convert("RGB"))
        square, placement = letterbox(image, 256, (124, 116, 104))
        with torch.no_grad():
            labels = graph(torch.from_numpy(square[None]))[0][0].numpy()
        expected = restore_labels(labels, placement)
        written = np.asarray(Image.open(tmp_path / "labels" / f"{path.stem}.png"))
        assert written.shape == image.shape[:2]
        np.testing.assert_array_equal(written, expected)


def test_restore_labels_inverts_the_letterbox():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4).repeat(10, 0).repeat(10, 1)  # 30 x 40, blocks of 10
    square, placement = letterbox(np.zeros((30, 40, 3), np.uint8), 80)
    boxed = np.full((80, 80), 255, np.uint8)
    boxed[: placement.height, : placement.width] = labels.repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(restore_labels(boxed, placement), labels)


def test_summary_overlays_and_classes(onnx_model, val_images, tmp_path):
    result = CliRunner().invoke(run_command, [str(onnx_model), str(val_images[0].parent), "--out", str(tmp_path), "--overlay", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["images"]) == len(list(val_images[0].parent.iterdir())) and summary["backend"] == "onnxruntime"
    first = summary["images"][0]
    assert first["height"] == 192 and first["width"] == 256 and first["classes"]
    assert Image.open(tmp_path / "overlays" / f"{Path(first['file']).stem}.png").size == (256, 192)


def test_bad_image_is_skipped_or_fails_by_flag(onnx_model, val_images, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    args = [str(onnx_model), str(val_images[0]), str(bad), "--quiet"]
    skipped = CliRunner().invoke(run_command, args + ["--out", str(tmp_path / "a")])
    assert skipped.exit_code == 0 and "notes.png" in skipped.output
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["skipped"][0]["file"] == str(bad)
    failed = CliRunner().invoke(run_command, args + ["--out", str(tmp_path / "b"), "--on-error", "fail"])
    assert failed.exit_code != 0 and "notes.png: cannot read image" in failed.output


def test_empty_directory_is_a_clear_error(onnx_model, tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(run_command, [str(onnx_model), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "empty: no images" in result.output


def test_bad_model_file_is_a_clear_error(val_images, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage")
    result = CliRunner().invoke(run_command, [str(bad), str(val_images[0]), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "model.onnx: not a loadable ONNX model" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_runner_checks_inputs_against_the_model(onnx_model):
    with OnnxRuntimeRunner(onnx_model) as runner:
        assert runner.metadata.class_names[0] == "background"
        with pytest.raises(ValueError, match=rf"model.onnx: input {INPUT} must be uint8 with 4 dims .*, got float32"):
            runner.infer({INPUT: np.zeros((1, 256, 256, 3), np.float32)})
        with pytest.raises(ValueError, match=r"shape \('batch', 256, 256, 3\)"):
            runner.infer({INPUT: np.zeros((1, 128, 128, 3), np.uint8)})
        assert runner.infer({INPUT: np.zeros((2, 256, 256, 3), np.uint8)})[LABELS].shape == (2, 256, 256)


def test_engine_built_elsewhere_is_refused_with_rebuild_advice(tmp_path):
    from ssprompt.runtime.contract import EngineFacts

    built = EngineFacts(tensorrt_version="10.3", gpu="NVIDIA A100", batch=[1, 1, 8], onnx_sha256="0" * 64)
    with pytest.raises(ModelError, match=r"built with TensorRT 10\.3 on NVIDIA A100.*this is TensorRT 10\.8 on Orin.*rebuild"):
        check_sidecar(tmp_path / "model.plan", built, "10.8", "Orin")


def test_engine_file_picks_the_tensorrt_runner_and_fails_cleanly_without_it(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    runner = open_runner(plan)
    assert runner.backend == "tensorrt"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="tensorrt package"):
            runner.activate()
    else:
        with pytest.raises(ModelError, match="model.plan.json: missing"):
            runner.activate()


def test_ssp_bench_writes_a_well_formed_table(onnx_model, tmp_path):
    md = tmp_path / "bench.md"
    result = CliRunner().invoke(bench_command, [str(onnx_model), "--batch", "1,2", "--warmup", "0", "--iters", "2",
                                                "--json", "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    assert all(r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0 for r in data["rows"])
    assert data["environment"]["backend"] == "onnxruntime" and data["environment"]["precision"] == "fp32"
    rows = [line for line in md.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| batch | p50 ms") and len(rows) == 3


TORCH_BLOCKED = """
import sys
for name in ("torch", "segment_anything", "open_clip", "torchvision"):
    sys.modules[name] = None  # any import of these now raises ImportError
from ssprompt.runtime.cli import bench_command, run_command
code = 0
for command, args in ((run_command, {run}), (run_command, {instance}), (bench_command, {bench})):
    try:
        command.main(args, standalone_mode=False)
    except SystemExit as exit_:
        code = code or exit_.code
assert not any(sys.modules.get(n) for n in ("torch", "segment_anything", "open_clip"))
sys.exit(code)
"""


def test_runtime_runs_where_torch_cannot_be_imported(onnx_model, val_images, tmp_path):
    run_args = [str(onnx_model), str(val_images[0]), "--out", str(tmp_path / "o"), "--overlay", "--quiet"]
    bench_args = [str(onnx_model), "--batch", "1", "--warmup", "0", "--iters", "1", "--quiet"]
    instance_args = [str(onnx_model), str(val_images[0]), "--out", str(tmp_path / "i"), "--task", "instance", "--quiet"]
    script = TORCH_BLOCKED.format(run=repr(run_args), instance=repr(instance_args), bench=repr(bench_args))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o" / "labels" / f"{val_images[0].stem}.png").is_file()
    assert (tmp_path / "i" / "instances.json").is_file()


def test_requested_gpu_provider_that_is_absent_falls_back_in_one_line(onnx_model, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with OnnxRuntimeRunner(onnx_model, provider="cuda") as runner:
        assert runner.device == "CPUExecutionProvider"
        assert runner.notes == ["CUDAExecutionProvider is not in this onnxruntime (pip install onnxruntime-gpu); "
                                "running on CPUExecutionProvider"]
    with OnnxRuntimeRunner(onnx_model) as runner:
        assert runner.notes == []  # auto on a CPU build: nothing fell back


def test_tensorrt_provider_is_never_requested_where_its_libraries_do_not_load(onnx_model, monkeypatch):
    import onnxruntime as ort

    from ssprompt.runtime import ort_runner

    monkeypatch.setattr(ort_runner, "tensorrt_libraries_load", lambda: False)
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *available])
    requested = []
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        requested.append([p[0] for p in providers])
        return real_session(path, sess_options=sess_options, providers=[p for p in providers if p[0] in available])

    monkeypatch.setattr(ort, "InferenceSession", session)
    with OnnxRuntimeRunner(onnx_model, provider="tensorrt") as runner:
        assert all("TensorrtExecutionProvider" not in chain for chain in requested)
        assert len(runner.notes) == 1 and runner.notes[0].startswith("TensorrtExecutionProvider needs libnvinfer.so.10")
        assert runner.notes[0].endswith("running on CPUExecutionProvider")


def test_ssp_run_prints_the_fallback_on_one_line(onnx_model, val_images, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    result = CliRunner().invoke(run_command, [str(onnx_model), str(val_images[0]), "--out", str(tmp_path), "--provider", "cuda",
                                              "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "CUDAExecutionProvider" in line]
    assert len(lines) == 1 and lines[0].endswith("running on CPUExecutionProvider")


def test_a_batch_smaller_than_the_fixed_one_is_padded_and_cut_back(onnx_model):
    images = np.random.default_rng(3).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    with OnnxRuntimeRunner(onnx_model) as runner:
        plain = runner.infer({INPUT: images})
        runner.fixed_batch = 3  # as a GPU session built for batch 3 would be
        padded = runner.infer({INPUT: images}, [LABELS])
    assert list(padded) == [LABELS] and padded[LABELS].shape == (1, 256, 256)
    np.testing.assert_array_equal(padded[LABELS], plain[LABELS])


def test_bound_buffers_are_refilled_on_every_call(onnx_model):
    """The CUDA-graph path binds fixed buffers once; each call must copy its own input into them."""
    rng = np.random.default_rng(4)
    first, second = (rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8) for _ in range(2))
    with OnnxRuntimeRunner(onnx_model) as runner:
        want = [runner.infer({INPUT: x}, [LABELS, MASK_LOGITS]) for x in (first, second)]
        runner.cuda_graph = True  # the bound path, on CPU buffers here
        got = [runner.infer({INPUT: x}, [LABELS, MASK_LOGITS]) for x in (first, second)]
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g[LABELS], w[LABELS])
        np.testing.assert_allclose(g[MASK_LOGITS], w[MASK_LOGITS], atol=1e-5)
    assert not np.array_equal(got[0][MASK_LOGITS], got[1][MASK_LOGITS])


def test_benchmark_opens_one_runner_per_batch_size(onnx_model):
    from ssprompt.runtime.bench import benchmark

    opened = []

    def open_batch(batch):
        opened.append(batch)
        return open_runner(onnx_model, batch=batch)

    from ssprompt.runtime.memory import GpuMemory

    rows, _ = benchmark(open_batch, [1, 2], warmup=0, iters=1, progress=False)
    assert opened == [1, 2] and [r.batch for r in rows] == [1, 2]
    if GpuMemory().handle is None:  # no NVML or no GPU: no figure rather than a made-up one
        assert all(r.gpu_peak_mb is None and r.gpu_memory_scope is None for r in rows)


def test_a_graph_that_cannot_be_captured_falls_back_to_plain_runs(onnx_model):
    images = np.random.default_rng(5).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    with OnnxRuntimeRunner(onnx_model) as runner:
        want = runner.infer({INPUT: images}, [LABELS])[LABELS]
        runner.cuda_graph = True  # as a GPU session would be
        real = type(runner.session).run_with_iobinding

        def capture_fails(session, binding, *args):
            raise RuntimeError("operation not permitted when stream is capturing")

        type(runner.session).run_with_iobinding = capture_fails
        try:
            got = runner.infer({INPUT: images}, [LABELS])[LABELS]
        finally:
            type(runner.session).run_with_iobinding = real
        assert runner.cuda_graph is False
        assert runner.notes[-1] == "CUDA graph capture failed (operation not permitted when stream is capturing); running without it"
    np.testing.assert_array_equal(got, want)
