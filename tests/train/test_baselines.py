"""Baselines (zero-shot, CoOp, VSPL): what each learns, that it trains, and that its pack round-trips."""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ssprompt.train.cli import train_command
from ssprompt.train.config import ModelConfig, TrainConfig
from ssprompt.train.model import SSPrompt
from ssprompt.train.pack import PackError, load_pack, save_pack
from ssprompt.train.pipeline import evaluate_pack, model_from_pack, train_pack

CLASSES = ["background", "red disc", "green square", "blue triangle"]


def _model(backbones, **kw) -> SSPrompt:
    return SSPrompt(backbones, CLASSES, ModelConfig(num_prompts=16, **kw))


def _encoded(model, batch=2):
    images = torch.randint(0, 256, (batch, model.image_size, model.image_size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    return model.encode(images)


@pytest.fixture(scope="module")
def trained_packs(tiny_backbones, synthetic_root, tmp_path_factory):
    """One short run of each baseline on the synthetic data: method -> (summary, pack path, cache)."""
    work = tmp_path_factory.mktemp("baselines")
    config = TrainConfig(data=str(synthetic_root), split="train", val_split="val", shots=1, epochs=3,
                         optimizer="adamw", lr=5e-2, short_side=0, cache_dir=str(work / "cache"))
    runs = {}
    for method in ("zero-shot", "coop", "vspl"):
        path = work / f"{method}.pt"
        summary = train_pack(ModelConfig(num_prompts=16, method=method), config, path, progress=False, log=lambda *_: None)
        runs[method] = (summary, path, work / "cache")
    return runs


def test_coop_context_from_words_reproduces_clip_text_embeddings(tiny_backbones):
    model = _model(tiny_backbones, method="coop")
    expected = tiny_backbones.clip.encode_text(tiny_backbones.tokenizer([f"a photo of a {name}." for name in CLASSES]))
    assert model.prompts.text.context.shape[0] == 4  # "a photo of a"
    torch.testing.assert_close(model.semantic_prompts(), expected, rtol=1e-5, atol=1e-5)


def test_coop_without_init_words_learns_m_random_vectors(tiny_backbones):
    model = _model(tiny_backbones, method="coop", method_options={"init": "", "context": 7})
    assert model.prompts.text.context.shape == (7, tiny_backbones.clip.token_embedding.weight.shape[1])
    assert model.semantic_prompts().shape == (len(CLASSES), model.default_semantic.shape[1])


def test_coop_gradient_reaches_only_the_context_through_the_text_tower(tiny_backbones):
    model = _model(tiny_backbones, method="coop")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompts.text.context"]
    model(*_encoded(model)).semantic[:, 1].sum().backward()
    assert model.prompts.text.context.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != "prompts.text.context")


def test_vspl_starts_at_the_grid_and_learns_only_point_coordinates(tiny_backbones):
    model = _model(tiny_backbones, method="vspl")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompts.point_logits"]
    torch.testing.assert_close(model.prompts.points(), model.grid_points)
    torch.testing.assert_close(model.spatial_prompts(), model.default_spatial, rtol=1e-4, atol=1e-4)
    model(*_encoded(model)).semantic[:, 1].sum().backward()
    assert model.prompts.point_logits.grad.abs().sum() > 0


def test_vspl_points_stay_on_the_input_whatever_their_logits(tiny_backbones):
    model = _model(tiny_backbones, method="vspl")
    with torch.no_grad():
        model.prompts.point_logits.mul_(1e3)  # far past the border, where a clamp would have stopped every gradient
    coords = model.prompts.points()
    assert coords.min() >= 0 and coords.max() <= model.image_size


def test_zero_shot_has_nothing_to_learn(tiny_backbones):
    model = _model(tiny_backbones, method="zero-shot")
    assert model.learnable_parameters() == []
    assert torch.equal(model.spatial_prompts(), model.default_spatial)
    assert torch.equal(model.semantic_prompts(), model.default_semantic)


def test_zero_shot_run_takes_no_step_and_packs_the_defaults(trained_packs):
    summary, path, _ = trained_packs["zero-shot"]
    assert summary["steps"] == 0 and summary["final_loss"] is None
    pack = load_pack(path)
    assert torch.equal(pack.spatial_prompts, pack.default_spatial) and pack.learned == {}
    assert torch.equal(pack.semantic_prompts, pack.default_semantic)


@pytest.mark.parametrize("method, learnable", [("coop", "context"), ("vspl", "point_logits")])
def test_baseline_training_moves_its_learnable_and_its_prompts(trained_packs, tiny_backbones, method, learnable):
    summary, path, _ = trained_packs[method]
    pack = load_pack(path)
    assert summary["steps"] > 0 and pack.method == method and list(pack.learned) == [learnable]
    start = _model(tiny_backbones, method=method).prompts.learned()[learnable]
    assert not torch.equal(pack.learned[learnable], start)
    changed = pack.semantic_prompts if method == "coop" else pack.spatial_prompts
    default = pack.default_semantic if method == "coop" else pack.default_spatial
    assert (changed - default).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["coop", "vspl"])
def test_baseline_pack_rebuilds_the_prompts_it_holds(trained_packs, method):
    pack = load_pack(trained_packs[method][1])
    model, _ = model_from_pack(pack, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.spatial_prompts(), pack.spatial_prompts)
        torch.testing.assert_close(model.semantic_prompts(), pack.semantic_prompts)


def test_default_prompts_of_a_coop_pack_evaluate_as_zero_shot(trained_packs, synthetic_root):
    zero_summary = trained_packs["zero-shot"][0]
    _, path, cache = trained_packs["coop"]
    metrics = evaluate_pack(path, synthetic_root, "val", default_prompts=True, cache_dir=str(cache), device="cpu",
                            progress=False)
    assert metrics["method"] == "zero-shot"
    assert metrics["miou"] == pytest.approx(zero_summary["after"]["miou"])


def test_coop_pack_without_its_context_is_refused(trained_packs, tmp_path):
    pack = load_pack(trained_packs["coop"][1])
    pack.learned = {}
    save_pack(pack, tmp_path / "broken.pt")
    with pytest.raises(PackError, match=r"broken.pt: a coop pack holds no learnables; its method needs context"):
        model_from_pack(load_pack(tmp_path / "broken.pt"), device="cpu", source=tmp_path / "broken.pt")


@pytest.mark.parametrize("method", ["coop", "vspl"])
def test_export_bakes_the_prompts_the_baseline_learned(trained_packs, method):
    from ssprompt.export.graph import ExportGraph

    pack = load_pack(trained_packs[method][1])
    graph = ExportGraph(model_from_pack(pack, device="cpu")[0])
    torch.testing.assert_close(graph.decoder.sparse_prompts, pack.spatial_prompts)
    torch.testing.assert_close(graph.semantic, F.normalize(pack.semantic_prompts, dim=-1))
    assert not torch.equal(graph.decoder.sparse_prompts if method == "vspl" else graph.semantic,
                           pack.default_spatial if method == "vspl" else F.normalize(pack.default_semantic, dim=-1))


def test_interrupted_coop_run_resumes_its_context(tiny_backbones, synthetic_root, tmp_path):
    from ssprompt.train.cache import FeatureCache
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.data.sampling import sample_k_shot
    from ssprompt.train.features import encode_folder, encoder_identity
    from ssprompt.train.loop import train_prompts

    folder = open_folder(synthetic_root, "train")
    model = SSPrompt(tiny_backbones, folder.class_names, ModelConfig(num_prompts=16, method="coop"))
    cache = FeatureCache(tmp_path / "cache", encoder_identity(model, tiny_backbones))
    items = encode_folder(model, folder, sample_k_shot(folder, 1), cache, short_side=0, progress=False)
    config = TrainConfig(epochs=2, optimizer="adamw", lr=5e-2, short_side=0)
    start = model.prompts.text.context.detach().clone()
    first = train_prompts(model, items, config, checkpoint_path=tmp_path / "run.ckpt", progress=False)
    trained = model.prompts.text.context.detach().clone()
    with torch.no_grad():
        model.prompts.text.context.copy_(start)  # as a new process would begin
    again = train_prompts(model, items, config, checkpoint_path=tmp_path / "run.ckpt", progress=False)
    assert again.resumed_from == first.steps and again.losses == []
    assert torch.equal(model.prompts.text.context, trained) and not torch.equal(trained, start)


def test_coop_flags_are_refused_where_they_do_not_apply(tmp_path, synthetic_root):
    base = ["--data", str(synthetic_root), "--split", "train", "--out", str(tmp_path / "p.pt")]
    for extra, expected in ((["--method", "vspl", "--coop-init", "a photo"], "--method vspl"),
                            (["--method", "coop", "--coop-context", "8"], "--coop-init ''")):
        result = CliRunner().invoke(train_command, base + extra)
        assert result.exit_code != 0 and expected in result.output, result.output
    assert not (tmp_path / "p.pt").exists()


def test_ssprompt_ablation_flags_are_refused_for_a_baseline(tmp_path, synthetic_root):
    result = CliRunner().invoke(train_command, ["--data", str(synthetic_root), "--split", "train", "--method", "coop",
                                                "--learn", "spatial", "--out", str(tmp_path / "p.pt")])
    assert result.exit_code != 0
    assert "--method coop" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.pt").exists()
