"""Fixtures of the runtime tests: one local Ray instance for every test that needs Ray; ssp-run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_instance():
    """A local Ray of two CPUs (as CI's machine), started once and shared; skips where Ray is not installed."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    pytest.importorskip("ray.data")
    for attempt in range(2):  # a loaded machine can take longer than the 30 s Ray's node waits for its raylet
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                     object_store_memory=256 * 2**20)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception for that timeout
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def val_images(world_root) -> list[Path]:
    """Three held-out images of the demo's task."""
    return sorted((world_root / "val" / "images").iterdir())[:3]


@pytest.fixture
def ssp_run():
    """ssp-run in-process (batch 2, quiet): ssp_run(model, inputs, out, *options) -> what it printed."""
    from click.testing import CliRunner

    from ssprompt.runtime.cli import run_command

    def run(model: Path, inputs: list, out: Path, *extra: str) -> str:
        result = CliRunner().invoke(run_command, [str(model), *map(str, inputs), "--out", str(out), "--batch", "2",
                                                  "--quiet", *extra])
        assert result.exit_code == 0, result.output
        return result.output

    return run
