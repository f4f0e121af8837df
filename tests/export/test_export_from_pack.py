"""Export reads the pack, not the training job: the graph bakes in the pack's stored prompts, built without
importing the training job's modules (the method's other parts come from its registered module)."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ssprompt.export.graph import ExportGraph
from ssprompt.export.pipeline import export_pack
from ssprompt.runtime.contract import CLASS_PROBS, INPUT, LABELS, OUTPUTS
from ssprompt.train.pack import load_pack, save_pack
from ssprompt.train.pipeline import model_from_pack

ort = pytest.importorskip("onnxruntime")

TRAINING_JOB = ("ssprompt.train.pipeline", "ssprompt.train.cli", "ssprompt.train.loop")
EXPORT_BLOCKED = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
from pathlib import Path
from ssprompt.export.pipeline import export_pack
result = export_pack(Path({pack!r}), Path({out!r}), log=lambda *_: None)
assert result.parity.passed
"""


def _graph_outputs(onnx_path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT: images})))


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


def test_a_pack_exports_with_the_training_job_blocked_from_import(demo_run, tmp_path):
    out = tmp_path / "model"
    script = EXPORT_BLOCKED.format(blocked=TRAINING_JOB, pack=str(demo_run[1]), out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    images = _images(5)
    model, _ = model_from_pack(load_pack(demo_run[1]), device="cpu")  # the trained model, its prompt source rebuilt
    with torch.no_grad():
        expected = ExportGraph(model)(torch.from_numpy(images))[OUTPUTS.index(LABELS)].numpy()
    np.testing.assert_array_equal(_graph_outputs(out / "model.onnx", images)[LABELS], expected)


def test_export_bakes_in_the_packs_stored_semantic_prompts_not_recomputed_ones(demo_run, tmp_path):
    """Semantic prompts rotated by one class after training: a graph that bakes in the stored prompts rotates its
    class probabilities and labels with them; one that recomputed them from the learnables would not."""
    pack = load_pack(demo_run[1])
    order = np.roll(np.arange(len(pack.class_names)), -1)  # the altered pack's class c holds the prompt of class order[c]
    save_pack(replace(pack, semantic_prompts=pack.semantic_prompts[torch.from_numpy(order)].clone()), tmp_path / "rotated.pt")
    exported = export_pack(tmp_path / "rotated.pt", tmp_path / "rotated", parity_gate=False, log=lambda *_: None)
    images = _images(6)
    graph = ExportGraph(model_from_pack(load_pack(demo_run[1]), device="cpu")[0])  # the pack as trained
    with torch.no_grad():
        trained = dict(zip(OUTPUTS, (t.numpy() for t in graph(torch.from_numpy(images)))))
    rotated = _graph_outputs(exported.onnx, images)
    assert not np.allclose(rotated[CLASS_PROBS], trained[CLASS_PROBS], atol=1e-2)  # the rotation is visible
    np.testing.assert_allclose(rotated[CLASS_PROBS], trained[CLASS_PROBS][..., order], atol=1e-4)
    # label l of the trained pack is the class whose prompt it now holds: the c with order[c] == l
    assert np.mean(rotated[LABELS] == np.argsort(order)[trained[LABELS]]) > 0.999


def test_a_pack_of_a_method_this_ssprompt_does_not_know_is_refused_before_the_backbones_load(demo_run, monkeypatch):
    """A method may change the encoder and the decoding, not only the prompts: a graph of an unknown method's pack
    would be wrong, so it is refused in one line naming the pack and the method."""
    from ssprompt.export.pack_model import export_model
    from ssprompt.train import pack as pack_module
    from ssprompt.train.pack import PackError

    def no_backbones(*args, **kwargs):
        raise AssertionError("the backbones were loaded for a pack that is refused")

    monkeypatch.setattr(pack_module, "load_backbones", no_backbones)
    pack = replace(load_pack(demo_run[1]), method="plug-in")  # a method registered by a plug-in absent here
    with pytest.raises(PackError, match=r"^plug-in\.pt: method 'plug-in' is not a registered method") as raised:
        export_model(pack, "plug-in.pt")
    assert "\n" not in str(raised.value)


def test_a_method_that_changes_the_decoding_is_refused_not_exported_as_one_pass(demo_run):
    """The graph traces one decoder pass over SAM's own encoder: a method whose decoding differs would export a graph
    that computes something else, so it is refused in one line."""
    from ssprompt.export.pack_model import export_model
    from ssprompt.train.methods.base import Decoding, DefaultPrompts
    from ssprompt.train.methods.registry import METHODS, Method, register_method
    from ssprompt.train.pack import PackError

    class TwoPasses(Decoding):
        def decode(self, model, sam_embeddings, spatial):
            return model.decode(sam_embeddings, spatial)

    register_method(Method("two-passes", "decodes its own way",
                           prompts=lambda i, o: DefaultPrompts(i.default_spatial, i.default_semantic),
                           decoding=lambda i, o: TwoPasses()))
    try:
        pack = load_pack(demo_run[1])
        pack = replace(pack, method="two-passes", model_config={**pack.model_config, "method_options": {}})
        with pytest.raises(PackError, match=r"^two-passes\.pt: method 'two-passes' changes SAM's encoder or its decoding"):
            export_model(pack, "two-passes.pt")
    finally:
        METHODS.pop("two-passes")
