"""A new method plugs in through the prompt-source registry alone: train, pack, export, run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ssprompt.train.prompts import PROMPT_SOURCES, DefaultPrompts, PromptSource, SourceInputs, register_prompt_source


class BiasedSemantics(DefaultPrompts):
    """A toy method: CLIP's class-name embeddings plus one learnable (C, D) offset."""

    def __init__(self, inputs: SourceInputs) -> None:
        super().__init__(inputs.default_spatial, inputs.default_semantic)
        self.offset = nn.Parameter(torch.zeros_like(inputs.default_semantic))

    def semantic(self) -> torch.Tensor:
        return self.default_semantic + self.offset

    def learned(self) -> dict[str, nn.Parameter]:
        return {"offset": self.offset}


@pytest.fixture
def toy_method():
    @register_prompt_source("toy")
    def build_toy(inputs: SourceInputs) -> PromptSource:
        return BiasedSemantics(inputs)

    yield "toy"
    PROMPT_SOURCES.pop("toy")


def test_a_registered_toy_source_trains_packs_exports_and_runs(toy_method, synthetic_root, demo_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.pipeline import export_pack
    from ssprompt.runtime.postprocess import restore_labels
    from ssprompt.runtime.preprocess import letterbox
    from ssprompt.runtime.run import segment_files
    from ssprompt.train.config import ModelConfig, TrainConfig
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
