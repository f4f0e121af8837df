"""ssp-run --ray (a Ray Data pipeline on a local Ray): the same files as ssp-run; resumable; sized to the CPUs."""

import re
import shutil
from pathlib import Path

import pytest

from ssprompt.runtime.cluster import ClusterConfig, plan_resources
from ssprompt.runtime.run import comparable_outputs

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("task, extra", [("semantic", ["--overlay"]), ("panoptic", [])])
def test_ssp_run_ray_writes_what_ssp_run_writes(ray_instance, exported_onnx, val_images, task, extra, tmp_path,
                                               ssp_run):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in val_images:
        shutil.copy(path, inputs / path.name)
    (inputs / "notes.png").write_text("not an image")
    ssp_run(exported_onnx, [inputs], tmp_path / "plain", "--task", task, *extra)
    printed = ssp_run(exported_onnx, [inputs], tmp_path / "ray", "--task", task, *extra, "--ray")
    plain = comparable_outputs(tmp_path / "plain")
    assert comparable_outputs(tmp_path / "ray") == plain
    assert "notes.png: cannot read image" in printed and len(plain) >= 1 + len(val_images)


def test_ssp_run_ray_rerun_segments_only_what_is_missing(ray_instance, exported_onnx, val_images, tmp_path, ssp_run):
    ssp_run(exported_onnx, val_images, tmp_path / "ray", "--ray")
    first = comparable_outputs(tmp_path / "ray")
    (tmp_path / "ray" / "labels" / f"{val_images[1].stem}.png").unlink()
    printed = ssp_run(exported_onnx, val_images, tmp_path / "ray", "--ray")
    assert re.search(rf"2 of {len(val_images)} images already done", printed)
    assert comparable_outputs(tmp_path / "ray") == first


def test_resources_leave_room_for_the_read_tasks():
    small = plan_resources(2, 0)
    assert small.actors == (1, 1) and small.actor_cpus * small.actors[1] + 2 * small.task_cpus <= 2
    big = plan_resources(64, 0)
    assert big.actors == (1, 15) and big.actor_cpus == 4 and big.threads == 4
    gpus = plan_resources(64, 4)
    assert gpus.actors == (1, 4) and gpus.actor_gpus == 1
    with pytest.raises(ValueError, match="--actors"):
        plan_resources(8, 0, ClusterConfig(actors=(3, 2)))


def test_the_serve_extra_pulls_no_torch():
    """Every distribution `ray[serve,data]` (the [serve] extra) requires, followed through installed metadata."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    wanted = [Requirement(text) for text in pyproject["project"]["optional-dependencies"]["serve"]]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = requirement.name.lower().replace("_", "-")
        key = name + str(sorted(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed")
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in requirement.extras or [""]):
                wanted.append(child)
    names = {key.split("[")[0] for key in seen}
    assert "ray" in names and "starlette" in names and "pyarrow" in names
    assert not names & {"torch", "torchvision", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13"}
