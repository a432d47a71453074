import torch

from freelabel.data.views import ViewConfig, Views, colour_jitter, gaussian_blur, resized_crop

PLAIN = dict(jitter=0.0, grayscale=0.0, blur=0.0, solarize=0.0, mean=(0.0,), std=(1.0,))


def _images(n=8, c=3, size=32, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_same_seed_same_views_and_other_seed_other_views():
    x, views = _images(), Views(ViewConfig(size=24))
    a = views(x, torch.Generator().manual_seed(5))
    b = views(x, torch.Generator().manual_seed(5))
    c = views(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_randomness_is_per_sample_not_per_batch():
    one = _images(1)
    x = one.repeat(16, 1, 1, 1)  # 16 copies of one image
    out = Views(ViewConfig(size=24))(x, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten()[:50].tolist()) for o in out}
    assert len(distinct) == 16


def test_every_augmentation_varies_per_sample():
    x = _images(1).repeat(32, 1, 1, 1)
    for cfg in [
        dict(PLAIN, scale=(0.2, 0.5)),
        dict(PLAIN, scale=(1, 1), ratio=(1, 1), jitter=1.0),
        dict(PLAIN, scale=(1, 1), ratio=(1, 1), blur=1.0, blur_sigma=(2.0, 40.0)),
    ]:
        out = Views(ViewConfig(size=32, **cfg))(x, torch.Generator().manual_seed(0))
        assert out.std(0).mean() > 1e-3, cfg


def test_full_crop_with_flip_is_an_exact_mirror():
    x = _images(4)
    cfg = ViewConfig(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, **PLAIN)
    out = Views(cfg)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x.float().flip(-1) / 255, atol=1e-5, rtol=0)


def test_no_flip_full_crop_is_identity():
    x = _images(4)
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(4, 1)
    out = resized_crop(x.float(), boxes, torch.zeros(4, dtype=torch.bool), 32)
    torch.testing.assert_close(out, x.float(), atol=1e-3, rtol=0)


def test_crop_of_a_quadrant_shows_that_quadrant():
    x = torch.zeros(1, 1, 32, 32)
    x[..., :16, 16:] = 1.0  # top-right quadrant white
    boxes = torch.tensor([[0.75, 0.25, 0.5, 0.5]])  # centre of the top-right quadrant
    out = resized_crop(x, boxes, torch.zeros(1, dtype=torch.bool), 16)
    assert out.min() > 0.99


def test_identity_jitter_and_zero_blur_leave_images_unchanged():
    x = _images(4).float() / 255
    ones, zeros = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(colour_jitter(x, ones, ones, ones, zeros), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur(x, zeros), x, atol=1e-6, rtol=0)


def test_grey_images_and_output_shape_and_normalisation():
    x = _images(5, c=1, size=28)
    cfg = ViewConfig(size=20, mean=(0.5,), std=(0.25,))
    out = Views(cfg)(x, torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 20, 20) and out.dtype == torch.float32
    assert out.min() >= -2.0 - 1e-5 and out.max() <= 2.0 + 1e-5


def test_views_work_in_place_on_their_own_copy_only():
    x = _images(6).float() / 255
    before = x.clone()
    Views(ViewConfig(size=32, jitter=1.0, grayscale=0.5, blur=1.0, solarize=0.5))(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    crops = _images(6)
    out = Views(ViewConfig(size=32, hflip=1.0, **PLAIN))(crops, torch.Generator().manual_seed(0), cropped=True)
    torch.testing.assert_close(
        out, crops.float().flip(-1) / 255, atol=1e-6, rtol=0
    )  # crops made already: only mirrored


def test_a_batch_split_over_processes_gets_the_views_of_the_whole():
    """Each part, drawn with ``at=(first, total)`` from the step's generator, is that part of the whole batch's
    views, with every augmentation on (so each random draw is checked)."""
    x = _images(8)
    views = Views(ViewConfig(size=24, grayscale=0.5, blur=0.5, solarize=0.5, hue=0.1))
    whole = views(x, torch.Generator().manual_seed(3))
    parts = [views(x[i : i + 4], torch.Generator().manual_seed(3), at=(i, 8)) for i in (0, 4)]
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-6, rtol=0)
    alone = views(x[4:], torch.Generator().manual_seed(3))  # without ``at``: the draws of a batch of 4
    assert not torch.allclose(alone, whole[4:])
