"""Shared fixtures: tiny backbones (the pretrained ones) and one demo-sized training run on the
miniature world, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_backbones():
    from ssprompt.train.backbones import load_backbones

    return load_backbones("tiny", "tiny")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from ssprompt.train.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="session")
def world_root(tmp_path_factory) -> Path:
    """The demo's generated task (train/world.py), as ssp-demo makes it."""
    from ssprompt.train.demo import DEMO_WORLD
    from ssprompt.train.world import make_world

    return make_world(tmp_path_factory.mktemp("data") / "world", **DEMO_WORLD)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, world_root):
    """The demo's training settings on the demo's task: (summary, pack path, cache dir)."""
    from ssprompt.train.demo import DEMO_SETTINGS
    from ssprompt.train.config import ModelConfig, TrainConfig
    from ssprompt.train.pipeline import train_pack

    work = tmp_path_factory.mktemp("demo")
    s = DEMO_SETTINGS
    config = TrainConfig(
        data=str(world_root), split="train", val_split="val", shots=s["shots"], epochs=s["epochs"],
        optimizer=s["optimizer"], lr=s["lr"], short_side=s["short_side"], cache_dir=str(work / "cache"),
    )
    summary = train_pack(ModelConfig(num_prompts=s["num_prompts"]), config, work / "pack.pt", progress=False,
                         weights_plot=work / "weights.png", log=lambda *_: None)
    return summary, work / "pack.pt", work / "cache"


@pytest.fixture(scope="session")
def exported_onnx(demo_run, tmp_path_factory) -> Path:
    """The demo pack exported once (FP32, parity-gated): model.onnx for the runtime tests."""
    from ssprompt.export.pipeline import export_pack

    return export_pack(demo_run[1], tmp_path_factory.mktemp("export") / "model", log=lambda *_: None).onnx


@pytest.fixture
def fake_trtexec_env(tmp_path_factory) -> dict:
    """Environment for running an export's build_engine.sh here: a `trtexec` on PATH that writes the engine file it
    is asked for (and exits with $FAKE_TRTEXEC_EXIT, 0 by default), and a `tensorrt` module of version 10.9.0.34
    for the sidecar's completion."""
    import os
    import sys

    bin_dir = tmp_path_factory.mktemp("fake-bin")
    trtexec = bin_dir / "trtexec"
    trtexec.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) out="${a#--saveEngine=}";; esac; done\n'
                       'printf "%s\\n" "$@" > "$out.args"\n[ "${FAKE_TRTEXEC_EXIT:-0}" = 0 ] || exit "$FAKE_TRTEXEC_EXIT"\n'
                       'printf engine > "$out"\n')
    trtexec.chmod(0o755)
    site = tmp_path_factory.mktemp("fake-site")
    (site / "tensorrt.py").write_text('__version__ = "10.9.0.34"\n')
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
                PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
