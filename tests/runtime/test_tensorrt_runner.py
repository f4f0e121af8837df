"""The TensorRT runner's decisions, against fakes of the TensorRT objects and of runtime/cuda.py (neither TensorRT
nor a GPU is here): the profile's batch range (a smaller batch padded), TensorRT refusing an input shape, activating twice, and an engine
whose sidecar was never completed after trtexec. The calls themselves are type-checked (.ci/typecheck)."""

import sys
import types

import numpy as np
import pytest

from ssprompt.runtime import cuda, tensorrt_runner
from ssprompt.runtime.runner import open_runner
from ssprompt.runtime.errors import ModelError
from ssprompt.runtime.contract import EngineFacts, GraphMetadata, Normalization
from ssprompt.runtime.sidecar import PENDING, write_sidecar

VERSION, GPU = "10.9.0.34", "Fake GPU"
META = GraphMetadata(
    class_names=["road", "car"], palette=[[128, 64, 128], [0, 0, 142]], input_size=4, mask_size=1, num_prompts=1,
    pad_value=[0, 0, 0], normalization=Normalization([1.0] * 3, [1.0] * 3, [1.0] * 3, [1.0] * 3, 4),
    pack_sha256="ab12", backbones={}, precision="fp32", ssprompt_version="0.1.0", contract_version=2,
)


class FakeEngine:
    """images (B, 4) uint8 in, doubled (B, 4) int32 out; the profile takes batches of 2 to 4."""

    num_io_tensors = 2
    tensors = {"images": ("in", np.dtype(np.uint8)), "doubled": ("out", np.dtype(np.int32))}

    def __init__(self, refused_batches=()):
        self.refused_batches = set(refused_batches)  # shapes TensorRT refuses although they are in the profile

    def get_tensor_name(self, index):
        return list(self.tensors)[index]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_shape(self, name):
        return [-1, 4]

    def get_tensor_profile_shape(self, name, profile):
        return [[2, 4], [2, 4], [4, 4]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.batch, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        ok = 2 <= shape[0] <= 4 and shape[0] not in self.engine.refused_batches
        self.batch = shape[0] if ok else None
        return ok

    def get_tensor_shape(self, name):
        return [self.batch if self.batch is not None else -1, 4]

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        if self.batch is None:  # what TensorRT does with an input shape it refused
            return False
        images = DEVICE[self.addresses["images"]][: self.batch * 4]
        DEVICE[self.addresses["doubled"]][: self.batch * 16] = (images.astype(np.int32) * 2).view(np.uint8)
        return True


DEVICE: dict[int, np.ndarray] = {}  # fake device memory: address -> bytes


class FakeDeviceBuffer:
    def __init__(self, nbytes):
        self.ptr = len(DEVICE) + 1
        DEVICE[self.ptr] = np.zeros(nbytes, np.uint8)

    def copy_from_host(self, array, stream):
        DEVICE[self.ptr][: array.nbytes] = array.reshape(-1).view(np.uint8)

    def copy_to_host(self, array, stream):
        array.reshape(-1).view(np.uint8)[...] = DEVICE[self.ptr][: array.nbytes]

    def free(self):
        self.ptr = 0


class FakePinnedBuffer:
    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype)

    def free(self):
        pass


class FakeStream:
    destroyed = 0

    def __init__(self):
        self.handle = 7

    def synchronize(self):
        pass

    def destroy(self):
        FakeStream.destroyed += 1


class FakeTimer:
    def __init__(self, stream):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def elapsed_ms(self):
        return 1.5


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A `tensorrt` module whose runtime deserializes any plan into a FakeEngine (or the one set on it)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = VERSION
    module.engine = FakeEngine()
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    module.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                          "deserialize_cuda_engine": lambda self, blob: module.engine})
    module.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    module.nptype = lambda dtype: dtype
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    for name, fake in (("Stream", FakeStream), ("DeviceBuffer", FakeDeviceBuffer), ("PinnedBuffer", FakePinnedBuffer),
                       ("EventTimer", FakeTimer)):
        monkeypatch.setattr(cuda, name, fake)
    monkeypatch.setattr(tensorrt_runner, "gpu_name", lambda: GPU)
    return module


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"serialized engine")
    write_sidecar(path, META, EngineFacts(VERSION, GPU, [2, 2, 4], "0" * 64))
    return path


def test_a_batch_within_the_profile_runs(fake_tensorrt, plan):
    images = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with open_runner(plan) as runner:
        out = runner.infer({"images": images})
        assert (runner.min_batch, runner.max_batch, runner.device, runner.last_gpu_ms) == (2, 4, GPU, 1.5)
    np.testing.assert_array_equal(out["doubled"], images.astype(np.int32) * 2)


def test_a_batch_below_the_profiles_minimum_is_padded_and_cut_back(fake_tensorrt, plan):
    with open_runner(plan) as runner:
        out = runner.infer({"images": np.full((1, 4), 7, np.uint8)})
    np.testing.assert_array_equal(out["doubled"], np.full((1, 4), 14, np.int32))


def test_a_batch_above_the_profiles_maximum_is_refused_before_tensorrt_runs(fake_tensorrt, plan):
    with open_runner(plan) as runner, pytest.raises(ValueError, match=r"batch 5 is outside the engine's profile, 2 to 4"):
        runner.infer({"images": np.zeros((5, 4), np.uint8)})


def test_an_input_shape_tensorrt_refuses_is_named_not_reported_as_a_failed_run(fake_tensorrt, plan):
    fake_tensorrt.engine = FakeEngine(refused_batches={3})
    with open_runner(plan) as runner, pytest.raises(ValueError, match=r"TensorRT refuses input images of shape \(3, 4\)"):
        runner.infer({"images": np.zeros((3, 4), np.uint8)})


def test_activating_twice_lists_each_tensor_once_and_frees_the_first_buffers(fake_tensorrt, plan):
    runner = open_runner(plan)
    runner.activate()
    first = [device for device, _ in runner._buffers.values()]
    destroyed = FakeStream.destroyed
    runner.activate()
    assert [s.name for s in runner.inputs] == ["images"] and [s.name for s in runner.outputs] == ["doubled"]
    assert all(device.ptr == 0 for device in first) and FakeStream.destroyed == destroyed + 1
    np.testing.assert_array_equal(runner.infer({"images": np.ones((2, 4), np.uint8)})["doubled"], np.full((2, 4), 2))
    runner.deactivate()
    assert runner.inputs == [] and runner.outputs == []


def test_an_engine_whose_sidecar_trtexec_never_completed_points_at_build_engine_sh(fake_tensorrt, plan):
    write_sidecar(plan, META, EngineFacts(PENDING, PENDING, [2, 2, 4], "0" * 64))
    with pytest.raises(ModelError, match=r"model.plan.json: the engine's build is not recorded; build it with build_engine.sh "
                                         r"\(its last line, python -m ssprompt.runtime.sidecar model.plan model.onnx"):
        open_runner(plan).activate()


def test_an_engine_built_with_another_tensorrt_is_refused(fake_tensorrt, plan):
    write_sidecar(plan, META, EngineFacts("10.3.0", GPU, [2, 2, 4], "0" * 64))
    with pytest.raises(ModelError, match=r"built with TensorRT 10\.3\.0 on Fake GPU, this is TensorRT 10\.9\.0\.34"):
        open_runner(plan).activate()
