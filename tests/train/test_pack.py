from dataclasses import fields, replace

import pytest
import torch

from ssprompt.train.pack import PACK_FORMAT, PACK_FORMAT_VERSION, Pack, PackError, load_pack, save_pack
from ssprompt.train.world import TASK_CLASSES


@pytest.fixture
def pack(demo_run) -> Pack:
    return load_pack(demo_run[1])


def _raw(pack: Pack, **changes) -> dict:
    """The file's dict, as save_pack writes it, with `changes` applied (None removes an entry)."""
    raw = {"format": PACK_FORMAT, "format_version": PACK_FORMAT_VERSION, **{f.name: getattr(pack, f.name) for f in fields(Pack)}}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def _version_2(pack: Pack) -> dict:
    """The same SSPrompt pack as version 2 wrote it: SSPrompt's attribute names, `fused_*` entries."""
    raw = _raw(pack, format_version=2, method=None, learned=None, spatial_prompts=None, semantic_prompts=None)
    raw.update(fused_spatial=pack.spatial_prompts, fused_semantic=pack.semantic_prompts,
               learned_spatial=pack.learned["spatial_embedding"], spatial_logit=pack.learned["spatial_weight_logit"],
               learned_semantic=pack.learned["semantic_embedding"], semantic_logit=pack.learned["semantic_weight_logit"])
    return raw


def test_a_saved_pack_loads_back_with_every_value_its_readers_use(tmp_path, pack):
    copy = tmp_path / "copy.pt"
    save_pack(replace(pack, thing_classes=[2, 4]), copy)
    raw = torch.load(copy, map_location="cpu", weights_only=True)  # plain tensors and values, no pickled objects
    assert raw["format_version"] == PACK_FORMAT_VERSION == 4
    assert raw["model_config"]["method_options"] == {"learn": "both", "fixed_weights": False}  # every option, defaults too
    again = load_pack(copy)
    # What export bakes into the graph, and what model_from_pack rebuilds the prompt source from.
    for name in ("spatial_prompts", "semantic_prompts", "default_semantic"):
        assert torch.equal(getattr(again, name), getattr(pack, name)), name
    assert set(again.learned) == {"spatial_embedding", "spatial_weight_logit", "semantic_embedding", "semantic_weight_logit"}
    assert all(torch.equal(again.learned[k], pack.learned[k]) for k in pack.learned)
    assert again.class_names == list(TASK_CLASSES) and again.thing_classes == [2, 4]
    assert (again.method, again.void, again.palette, again.backbones) == (pack.method, pack.void, pack.palette, pack.backbones)


def test_the_model_rebuilt_from_a_pack_gives_the_prompts_the_pack_stores(pack):
    """model_from_pack reads the learnables and the default class embeddings; from them alone it must reproduce the
    prompts the pack hands to export."""
    from ssprompt.train.pipeline import model_from_pack

    model, _ = model_from_pack(pack, device="cpu")
    assert pack.learned["semantic_weight_logit"].abs().max() > 0  # trained: the fusion is not the initial one
    with torch.no_grad():
        torch.testing.assert_close(model.spatial_prompts(), pack.spatial_prompts)
        torch.testing.assert_close(model.semantic_prompts(), pack.semantic_prompts)
        w = torch.sigmoid(pack.learned["semantic_weight_logit"])[:, None]
        torch.testing.assert_close(model.semantic_prompts(),
                                   w * pack.learned["semantic_embedding"] + (1 - w) * pack.default_semantic)


def test_the_exported_graph_bakes_in_the_packs_semantic_prompts(pack, exported_onnx):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    expected = torch.nn.functional.normalize(pack.semantic_prompts, dim=-1).numpy()  # (C, D), as the graph compares
    constants = [numpy_helper.to_array(t) for t in onnx.load(str(exported_onnx)).graph.initializer]
    found = [c for c in constants if c.shape in (expected.shape, expected.T.shape) and c.dtype == np.float32
             and np.allclose(c if c.shape == expected.shape else c.T, expected, atol=1e-6)]
    assert len(found) == 1


def test_truncated_pack_is_refused(demo_run, tmp_path):
    data = demo_run[1].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="cut.pt: not a readable pack"):
        load_pack(cut)


def test_wrong_shapes_are_refused(pack, tmp_path):
    save_pack(replace(pack, grid_points=torch.zeros(3, 2)), tmp_path / "bad.pt")
    with pytest.raises(PackError, match=r"bad.pt: grid_points has shape \(3, 2\), expected \(64, 2\)"):
        load_pack(tmp_path / "bad.pt")


def test_wrong_format_version_is_refused(pack, tmp_path):
    torch.save(_raw(pack, format_version=99), tmp_path / "v99.pt")
    with pytest.raises(PackError, match="format version 99"):
        load_pack(tmp_path / "v99.pt")


class Payload:
    """A class outside weights_only's allow-list: stands in for a malicious pickle."""


def test_pickled_objects_are_never_loaded_and_the_refusal_says_why(tmp_path):
    torch.save({"format": "ssprompt.pack", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(PackError) as refused:
        load_pack(tmp_path / "evil.pt")
    message = str(refused.value)
    assert message == (f"{tmp_path / 'evil.pt'}: holds pickled Python objects besides tensors and plain values; refused, "
                       "as a pack never runs code when loaded")  # whole, one line, and not blamed on truncation


@pytest.mark.parametrize("version", [1, 2])
def test_earlier_versions_read_into_the_same_pack(pack, tmp_path, version):
    from ssprompt.train.pipeline import model_from_pack

    old = _version_2(pack)
    if version == 1:  # no method anywhere: SSPrompt
        old.update(format_version=1, model_config={k: v for k, v in pack.model_config.items() if k != "method"})
    torch.save(old, tmp_path / "old.pt")
    again = load_pack(tmp_path / "old.pt")
    assert again.method == "ssprompt" and set(again.learned) == set(pack.learned)
    model, _ = model_from_pack(again, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.spatial_prompts(), pack.spatial_prompts)
        torch.testing.assert_close(model.semantic_prompts(), pack.semantic_prompts)


def test_a_version_2_pack_of_a_baseline_keeps_its_learnable(pack, tmp_path):
    old = _raw(pack, format_version=2, method=None, learned=None, spatial_prompts=None, semantic_prompts=None)
    old.update(fused_spatial=pack.spatial_prompts, fused_semantic=pack.semantic_prompts, point_logits=torch.zeros(64, 2),
               model_config=dict(pack.model_config, method="vspl"))
    torch.save(old, tmp_path / "vspl.pt")
    again = load_pack(tmp_path / "vspl.pt")
    assert again.method == "vspl" and list(again.learned) == ["point_logits"]


def _version_3(pack: Pack, method: str, **options) -> dict:
    """The pack as version 3 wrote it: every method's options among model_config's own keys (here, the
    defaults of version 3's ModelConfig with `options` over them)."""
    config = {k: v for k, v in pack.model_config.items() if k != "method_options"}
    config.update({"method": method, "coop_init": "a photo of a", "coop_context": 16, "learn_spatial": True,
                   "learn_semantic": True, "learn_weights": True, **options})
    return _raw(pack, format_version=3, method=method, model_config=config)


@pytest.mark.parametrize("method, old, options", [
    ("ssprompt", {"learn_semantic": False, "learn_weights": False}, {"learn": "spatial", "fixed_weights": True}),
    ("ssprompt", {"learn_spatial": False}, {"learn": "semantic", "fixed_weights": False}),
    ("coop", {"coop_init": "", "coop_context": 7}, {"init": "", "context": 7}),
    ("coop", {"coop_init": "a cartoon of a"}, {"init": "a cartoon of a", "context": None}),  # 16 unused: not kept
    ("vspl", {"coop_init": "", "learn_weights": False}, {}),  # another method's keys: dropped
])
def test_a_version_3_pack_keeps_its_methods_options_under_method_options(pack, tmp_path, method, old, options):
    torch.save(_version_3(pack, method, **old), tmp_path / "v3.pt")
    config = load_pack(tmp_path / "v3.pt").model_config
    assert config["method_options"] == options
    assert not {"coop_init", "coop_context", "learn_spatial", "learn_semantic", "learn_weights"} & set(config)


def test_a_version_3_ablation_pack_rebuilds_the_ablation(pack, tmp_path):
    from ssprompt.train.pipeline import model_from_pack

    torch.save(_version_3(pack, "ssprompt", learn_semantic=False), tmp_path / "v3.pt")
    model, _ = model_from_pack(load_pack(tmp_path / "v3.pt"), device="cpu")
    assert {name for name, p in model.learned().items() if p.requires_grad} == {"spatial_embedding", "spatial_weight_logit"}
    torch.testing.assert_close(model.spatial_prompts().detach(), pack.spatial_prompts)


def test_pack_of_an_unknown_method_is_refused_naming_the_file_before_the_backbones_load(pack, tmp_path, monkeypatch):
    from ssprompt.train import pack as pack_module, pipeline

    def load_backbones(*args):
        raise AssertionError("backbones loaded for a pack that cannot be used")

    monkeypatch.setattr(pack_module, "load_backbones", load_backbones)
    save_pack(replace(pack, method="magic"), tmp_path / "magic.pt")
    with pytest.raises(PackError, match=r"magic.pt: method 'magic' is not a registered method \(ssprompt, zero-shot"):
        pipeline.model_from_pack(load_pack(tmp_path / "magic.pt"), device="cpu", source=tmp_path / "magic.pt")


@pytest.mark.parametrize("key, value, message", [
    ("model_config", [], "model_config must be a dict"),
    ("learned", [], "learned must be a dict"),
    ("class_names", 3, "class_names must be a list of non-empty strings"),
    ("class_names", "abcd", "class_names must be a list of non-empty strings"),
    ("palette", 3, "palette must be a list of colours"),
    ("void", "255", "void must be an integer label value"),
    ("method", 7, "method must be a name"),
    ("thing_classes", [7], "thing_classes must be class indices in 0..4"),
    ("thing_classes", (1,), "thing_classes must be class indices in 0..4"),
])
def test_plain_values_of_the_wrong_type_are_refused_before_use(pack, tmp_path, key, value, message):
    torch.save(_raw(pack, **{key: value}), tmp_path / "odd.pt")
    with pytest.raises(PackError, match=f"odd.pt: {message}"):
        load_pack(tmp_path / "odd.pt")


def test_a_pack_from_before_thing_classes_loads_with_none(pack, tmp_path):
    torch.save(_raw(pack, thing_classes=None), tmp_path / "older.pt")
    assert load_pack(tmp_path / "older.pt").thing_classes == []
