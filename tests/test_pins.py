"""The `tensorrt` extra's pins hold together: TensorRT 10 wheels of one CUDA major, and CUDA bindings of that major
that have the cuda.bindings module the runner imports (pyproject.toml, parsed)."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def _extra(name: str) -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"][name]]
    return {r.name: r for r in requirements}


def test_tensorrt_is_pinned_to_version_10_wheels_of_one_cuda_major():
    extra = _extra("tensorrt")
    names = [name for name in extra if name.startswith("tensorrt")]
    assert names == ["tensorrt-cu12"]  # not `tensorrt`, whose Linux wheels change CUDA major within 10.x (10.13.2)
    allowed = extra["tensorrt-cu12"].specifier
    assert all(v in allowed for v in ("10.0.1", "10.13.3.9", "10.16.1.11"))
    assert not any(v in allowed for v in ("8.6.1", "11.0.0.114"))


def test_the_cuda_bindings_match_tensorrts_cuda_major_and_have_cuda_bindings_runtime():
    extra = _extra("tensorrt")
    major = int(re.fullmatch(r"tensorrt-cu(\d+)", next(n for n in extra if n.startswith("tensorrt"))).group(1))
    assert "cuda-python" not in extra  # cuda-python 12.6.0 satisfied >=12.6 and has no cuda.bindings module
    allowed = extra["cuda-bindings"].specifier
    assert f"{major}.9.0" in allowed and f"{major}.9.10" in allowed
    assert not any(v in allowed for v in ("12.6.0", "11.8.7", f"{major + 1}.0.0", f"{major + 1}.5.0"))


def test_the_type_check_gets_mypy_and_cuda_bindings_from_the_dev_extra():
    extra = _extra("dev")
    assert {"mypy", "cuda-bindings"} <= set(extra)
    assert "tensorrt-stubs" not in extra  # its requirements pin the real TensorRT; .ci/typecheck installs it apart
