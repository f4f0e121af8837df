"""The engine build without TensorRT: the trtexec line and build_engine.sh (run with a fake trtexec), and
build_engine's handling of the timing cache against fakes of TensorRT's builder objects."""

import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ssprompt.export import tensorrt as export_tensorrt
from ssprompt.export.tensorrt import BatchRange, build_engine, build_script, trtexec_command
from ssprompt.runtime.contract import EngineFacts, GraphMetadata, Normalization
from ssprompt.runtime.files import file_sha256
from ssprompt.runtime.gpu import UNKNOWN_GPU, gpu_name
from ssprompt.runtime.sidecar import PENDING, check_sidecar, read_sidecar, write_sidecar

META = GraphMetadata(
    class_names=["road"], palette=[[1, 2, 3]], input_size=8, mask_size=2, num_prompts=1, pad_value=[0, 0, 0],
    normalization=Normalization([1.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3, 8), pack_sha256="ab12", backbones={},
    precision="fp16", ssprompt_version="0.1.0", contract_version=2,
)


def test_the_workspace_is_a_plain_number_of_mib():
    line = trtexec_command(Path("m.onnx"), Path("m.plan"), 256, BatchRange(1, 2, 8), False, 4096, Path("c.cache"))
    assert "--memPoolSize=workspace:4096" in shlex.split(line)  # not 4096M: trtexec 10.0 scales a unit twice


def test_paths_in_the_trtexec_line_are_shell_quoted():
    odd = Path("/data/my exports/it's $HOME")
    line = trtexec_command(odd / "model.onnx", odd / "model.plan", 256, BatchRange(1, 2, 8), True, 1024, odd / "t.cache")
    assert shlex.split(line) == [
        "trtexec", f"--onnx={odd}/model.onnx", f"--saveEngine={odd}/model.plan", "--minShapes=images:1x256x256x3",
        "--optShapes=images:2x256x256x3", "--maxShapes=images:8x256x256x3", "--memPoolSize=workspace:1024",
        f"--timingCacheFile={odd}/t.cache", "--stronglyTyped"]


def _export_folder(root: Path) -> Path:
    """What ssp-export --engine leaves where TensorRT is absent: graph, pending sidecar, build_engine.sh."""
    folder = root / "my export $x"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx graph")
    write_sidecar(folder / "model.plan", META, EngineFacts(PENDING, PENDING, [1, 2, 8], file_sha256(folder / "model.onnx")))
    (folder / "build_engine.sh").write_text(
        build_script("model.onnx", "model.plan", 8, BatchRange(1, 2, 8), True, 2048, Path("..", "t.cache")))
    return folder


def test_build_engine_sh_builds_under_a_temporary_name_and_records_the_build_for_the_runner(tmp_path, fake_trtexec_env):
    folder = _export_folder(tmp_path)
    result = subprocess.run(["sh", str(folder / "build_engine.sh")], cwd=tmp_path, env=fake_trtexec_env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    facts = read_sidecar(folder / "model.plan").engine
    gpu = gpu_name() or UNKNOWN_GPU  # what the completion reads on this machine
    assert facts == EngineFacts("10.9.0.34", gpu, [1, 2, 8], file_sha256(folder / "model.onnx"))
    check_sidecar(folder / "model.plan", facts, "10.9.0.34", gpu)  # the runner's check now passes
    assert (folder / "model.plan").read_bytes() == b"engine" and not (folder / "model.plan.partial").exists()
    args = (folder / "model.plan.partial.args").read_text().split()
    assert args[:2] == ["--onnx=model.onnx", "--saveEngine=model.plan.partial"] and "--timingCacheFile=../t.cache" in args


def test_a_failed_trtexec_leaves_no_plan_and_the_sidecar_pending(tmp_path, fake_trtexec_env):
    folder = _export_folder(tmp_path)
    result = subprocess.run(["sh", str(folder / "build_engine.sh")], cwd=tmp_path, env=dict(fake_trtexec_env, FAKE_TRTEXEC_EXIT="3"),
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert not (folder / "model.plan").exists() and read_sidecar(folder / "model.plan").engine.tensorrt_version == PENDING


def test_build_engine_sh_refuses_to_record_a_graph_other_than_the_exported_one(tmp_path, fake_trtexec_env):
    folder = _export_folder(tmp_path)
    (folder / "model.onnx").write_bytes(b"another graph")
    result = subprocess.run(["sh", str(folder / "build_engine.sh")], env=fake_trtexec_env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "model.onnx: not the graph model.plan.json was exported with (sha256 differs); export it again"
    assert read_sidecar(folder / "model.plan").engine.gpu == PENDING


def test_the_sidecar_completion_names_what_is_wrong_and_exits_2_on_bad_arguments(tmp_path):
    command = [sys.executable, "-m", "ssprompt.runtime.sidecar"]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 2
    missing = subprocess.run([*command, str(tmp_path / "model.plan"), str(tmp_path / "model.onnx")], capture_output=True,
                             text=True)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


# --------------------------------------------------------------------------- build_engine against fakes


class FakeCache:
    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return b"cache of this build"


class FakeConfig:
    def __init__(self, refuse_every_cache=False):
        self.cache, self.refuse_every_cache = None, refuse_every_cache

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def add_optimization_profile(self, profile):
        pass

    def create_timing_cache(self, blob):
        return None if blob == b"corrupt" else FakeCache(blob)  # TensorRT's answer to bytes it cannot read

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments")  # what pybind11 says to None
        if self.refuse_every_cache or cache.blob == b"another gpu's":
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


@pytest.fixture
def fake_builder(monkeypatch):
    config = FakeConfig()
    profile = types.SimpleNamespace(set_shape=lambda *args: None)
    builder = types.SimpleNamespace(create_network=lambda flags: "network", create_builder_config=lambda: config,
                                    create_optimization_profile=lambda: profile,
                                    build_serialized_network=lambda network, config: b"serialized plan")
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.9.0.34"
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    module.Builder = lambda logger: builder
    module.OnnxParser = lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True, num_errors=0)
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    module.Dims = tuple
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(export_tensorrt, "gpu_name", lambda: "Fake GPU")
    return config


@pytest.mark.parametrize("old_cache, message", [
    (None, None),
    (b"corrupt", "t.cache: is not a TensorRT timing cache; starting a fresh one"),
    (b"another gpu's", "t.cache: is from another GPU or TensorRT version; starting a fresh one"),
])
def test_a_missing_corrupt_or_foreign_timing_cache_still_builds_and_is_replaced(fake_builder, tmp_path, old_cache, message):
    cache = tmp_path / "t.cache"
    if old_cache is not None:
        cache.write_bytes(old_cache)
    lines = []
    facts = build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", 8, BatchRange(1, 2, 8), False, 512, cache, "cd34",
                         log=lines.append)
    assert facts == EngineFacts("10.9.0.34", "Fake GPU", [1, 2, 8], "cd34")
    assert (tmp_path / "m.plan").read_bytes() == b"serialized plan" and cache.read_bytes() == b"cache of this build"
    assert fake_builder.workspace == 512 << 20
    assert [line for line in lines if "cache" in line] == ([f"{tmp_path}/{message} (it is replaced after the build)"]
                                                         if message else [])


def test_a_build_without_any_timing_cache_writes_the_plan_and_leaves_the_old_cache(fake_builder, tmp_path):
    fake_builder.refuse_every_cache = True
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"another gpu's")
    lines = []
    build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", 8, BatchRange(1, 1, 1), True, 512, cache, "cd34", log=lines.append)
    assert (tmp_path / "m.plan").read_bytes() == b"serialized plan" and cache.read_bytes() == b"another gpu's"
    assert lines[1] == f"{cache}: TensorRT could not start a timing cache; building without one"


def test_a_folder_of_tensorrt_type_stubs_on_the_path_is_not_taken_for_tensorrt(tmp_path, monkeypatch):
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n")  # what tensorrt-stubs installs
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # recorded, so the stubs' import is dropped again afterwards
    monkeypatch.delitem(sys.modules, "tensorrt")
    assert not export_tensorrt.tensorrt_available()
