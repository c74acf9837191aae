import json

import numpy as np
import pytest
import torch

from fit3d.cli import main
from fit3d.data.synthetic import SyntheticSceneConfig, generate_scene
from fit3d.compare import compare_figure, model_input_size
from fit3d.viz.images import read_image, save_png


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These forward passes are tiny; with 2 threads on 2 cores shared with other jobs, OpenMP's spinning
    made them ~40x slower (4.5 s vs 0.11 s per pass when the load average was 8)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backbones(dinov2_path):
    from fit3d.models import load_backbone

    original = load_backbone("dinov2_small", model_path=dinov2_path)
    finetuned = load_backbone("dinov2_small", model_path=dinov2_path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a stand-in for fine-tuning: slightly perturbed weights
        for p in finetuned.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
    return original, finetuned


@pytest.fixture(scope="module")
def photo():
    """A 'user photo' of an odd size (not a patch multiple, portrait)."""
    img = generate_scene(SyntheticSceneConfig(seed=3, num_views=1, width=150, height=203)).views[0].image
    return (img * 255).astype(np.uint8)


def test_model_input_size_keeps_aspect_on_patch_multiples():
    assert model_input_size(480, 640, 14, 448) == (448, 602)
    h, w = model_input_size(3000, 200, 14, 448, max_side=1344)  # a tall strip: long side capped
    assert h == 1344 and w % 14 == 0 and w >= 14


def test_compare_figure_panels_and_size(backbones, photo):
    original, finetuned = backbones
    fig = compare_figure(photo, original, finetuned, short_side=112, panel_height=None)
    H, W = model_input_size(203, 150, 14, 112)  # (154, 112)
    assert fig.dtype == np.uint8 and fig.ndim == 3
    title_bar = fig.shape[0] - H - 12
    assert 10 < title_bar < 40
    assert fig.shape[1] == 3 * W + 4 * 6
    image_panel = fig[6 + title_bar:6 + title_bar + H, 6:6 + W]
    pca_o = fig[6 + title_bar:6 + title_bar + H, 12 + W:12 + 2 * W]
    pca_f = fig[6 + title_bar:6 + title_bar + H, 18 + 2 * W:18 + 3 * W]
    assert abs(image_panel.astype(float).mean() - photo.astype(float).mean()) < 10
    # crisp patches: each 14x14 block of a PCA panel has one colour
    assert (pca_o[:14, :14] == pca_o[0, 0]).all()
    # the two maps are coloured with one basis: slightly perturbed weights give close, not equal, colours
    diff = np.abs(pca_o.astype(int) - pca_f.astype(int)).mean()
    assert 0 < diff < 40


def test_same_model_gives_identical_pca_panels(backbones, photo):
    original, _ = backbones
    fig = compare_figure(photo, original, original, short_side=56, panel_height=None)
    H, W = model_input_size(203, 150, 14, 56)
    top = fig.shape[0] - 6 - H
    np.testing.assert_array_equal(fig[top:top + H, 12 + W:12 + 2 * W], fig[top:top + H, 18 + 2 * W:18 + 3 * W])


def test_depth_probe_panels(backbones, photo):
    from fit3d.probe.depth import LinearDepthHead

    original, finetuned = backbones
    torch.manual_seed(0)
    probes = {"original": LinearDepthHead(384, 384, n_bins=16, max_depth=5.0),
              "concat": LinearDepthHead(768, 384, n_bins=16, max_depth=5.0)}
    base = compare_figure(photo, original, finetuned, short_side=56, panel_height=100)
    fig = compare_figure(photo, original, finetuned, probes, short_side=56, panel_height=100)
    assert fig.shape[0] == base.shape[0]
    assert fig.shape[1] > base.shape[1] + 2 * 70  # two more panels and a colour bar


@pytest.fixture(scope="module")
def ft_dir(backbones, dinov2_path, tmp_path_factory):
    """A `fit3d finetune`-style folder holding the perturbed model."""
    _, finetuned = backbones
    ft_dir = tmp_path_factory.mktemp("ft")
    finetuned.model.save_pretrained(ft_dir / "model")
    (ft_dir / "fit3d.json").write_text(json.dumps({"backbone": "dinov2_small",
                                                   "original_model_path": str(dinov2_path)}))
    return ft_dir


def test_compare_cli_on_a_finetuned_folder(ft_dir, photo, tmp_path):
    save_png(tmp_path / "imgs" / "photo.png", photo)
    save_png(tmp_path / "imgs" / "small.png", photo[:60, :90])
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "imgs"), "--finetuned", str(ft_dir), "--out", str(out),
                 "--short-side", "56", "--panel-height", "120"]) == 0
    # + the guard's marker and the settings record
    assert sorted(p.name for p in out.iterdir()) == [".fit3d-output.json", "compare.json", "photo.png", "small.png"]
    fig = read_image(out / "photo.png")
    assert fig.shape[0] > 120 and fig.shape[1] > 3 * 80
    assert main(["compare", str(tmp_path / "missing.png"), "--finetuned", str(ft_dir), "--out", str(out)]) == 1
    # issue 22: other settings into the same --out are refused before any work, naming them; --overwrite replaces
    before = (out / "photo.png").read_bytes()
    assert main(["compare", str(tmp_path / "imgs"), "--finetuned", str(ft_dir), "--out", str(out),
                 "--short-side", "70", "--panel-height", "120"]) == 1
    assert (out / "photo.png").read_bytes() == before
    assert main(["compare", str(tmp_path / "imgs"), "--finetuned", str(ft_dir), "--out", str(out),
                 "--short-side", "70", "--panel-height", "120", "--overwrite"]) == 0
    assert (out / "photo.png").read_bytes() != before


def test_depth_probes_read_the_features_the_probe_trained_on(backbones, photo):
    """concat = fit3d.models.ConcatFeatures tokens (original patch first, original [CLS]), extracted as
    fit3d.probe.features.extract_features does; original / finetuned = each backbone's own tokens."""
    from fit3d.models import ConcatFeatures
    from fit3d.probe.features import extract_features
    from fit3d.compare import prepare_image

    original, finetuned = backbones
    seen = {}

    def recorder(source):
        def probe(patch, cls, size):
            seen[source] = (patch.clone(), cls.clone())
            return torch.ones(patch.shape[0], 1, *size) * (1 + len(seen))
        return probe

    compare_figure(photo, original, finetuned, {k: recorder(k) for k in ("original", "finetuned", "concat")},
                   short_side=56, panel_height=60)
    x = prepare_image(photo, original, 56)
    img = [x[0].permute(1, 2, 0).numpy()]
    for source, model in (("original", original), ("finetuned", finetuned),
                          ("concat", ConcatFeatures(original, finetuned))):
        patch, cls = extract_features(model, img)
        torch.testing.assert_close(seen[source][0], patch)
        torch.testing.assert_close(seen[source][1], cls)
    assert seen["concat"][0].shape[1] == 768 and seen["concat"][1].shape[1] == 384
    torch.testing.assert_close(seen["concat"][0][:, :384], seen["original"][0])


@pytest.fixture(scope="module")
def probe_dir(backbones, ft_dir, tmp_path_factory):
    """A `fit3d probe --task depth` output folder: heads on original and concat features trained (briefly)
    on synthetic views at 56 x 42, as the probe CLI extracts and saves them."""
    from fit3d.models import ConcatFeatures
    from fit3d.probe.depth import DepthSettings, train_depth
    from fit3d.probe.features import FeatureSource, extract_features
    from fit3d.probe.heads import depth_head_meta, head_path, save_head, source_meta

    original, finetuned = backbones
    views = generate_scene(SyntheticSceneConfig(seed=5, num_views=6, width=56, height=42)).views
    images = [v.image for v in views]
    depth = torch.from_numpy(np.stack([v.depth for v in views])).float()
    out = tmp_path_factory.mktemp("probe")
    for kind, model in (("original", original), ("concat", ConcatFeatures(original, finetuned))):
        patch, cls = extract_features(model, images)
        s = DepthSettings(iterations=30, batch_size=3, lr=3e-3, warmup=3, n_bins=32, max_depth=8.0)
        head, _ = train_depth(patch, cls, depth, s)
        src = FeatureSource(kind=kind, finetuned_dir=str(ft_dir))
        meta = depth_head_meta(head, patch.shape[1], cls.shape[1], s.min_depth, s.max_depth,
                               source=source_meta(src), resolution=[56, 42], patch_size=14)
        save_head(head_path(out, src.label), head, meta)
    return out


def test_compare_cli_with_depth_probes(ft_dir, probe_dir, photo, tmp_path, capsys):
    save_png(tmp_path / "imgs" / "photo.png", photo)
    base = ["compare", str(tmp_path / "imgs"), "--finetuned", str(ft_dir), "--panel-height", "120"]
    assert main([*base, "--out", str(tmp_path / "plain"), "--short-side", "42"]) == 0
    assert main([*base, "--out", str(tmp_path / "probes"), "--depth-probe", str(probe_dir)]) == 0
    printed = capsys.readouterr().out
    assert "original" in printed and "concat" in printed and "short side 42" in printed  # the probes' scale
    plain, fig = read_image(tmp_path / "plain" / "photo.png"), read_image(tmp_path / "probes" / "photo.png")
    line = int(16 * 1.7)  # one title line (the narrower figure's title may wrap onto more lines)
    assert (plain.shape[0] - fig.shape[0]) % line == 0 and fig.shape[0] <= plain.shape[0]  # same panel height
    assert fig.shape[1] > plain.shape[1] + 2 * 80  # 2 depth panels + bar
    # a single head file works too; a head for other backbones' features is a plain error naming the file
    one = probe_dir / "heads" / "concat.pt"
    assert main([*base, "--out", str(tmp_path / "one"), "--depth-probe", str(one)]) == 0
    from fit3d.probe.heads import load_depth_head, save_head

    head, meta = load_depth_head(one)
    save_head(tmp_path / "wide.pt", head, {**meta, "source": {**meta["source"], "kind": "original"}})
    assert main([*base, "--out", str(tmp_path / "bad"), "--depth-probe", str(tmp_path / "wide.pt")]) == 1
    assert "wide.pt" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "bad"), "--depth-probe", str(tmp_path / "nothing")]) == 1


def test_compare_cli_correspondence_figure_of_a_scene(ft_dir, tmp_path, capsys):
    """--scene: a view pair's matches, original vs fine-tuned, right / wrong against depth and poses."""
    from fit3d.data.synthetic import write_scene

    scene = write_scene(generate_scene(SyntheticSceneConfig(seed=5, num_views=6, width=112, height=84,
                                                            num_objects=3), name="room"), tmp_path / "room")
    out = tmp_path / "out"
    assert main(["compare", "--scene", str(scene), "--finetuned", str(ft_dir), "--out", str(out),
                 "--short-side", "84", "--panel-height", "84"]) == 0
    fig = read_image(out / "correspondence_room.png")
    assert fig.shape[1] >= 2 * 112 and fig.shape[0] > 2 * 84  # two rows: original, fine-tuned
    said = capsys.readouterr().out
    assert "right matches original" in said and "fine-tuned" in said
    assert main(["compare", "--scene", str(scene), "--pair", "0", "nine", "--finetuned", str(ft_dir),
                 "--out", str(out)]) == 1
    assert "nine" in capsys.readouterr().err
    assert main(["compare", "--finetuned", str(ft_dir), "--out", str(out)]) == 1
    assert "--scene" in capsys.readouterr().err
