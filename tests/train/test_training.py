import json

import pytest
import torch
from click.testing import CliRunner

from ssprompt.train.cache import FeatureCache
from ssprompt.train.cli import eval_command, train_command
from ssprompt.train.config import ModelConfig, TrainConfig
from ssprompt.train.data.layouts import open_folder
from ssprompt.train.data.sampling import sample_k_shot
from ssprompt.train.model import SSPrompt
from ssprompt.train.pipeline import train_pack
from ssprompt.train import loop
from ssprompt.train.features import encode_folder, encoder_identity
from ssprompt.train.loop import train_prompts
from ssprompt.train.demo import DEMO_WORLD
from ssprompt.train.world import TASK_CLASSES


@pytest.fixture(scope="module")
def small_setup(tiny_backbones, synthetic_root, tmp_path_factory):
    folder = open_folder(synthetic_root, "train")
    model = SSPrompt(tiny_backbones, folder.class_names, ModelConfig(num_prompts=16))
    cache = FeatureCache(tmp_path_factory.mktemp("cache"), encoder_identity(model, tiny_backbones))
    items = encode_folder(model, folder, sample_k_shot(folder, 1), cache, short_side=0, flips=(False, True), progress=False)
    return model, items


def _config(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr": 2e-2, "short_side": 0, **kw})


def _learned(model) -> dict:
    return {n: p.detach().clone() for n, p in model.prompts.learned().items()}


def test_training_changes_only_the_four_learnables(small_setup, tiny_backbones):
    model, items = small_setup
    names = {f"prompts.{n}" for n in model.prompts.learned()}
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k not in names}
    learn_before = _learned(model)
    train_prompts(model, items, _config(), progress=False)
    for name, value in model.state_dict().items():
        if name not in names:
            assert torch.equal(value, frozen_before[name]), name
    for name, value in _learned(model).items():
        assert not torch.equal(value, learn_before[name]), name


def test_interrupted_training_resumes_to_the_same_prompts(tiny_backbones, small_setup, tmp_path, monkeypatch):
    model, items = small_setup
    start = _learned(model)

    def reset():
        with torch.no_grad():
            for n, p in model.prompts.learned().items():
                p.copy_(start[n])

    reset()
    uninterrupted = train_prompts(model, items, _config(epochs=6), progress=False)
    assert uninterrupted.steps >= 6
    expected = _learned(model)

    reset()
    real_loss, calls = loop.segmentation_loss, {"n": 0}

    def failing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "segmentation_loss", failing_loss)
    with pytest.raises(KeyboardInterrupt):
        train_prompts(model, items, _config(epochs=6, checkpoint_every=1), checkpoint_path=tmp_path / "run.ckpt", progress=False)
    monkeypatch.setattr(loop, "segmentation_loss", real_loss)

    reset()  # a fresh process would start from the defaults too
    resumed = train_prompts(model, items, _config(epochs=6, checkpoint_every=1), checkpoint_path=tmp_path / "run.ckpt", progress=False)
    assert resumed.resumed_from == 3
    assert len(resumed.losses) == uninterrupted.steps - 3
    for n, value in _learned(model).items():
        torch.testing.assert_close(value, expected[n])


# Learned prompts must beat the default ones on held-out data by this much mIoU. Class priors alone
# (what random backbones, or a broken pooling, leave to learn) gained 10 points on the old demo.
LEARNED_MARGIN = 0.15


def test_learned_prompts_beat_default_prompts_on_held_out_data(demo_run):
    summary, _, _ = demo_run
    assert summary["after"]["miou"] > summary["before"]["miou"] + LEARNED_MARGIN
    assert summary["final_loss"] < summary["first_loss"]


def test_a_broken_mask_pooling_does_not_reach_the_margin(demo_run, world_root, tmp_path, monkeypatch):
    """The margin is the method's: when every mask pools the whole image, the prompts learn only priors."""
    from ssprompt.train import model as model_module
    from ssprompt.train.demo import DEMO_SETTINGS

    pool_everything = model_module.mask_class_logits
    monkeypatch.setattr(model_module, "mask_class_logits",
                        lambda masks, *args: pool_everything(torch.zeros_like(masks), *args))
    summary, _, cache = demo_run
    s = DEMO_SETTINGS
    config = TrainConfig(data=str(world_root), split="train", val_split="val", shots=s["shots"], epochs=s["epochs"],
                         optimizer=s["optimizer"], lr=s["lr"], short_side=s["short_side"], cache_dir=str(cache))
    broken = train_pack(ModelConfig(num_prompts=s["num_prompts"]), config, tmp_path / "broken.pt", progress=False,
                        log=lambda *_: None)
    assert broken["after"]["miou"] < summary["before"]["miou"] + LEARNED_MARGIN < summary["after"]["miou"]


def test_ssp_eval_reports_learned_and_default_miou_as_json(demo_run, world_root):
    summary, pack, cache = demo_run
    runner = CliRunner()
    args = ["--prompts", str(pack), "--data", str(world_root), "--split", "val", "--cache-dir", str(cache), "--json"]
    learned = json.loads(runner.invoke(eval_command, args, catch_exceptions=False).output)
    default = json.loads(runner.invoke(eval_command, args + ["--default-prompts"], catch_exceptions=False).output)
    assert learned["miou"] == pytest.approx(summary["after"]["miou"])
    assert default["miou"] == pytest.approx(summary["before"]["miou"])
    assert list(learned["per_class"]) == list(TASK_CLASSES)


def test_second_run_reads_every_encoder_output_from_the_cache(demo_run, world_root, tmp_path):
    _, _, cache = demo_run
    config = TrainConfig(data=str(world_root), split="train", val_split="val", shots=4, epochs=1,
                         optimizer="adamw", lr=2e-2, short_side=0, cache_dir=str(cache))
    summary = train_pack(ModelConfig(num_prompts=64), config, tmp_path / "again.pt", progress=False, log=lambda *_: None)
    assert summary["cache_misses"] == 0
    assert summary["cache_hits"] == 2 * summary["images"] + DEMO_WORLD["n_val"]  # both flips of each shot, then the val split


def test_weights_plot_draws_the_packs_fusion_weights(demo_run, tmp_path, monkeypatch):
    import matplotlib.axes
    import numpy as np
    import torch
    from PIL import Image

    from ssprompt.train.pack import load_pack
    from ssprompt.train.plots import plot_fusion_weights

    drawn = []
    draw_bars = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda ax, x, height, **kw: drawn.append(list(height)) or draw_bars(ax, x, height, **kw))
    pack = load_pack(demo_run[1])
    plot = plot_fusion_weights(pack, tmp_path / "weights.png")
    semantic, spatial = drawn
    assert semantic == pytest.approx(torch.sigmoid(pack.learned["semantic_weight_logit"]).tolist())
    assert spatial == pytest.approx(torch.sigmoid(pack.learned["spatial_weight_logit"]).tolist())
    assert Image.open(plot).size == (720, 780)  # 6 x 6.5 inches at 120 dpi: five classes fit the minimum width
    picture = np.asarray(Image.open(plot).convert("RGB"))
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 16  # bars, axes and labels drawn, not one flat colour


def test_ssp_train_bad_folder_is_one_line_and_nonzero(tmp_path):
    (tmp_path / "images").mkdir()
    result = CliRunner().invoke(train_command, ["--data", str(tmp_path), "--out", str(tmp_path / "p.pt")])
    assert result.exit_code != 0
    assert "classes.txt" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.pt").exists()


def test_ssp_train_refuses_to_overwrite_without_force(tmp_path, synthetic_root):
    (tmp_path / "p.pt").write_bytes(b"keep")
    result = CliRunner().invoke(train_command, ["--data", str(synthetic_root), "--split", "train", "--out", str(tmp_path / "p.pt")])
    assert result.exit_code != 0 and "--force" in result.output
    assert (tmp_path / "p.pt").read_bytes() == b"keep"


def test_ssp_eval_refuses_a_pack_whose_backbone_differs(demo_run, world_root, tmp_path):
    from ssprompt.train.pack import load_pack, save_pack

    pack = load_pack(demo_run[1])
    pack.backbones = dict(pack.backbones, sam_sha256="0" * 64)
    save_pack(pack, tmp_path / "other.pt")
    result = CliRunner().invoke(eval_command, ["--prompts", str(tmp_path / "other.pt"), "--data", str(world_root), "--split", "val"])
    assert result.exit_code != 0 and "SAM weights" in result.output and "differ from the pack's" in result.output
