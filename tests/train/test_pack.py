import pytest
import torch

from ssprompt.train.pack import PACK_FORMAT_VERSION, PackError, load_pack, save_pack


@pytest.fixture
def pack(demo_run):
    return load_pack(demo_run[1])


def test_pack_round_trips_with_weights_only(demo_run, tmp_path, pack):
    copy = tmp_path / "copy.pt"
    save_pack(pack, copy)
    again = torch.load(copy, map_location="cpu", weights_only=True)
    assert torch.equal(again["fused_spatial"], pack["fused_spatial"])
    assert again["class_names"] == ["background", "red disc", "green square", "blue triangle"]
    assert again["format_version"] == PACK_FORMAT_VERSION


def test_pack_fused_prompts_match_its_raw_learnables(pack):
    w = torch.sigmoid(pack["semantic_logit"])[:, None]
    torch.testing.assert_close(pack["fused_semantic"], w * pack["learned_semantic"] + (1 - w) * pack["default_semantic"])


def test_truncated_pack_is_refused(demo_run, tmp_path):
    data = demo_run[1].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="cut.pt: not a readable pack"):
        load_pack(cut)


def test_wrong_shapes_are_refused(pack, tmp_path):
    bad = dict(pack, spatial_logit=torch.zeros(3))
    save_pack(bad, tmp_path / "bad.pt")
    with pytest.raises(PackError, match=r"spatial_logit has shape \(3,\), expected \(64,\)"):
        load_pack(tmp_path / "bad.pt")


def test_wrong_format_version_is_refused(pack, tmp_path):
    save_pack(dict(pack, format_version=99), tmp_path / "v99.pt")
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


def test_version_1_pack_reads_as_ssprompt(pack, tmp_path):
    from ssprompt.train.pipeline import model_from_pack

    old = dict(pack, format_version=1, model_config={k: v for k, v in pack["model_config"].items() if k != "method"})
    save_pack(old, tmp_path / "v1.pt")
    model, _ = model_from_pack(load_pack(tmp_path / "v1.pt"), device="cpu")
    assert model.config.method == "ssprompt"
    torch.testing.assert_close(model.spatial_prompts(), pack["fused_spatial"])


def test_pack_of_an_unknown_method_is_refused(pack, tmp_path):
    save_pack(dict(pack, model_config=dict(pack["model_config"], method="magic")), tmp_path / "magic.pt")
    with pytest.raises(PackError, match=r"magic.pt: unknown method 'magic'"):
        load_pack(tmp_path / "magic.pt")


@pytest.mark.parametrize("key, value, message", [
    ("model_config", [], "model_config must be a dict"),
    ("class_names", 3, "class_names must be a list of non-empty strings"),
    ("class_names", "abcd", "class_names must be a list of non-empty strings"),
    ("palette", 3, "palette must be a list of colours"),
    ("void", "255", "void must be an integer label value"),
])
def test_plain_values_of_the_wrong_type_are_refused_before_use(pack, tmp_path, key, value, message):
    save_pack(dict(pack, **{key: value}), tmp_path / "odd.pt")
    with pytest.raises(PackError, match=f"odd.pt: {message}"):
        load_pack(tmp_path / "odd.pt")
