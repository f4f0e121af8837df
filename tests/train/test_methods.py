"""A new method plugs in through the method registry alone: train, pack, export, run; with options of
its own, from a file of its own, on ssp-train's command line."""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from ssprompt.train import cli as cli_module
from ssprompt.train import config as config_module
from ssprompt.train.cli import train_command
from ssprompt.train.config import ModelConfig
from ssprompt.train.methods.base import DefaultPrompts, Decoding, EncoderAdapter, ExtraLoss, MethodInputs
from ssprompt.train.methods.registry import METHODS, Method, register_method


class BiasedSemantics(DefaultPrompts):
    """A toy method: CLIP's class-name embeddings plus one learnable (C, D) offset."""

    def __init__(self, inputs: MethodInputs) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.offset = nn.Parameter(torch.zeros_like(inputs.default_semantic))

    def semantic(self) -> torch.Tensor:
        return self.default_semantic + self.offset

    def learned(self) -> dict[str, nn.Parameter]:
        return {"offset": self.offset}


@pytest.fixture
def toy_method():
    register_method(Method("toy", "a toy", prompts=lambda inputs, options: BiasedSemantics(inputs)))
    yield "toy"
    METHODS.pop("toy")


def test_a_registered_toy_source_trains_packs_exports_and_runs(toy_method, synthetic_root, demo_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.pipeline import export_pack
    from ssprompt.runtime.postprocess import restore_labels
    from ssprompt.runtime.preprocess import letterbox
    from ssprompt.runtime.run import segment_files
    from ssprompt.train.config import TrainConfig
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack, train_pack

    config = TrainConfig(data=str(synthetic_root), shots=1, epochs=1, batch_size=2, optimizer="adamw", lr=1e-2,
                         short_side=0, cache_dir=str(demo_run[2]))
    summary = train_pack(ModelConfig(method=toy_method, num_prompts=64), config, tmp_path / "pack.pt",
                         progress=False, log=lambda *_: None)
    assert summary["steps"] >= 1

    pack = load_pack(tmp_path / "pack.pt")
    assert pack.method == "toy" and set(pack.learned) == {"offset"}
    assert pack.learned["offset"].abs().max() > 0  # the step moved it
    torch.testing.assert_close(pack.semantic_prompts, pack.default_semantic + pack.learned["offset"])

    model, _ = model_from_pack(pack, device="cpu")
    assert isinstance(model.prompts, BiasedSemantics)
    torch.testing.assert_close(model.prompts.offset.detach(), pack.learned["offset"])

    onnx_path = export_pack(tmp_path / "pack.pt", tmp_path / "model", log=lambda *_: None).onnx
    images = sorted((synthetic_root / "val" / "images").iterdir())[:2]
    run = segment_files(onnx_path, images, tmp_path / "out", progress=False, log=lambda *_: None)
    assert len(run["images"]) == 2

    graph = ExportGraph(model)
    for path in images:
        square, placement = letterbox(np.asarray(Image.open(path).convert("RGB")), pack.image_size, model.pad_value)
        with torch.no_grad():
            expected = restore_labels(graph(torch.from_numpy(square[None]))[0][0].numpy(), placement)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "labels" / f"{path.stem}.png")), expected)


@pytest.fixture
def plugin(monkeypatch):
    """tests/train/plugin_method.py imported, so registered (after the CLI module was: see the imports above)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert "scaled" not in METHODS
    yield importlib.import_module("plugin_method")
    METHODS.pop("scaled", None)
    sys.modules.pop("plugin_method", None)


def test_a_plugin_method_in_one_file_brings_its_options_to_ssp_train_and_they_reach_it(plugin, synthetic_root, tmp_path):
    help_text = CliRunner().invoke(train_command, ["--help"]).output
    assert "--scale-init" in help_text and "--freeze-semantic" in help_text and "|vspl|scaled]" in help_text

    result = CliRunner().invoke(train_command, [
        "--data", str(synthetic_root), "--split", "train", "--method", "scaled", "--scale-init", "2.0", "--freeze-semantic",
        "--prompts", "16", "--shots", "1", "--epochs", "1", "--optimizer", "adamw", "--lr", "1e-2", "--short-side", "0",
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "p.pt"), "--quiet"])
    assert result.exit_code == 0, result.output

    from ssprompt.train.pack import load_pack

    pack = load_pack(tmp_path / "p.pt")
    assert pack.method == "scaled" and pack.model_config["method_options"] == {"scale_init": 2.0, "freeze_semantic": True}
    # Frozen at --scale-init: exactly 2 (AdamW's weight decay would have moved a trained one), while the offset trained.
    assert pack.learned["scale"].item() == 2.0 and pack.learned["spatial_offset"].abs().max() > 0
    torch.testing.assert_close(pack.semantic_prompts, 2.0 * pack.default_semantic)

    # Nothing shared was touched for it: neither the shared config nor the CLI module knows these options.
    assert not {"scale_init", "freeze_semantic"} & {f.name for f in fields(ModelConfig)}
    for source in (inspect.getsource(cli_module), inspect.getsource(config_module)):
        assert not any(name in source for name in ("scale_init", "scale-init", "freeze_semantic", "freeze-semantic"))


def test_a_plugin_option_is_refused_for_another_method_in_one_line(plugin, synthetic_root, tmp_path):
    result = CliRunner().invoke(train_command, ["--data", str(synthetic_root), "--method", "vspl", "--freeze-semantic",
                                                "--out", str(tmp_path / "p.pt")])
    assert result.exit_code == 1 and not (tmp_path / "p.pt").exists()
    assert result.output.strip() == "Error: --freeze-semantic is an option of --method scaled; --method vspl does not take it"


def test_a_plugin_option_out_of_its_range_is_refused_as_click_refuses(plugin, synthetic_root, tmp_path):
    result = CliRunner().invoke(train_command, ["--data", str(synthetic_root), "--method", "scaled", "--scale-init", "-1",
                                                "--out", str(tmp_path / "p.pt")])
    assert result.exit_code == 2 and "'--scale-init': -1.0 is not in the range x>=0.0" in result.output


def test_an_entry_point_of_the_group_registers_its_method(monkeypatch, tmp_path):
    from ssprompt.train import methods

    info = tmp_path / "scaled_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scaled-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{methods.PLUGIN_GROUP}]\nscaled = plugin_method\nbroken = no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    try:
        with pytest.warns(UserWarning, match=r"method plug-in broken \(no_such_module\) did not load: ModuleNotFoundError"):
            methods._load_plugins()
        assert METHODS["scaled"].options.__name__ == "ScaledOptions"
    finally:
        METHODS.pop("scaled", None)
        sys.modules.pop("plugin_method", None)


class DoubledEncoder(EncoderAdapter):
    def encode(self, image_encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return 2 * image_encoder(pixels)

    def identity(self) -> dict:
        return {"doubled": True}


class HalvedIoU(Decoding):
    def decode(self, model, sam_embeddings: torch.Tensor, spatial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = model.decode(sam_embeddings, spatial)
        return masks, iou / 2


class QuarterLoss(ExtraLoss):
    def loss(self, model, prediction, batch) -> torch.Tensor:
        return prediction.semantic.new_tensor(0.25)


def test_each_part_a_method_may_change_is_the_one_the_model_runs(tiny_backbones):
    from ssprompt.train.features import Features, encoder_identity
    from ssprompt.train.loop import segmentation_loss
    from ssprompt.train.model import SSPrompt

    register_method(Method("parts", "every part changed", prompts=lambda i, o: DefaultPrompts(i.default_spatial, i.default_semantic),
                           encoder_adapter=lambda i, o: DoubledEncoder(), decoding=lambda i, o: HalvedIoU(),
                           extra_loss=lambda i, o: QuarterLoss()))
    try:
        semantic = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
        changed = SSPrompt(tiny_backbones, ["a", "b", "c"], ModelConfig(method="parts", num_prompts=4), semantic).eval()
        plain = SSPrompt(tiny_backbones, ["a", "b", "c"], ModelConfig(method="zero-shot", num_prompts=4), semantic).eval()
    finally:
        METHODS.pop("parts")
    images = torch.randint(0, 256, (1, plain.image_size, plain.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    sam, clip = plain.encode(images)
    torch.testing.assert_close(changed.encode(images)[0], 2 * sam)
    assert encoder_identity(changed, tiny_backbones) == {**encoder_identity(plain, tiny_backbones), "encoder_adapter": {"doubled": True}}
    with torch.no_grad():
        torch.testing.assert_close(changed(sam, clip).iou, plain(sam, clip).iou / 2)
        batch = [Features(sam[0], clip[0], (plain.image_size, plain.image_size), torch.zeros(8, 8, dtype=torch.int64))]
        changed.decoding = plain.decoding  # the loss term alone differs now
        torch.testing.assert_close(segmentation_loss(changed, batch, void=255), segmentation_loss(plain, batch, void=255) + 0.25)
