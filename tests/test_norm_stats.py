"""Fixed instance-norm statistics (models/networks/norm_stats.py) and their place in model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.networks.norm_stats import check_norm_stats, fix_norm_stats, fixed_norm_stats, gathering
from pipeline.training.checkpoint import CheckpointError, load_model, read_model_file, save_model_file


def _pixelwise_net() -> nn.Sequential:
    """1x1 convolutions and instance norms: with fixed statistics, each output pixel depends on its
    input pixel only."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 1), nn.InstanceNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1),
                         nn.InstanceNorm2d(3)).eval()


def _images(n: int = 5, size: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=g) * torch.linspace(0.2, 1.0, n).view(n, 1, 1, 1)


def test_gathered_statistics_pool_every_image_and_pixel() -> None:
    net, images = _pixelwise_net(), _images()
    with gathering(net) as gatherer, torch.no_grad():
        net(images[:2])
        net(images[2:])
        stats = gatherer.result()
    assert gatherer.images == 5 and list(stats) == ["1", "4"]
    with torch.no_grad():
        first = net[0](images).double()  # what the first norm sees
    expected_mean = first.mean(dim=(0, 2, 3))
    expected_var = first.var(dim=(0, 2, 3), unbiased=False)  # across images too, not within each
    assert torch.allclose(stats["1"]["mean"].double(), expected_mean, atol=1e-6)
    assert torch.allclose(stats["1"]["var"].double(), expected_var, atol=1e-6)
    within = first.var(dim=(2, 3), unbiased=False).mean(0)
    assert (stats["1"]["var"].double() > within + 1e-4).any()  # the images' means differ
    with gathering(net) as empty, pytest.raises(RuntimeError, match="no statistics"):
        empty.result()


def test_fixed_statistics_colour_a_window_as_the_whole_image_does() -> None:
    net, images = _pixelwise_net(), _images()
    whole = images[:1]
    window = whole[..., 2:8, 3:9]
    with torch.no_grad():
        own = net(window)
        assert not torch.allclose(own, net(whole)[..., 2:8, 3:9], atol=1e-3)  # window stats: a seam
        keys = set(net.state_dict())
        with gathering(net) as gatherer:
            net(images)
        fix_norm_stats(net, gatherer.result())
        assert torch.allclose(net(window), net(whole)[..., 2:8, 3:9], atol=1e-6)
    assert set(net.state_dict()) == keys  # the weights stay the weights; stats travel separately
    stats = fixed_norm_stats(net)
    assert stats is not None and torch.equal(stats["1"]["mean"], net[1].running_mean)


def test_fixed_statistics_normalise_with_the_given_mean_and_variance() -> None:
    net = nn.Sequential(nn.InstanceNorm2d(2)).eval()
    stats = {"0": {"mean": torch.tensor([1.0, -2.0]), "var": torch.tensor([4.0, 0.25])}}
    fix_norm_stats(net, stats)
    x = torch.randn(3, 2, 5, 5)
    expected = (x - stats["0"]["mean"].view(1, 2, 1, 1)) / (stats["0"]["var"].view(1, 2, 1, 1) + 1e-5).sqrt()
    assert torch.allclose(net(x), expected, atol=1e-5)
    with gathering(net) as gatherer:  # gathering again sees each input normalised by its own statistics
        net(x)
    assert net[0].track_running_stats and torch.allclose(net(x), expected, atol=1e-5)
    assert gatherer.images == 3


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: s.pop("4"), "without statistics"),
    (lambda s: s.update({"9": s["1"]}), "unknown"),
    (lambda s: s["1"].update({"mean": torch.zeros(5)}), "shape"),
    (lambda s: s["1"].update({"var": -torch.ones(4)}), "negative"),
    (lambda s: s["4"].update({"mean": torch.full((3,), float("nan"))}), "not finite"),
])
def test_statistics_that_do_not_fit_are_refused(change, problem: str) -> None:  # type: ignore[no-untyped-def]
    net = _pixelwise_net()
    with gathering(net) as gatherer, torch.no_grad():
        net(_images())
    stats = gatherer.result()
    assert check_norm_stats(net, stats) == ""
    change(stats)
    assert problem in check_norm_stats(net, stats)
    with pytest.raises(ValueError, match=problem):
        fix_norm_stats(net, stats)


def _model_file(tmp_path: Path) -> Path:
    from models.registry import get_model_class

    cls = get_model_class("pix2pix")
    opts = cls.Options.model_validate({"netG": "unet_128", "ngf": 4, "ndf": 4, "norm": "instance"})
    model = cls(opts, torch.device("cpu"))
    path = tmp_path / "model.pt"
    save_model_file(path, {"ablation": "t", "model": "pix2pix", "options": opts.model_dump(mode="json"),
                           "identity_hash": "x", "step": 1, "dataset": {},
                           "nets": {k: n.state_dict() for k, n in model.nets.items()}})
    return path


def test_a_model_file_carries_its_statistics_into_the_loaded_model(tmp_path: Path) -> None:
    path = _model_file(tmp_path)
    model = load_model(path)
    assert fixed_norm_stats(model.nets["G"]) is None  # none in the file: each window's own
    gray = torch.rand(2, 1, 128, 128)
    with gathering(model.nets["G"]) as gatherer, torch.no_grad():
        model.colourise(gray)
    contents = read_model_file(path)
    contents["norm_stats"] = {"G": gatherer.result()}
    save_model_file(path, contents)
    loaded = load_model(path)
    assert fixed_norm_stats(loaded.nets["G"]) is not None
    assert torch.equal(loaded.nets["G"].state_dict()[next(iter(contents["nets"]["G"]))],
                       next(iter(contents["nets"]["G"].values())))
    contents["norm_stats"]["G"].popitem()
    save_model_file(path, contents)
    with pytest.raises(CheckpointError, match="norm statistics of network 'G' do not fit") as err:
        load_model(path)
    assert "\n" not in str(err.value)
    contents["norm_stats"] = {"D9": {}}
    save_model_file(path, contents)
    with pytest.raises(CheckpointError, match="networks the model does not have"):
        load_model(path)


def test_spread_picks_evenly_from_first_to_last() -> None:
    from models.networks.norm_stats import gray_batches, spread

    assert spread(3, 5).tolist() == [0, 1, 2]
    assert spread(10, 4).tolist() == [0, 3, 6, 9]
    gray = np.arange(10, dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    batches = list(gray_batches(gray, 4, 3))
    assert [b.shape for b in batches] == [(3, 1, 2, 2), (1, 1, 2, 2)]
    assert torch.cat(batches)[:, 0, 0, 0].mul(255).round().tolist() == [0, 3, 6, 9]


def _pix2pix(norm: str) -> object:
    from models.registry import get_model_class

    cls = get_model_class("pix2pix")
    torch.manual_seed(0)
    model = cls(cls.Options.model_validate({"netG": "unet_128", "ngf": 4, "ndf": 4, "norm": norm}),
                torch.device("cpu"))
    model.eval()
    return model


def test_a_model_fits_its_norms_to_an_area_and_refits_from_scratch() -> None:
    from models.networks.norm_stats import gray_batches

    model = _pix2pix("instance")
    g = torch.Generator().manual_seed(3)
    area_a = (torch.rand(4, 128, 128, generator=g) * 120).to(torch.uint8).numpy()
    area_b = (torch.rand(4, 128, 128, generator=g) * 255).to(torch.uint8).numpy()
    probe = torch.from_numpy(area_a[:1]).unsqueeze(1).float() / 255
    with torch.no_grad():
        own = model.colourise(probe)
        assert model.fit_norm_stats(gray_batches(area_a, 4, 2)) > 0
        on_a = model.colourise(probe)
        model.fit_norm_stats(gray_batches(area_b, 4, 2))
        assert not torch.allclose(model.colourise(probe), on_a, atol=1e-4)  # B's statistics now
        model.fit_norm_stats(gray_batches(area_a, 4, 2))  # gathered afresh, not from B's
        assert torch.allclose(model.colourise(probe), on_a, atol=1e-5)
    assert not torch.allclose(own, on_a, atol=1e-4)
    batch_normed = _pix2pix("batch")
    assert batch_normed.fit_norm_stats(gray_batches(area_a, 4, 2)) == 0


def test_gathering_statistics_leaves_the_model_as_it_was() -> None:
    from models.networks.norm_stats import fixed_norm_stats, gray_batches

    model = _pix2pix("instance")
    net = model.nets[model.colourising_net]
    g = torch.Generator().manual_seed(5)
    area = (torch.rand(4, 128, 128, generator=g) * 200).to(torch.uint8).numpy()
    probe = torch.from_numpy(area[:1]).unsqueeze(1).float() / 255
    with torch.no_grad():
        before = model.colourise(probe)
        stats = model.gather_norm_stats(gray_batches(area, 4, 2))
        assert stats is not None and fixed_norm_stats(net) is None  # still each window's own
        assert torch.equal(model.colourise(probe), before)
        model.fit_norm_stats(gray_batches(area, 4, 2))
        fixed = fixed_norm_stats(net)
    assert fixed is not None and fixed.keys() == stats.keys()
    assert all(torch.equal(fixed[k]["var"], stats[k]["var"]) for k in stats)
    assert _pix2pix("batch").gather_norm_stats(gray_batches(area, 4, 2)) is None
