"""The TensorRT path's type check (.ci/typecheck: mypy, strict, against tensorrt-stubs and stubs generated from
cuda-bindings) passes on the project's modules and fails on a planted wrong call.

Seconds where .ci/typecheck has run before (as in .ci/run); its first run here (stubs, mypy's cache) takes about 30 s."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Calls as the builder, runner and CUDA helpers make them; each plant below changes one.
CORRECT = '''
import tensorrt as trt
from cuda.bindings import runtime as cudart


def build(path: str, cache_blob: bytes) -> bool:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    cache = config.create_timing_cache(cache_blob)
    return config.set_timing_cache(cache, ignore_mismatch=False)


def copy_kind() -> object:
    return cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
'''
PLANTS = {
    "a misspelled IBuilderConfig method": (
        "config.set_memory_pool_limit(", "config.set_memory_pool_limt(",
        '"IBuilderConfig" has no attribute "set_memory_pool_limt"'),
    "a missing argument": (
        "config.set_timing_cache(cache, ignore_mismatch=False)", "config.set_timing_cache(cache)",
        'Missing positional argument "ignore_mismatch" in call to "set_timing_cache" of "IBuilderConfig"'),
    "an argument of the wrong type": (
        "trt.MemoryPoolType.WORKSPACE, 1 << 30", "'workspace', 1 << 30",
        'Argument 1 to "set_memory_pool_limit" of "IBuilderConfig" has incompatible type "str"'),
    "a misspelled CUDA enum member": (
        "cudaMemcpyHostToDevice", "cudaMemcpyHostToDev", 'has no attribute "cudaMemcpyHostToDev"'),
}


def _typecheck(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".ci" / "typecheck"), *map(str, files)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_the_tensorrt_builder_runner_sidecar_and_cuda_helpers_pass_strict_mypy():
    result = _typecheck()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 4 source files" in result.stdout


def test_the_unplanted_module_passes(tmp_path):
    (tmp_path / "calls.py").write_text(CORRECT)
    result = _typecheck(tmp_path / "calls.py")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_wrong_call_fails(tmp_path, plant):
    old, new, message = PLANTS[plant]
    assert old in CORRECT
    (tmp_path / "calls.py").write_text(CORRECT.replace(old, new))
    result = _typecheck(tmp_path / "calls.py")
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr
