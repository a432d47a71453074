import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from two_processes import in_two_processes, randn

from freelabel import losses
from freelabel.data.loader import Batch
from freelabel.data.views import ViewConfig
from freelabel.encoder import Encoder
from freelabel.evaluate.retrieval import clip_score, recall_at_k
from freelabel.evaluate.zeroshot import class_embeddings, zeroshot_logits


def _unit(x):
    return x.double() / x.double().norm(dim=-1, keepdim=True)


def clip_by_hand(img, txt, t):
    """CLIP's pseudo-code: cross-entropy over rows (image -> texts) and columns (text -> images), averaged."""
    x, y, n = _unit(img), _unit(txt), len(img)
    s = math.exp(min(t, math.log(100)))
    total = 0.0
    for i in range(n):
        total -= math.log(math.exp(s * float(x[i] @ y[i])) / sum(math.exp(s * float(x[i] @ y[j])) for j in range(n)))
        total -= math.log(math.exp(s * float(y[i] @ x[i])) / sum(math.exp(s * float(y[i] @ x[j])) for j in range(n)))
    return total / (2 * n)


def siglip_by_hand(img, txt, t, b):
    """SigLIP's pseudo-code: -1/N sum_ij log sigmoid(z_ij (exp(t) x_i.y_j + b))."""
    x, y, n = _unit(img), _unit(txt), len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total -= math.log(1 / (1 + math.exp(-z * (math.exp(t) * float(x[i] @ y[j]) + b))))
    return total / n


@pytest.mark.parametrize("t", [math.log(1 / 0.07), 1.0])
def test_clip_loss_matches_the_paper(t):
    img, txt = randn(6, 5), randn(6, 5, seed=1)
    got = losses.clip_loss(img, txt, torch.tensor(t)).item()
    assert got == pytest.approx(clip_by_hand(img, txt, t), rel=1e-5)


def test_clip_temperature_is_capped_after_each_step_and_can_come_back_down():
    """open_clip's way: the loss uses the scale as it is and the method clamps the parameter after the step,
    so at the cap (ln 100) the gradient is not zero and a loss that wants a higher temperature gets it."""
    from types import SimpleNamespace

    from freelabel.methods.clip import CLIP

    img = randn(6, 5)
    txt = -img  # every caption as far from its image as it can be: a lower scale (higher temperature) helps
    method = SimpleNamespace(
        logit_scale=torch.nn.Parameter(torch.tensor(math.log(500.0))), max_logit_scale=math.log(100)
    )
    CLIP.after_step(method, 0.0)
    assert method.logit_scale.item() == pytest.approx(math.log(100))
    optimizer = torch.optim.SGD([method.logit_scale], lr=0.1)
    loss = losses.clip_loss(img, txt, method.logit_scale)
    assert loss.item() == pytest.approx(clip_by_hand(img, txt, math.log(100)), rel=1e-5)
    loss.backward()
    assert method.logit_scale.grad.item() > 0  # not zero at the cap
    optimizer.step()
    CLIP.after_step(method, 0.0)
    assert method.logit_scale.item() < math.log(100) - 1e-3  # it came back down


@pytest.mark.parametrize("t, b", [(math.log(10), -10.0), (0.5, 1.0)])
def test_siglip_loss_matches_the_paper(t, b):
    img, txt = randn(5, 4), randn(5, 4, seed=1)
    got = losses.siglip_loss(img, txt, torch.tensor(t), torch.tensor(b)).item()
    assert got == pytest.approx(siglip_by_hand(img, txt, t, b), rel=1e-5)


class BagOfWords:
    """An image-text model that is easy to compute by hand: a text is the sum of fixed random word
    vectors; an image [B, D, 1, 1] is its own embedding."""

    def __init__(self, dim=8):
        self.dim = dim

    def word(self, w):
        return randn(self.dim, seed=sum(map(ord, w)) * 31 + len(w)).float()

    def encode_text(self, texts):
        return F.normalize(torch.stack([sum(self.word(w) for w in t.split()) for t in texts]), dim=-1)

    def encode_image(self, images):
        return F.normalize(images.float().flatten(1), dim=-1)


def test_prompt_ensembles_are_averaged_in_embedding_space():
    model = BagOfWords()
    templates = ("a {}", "photo of {}", "{} drawn")
    got = class_embeddings(model, ["cat", "red dog"], templates)
    for row, name in zip(got, ["cat", "red dog"]):
        prompts = [F.normalize(model.encode_text([t.format(name)])[0], dim=0) for t in templates]
        expected = F.normalize(torch.stack(prompts).mean(0), dim=0)
        torch.testing.assert_close(row, expected)
    images = got.view(2, -1, 1, 1) * 3  # each class embedding as an image: each is its own class
    assert zeroshot_logits(model, images, got).argmax(1).tolist() == [0, 1]


def test_recall_at_k_both_ways_by_hand():
    images = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]), dim=1)
    texts = F.normalize(torch.tensor([[1.0, 0.05], [1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]), dim=1)
    r = recall_at_k(images, texts, ["a", "b", "c", "d"], ks=(1, 2))
    # image->text nearest: 0->1 (wrong), 1->2 (wrong), 2->0 (wrong), 3->3 (right); within 2: 0 yes, 3 yes
    assert r["image_to_text_r1"] == 25.0 and r["image_to_text_r2"] == 50.0
    assert r["chance_r1"] == 25.0
    same = recall_at_k(images, texts, ["x", "x", "c", "d"], ks=(1,))  # identical captions are all right
    assert same["image_to_text_r1"] == 50.0


def test_clip_score_is_w_times_positive_cosine():
    model = BagOfWords(dim=4)
    captions = ["cat", "dog"]
    t = model.encode_text(captions)
    images = torch.stack([t[0] + 0.5 * t[1], -t[1]]).view(2, 4, 1, 1)
    expected = 2.5 * F.cosine_similarity(images.flatten(1), t, dim=1).clamp(min=0)
    score = clip_score(model.encode_image(images), model.encode_text(captions))
    torch.testing.assert_close(score, expected)
    assert score[1].item() == 0.0  # negative cosine counts as 0


@pytest.mark.slow  # builds three text towers through transformers
def test_clip_method_trains_with_captions_and_a_locked_text_tower_stays_put():
    from freelabel.backbones import build_backbone
    from freelabel.methods import METHODS

    view = ViewConfig(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    texts = ["an emoji of a cat", "an emoji of a dog", "an emoji of a red heart", "an emoji of a cat"]
    x = randn(4, 3, 16, 16)
    batch = Batch(images=x, views=[x], texts=texts)
    tiny = {"width": 32, "layers": 1, "heads": 2}
    for name, extra in (("clip", {}), ("siglip", {"bias": -10.0}), ("clip", {"lock_text": True})):
        torch.manual_seed(0)
        method = METHODS[name](
            build_backbone("convnet", 3, 16, widths=(8, 16)), view, embed_dim=16, text_args=tiny, **extra
        )
        out = method(batch)
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and method.backbone.features[0][0].weight.grad is not None
        locked = extra.get("lock_text", False)
        assert all((p.grad is None) == locked for p in method.text.parameters())
        assert len(method.cache) == (3 if locked else 0)  # each distinct caption encoded once
        assert not method.text.training if locked else method.text.training
    encoder = Encoder.of_image_text(method.eval(), view, 3)
    assert encoder.encode_image(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 16)  # grey in, colour model


# ------------------------------------------------------------------------ 2 processes == 1 process


def _run(name, img, txt, t, b):
    return losses.clip_loss(img, txt, t) if name == "clip" else losses.siglip_loss(img, txt, t, b)


def _worker(rank, world, img, txt):
    n = len(img) // world
    results = {}
    for name in ("clip", "siglip"):
        x = img[rank * n : (rank + 1) * n].clone().requires_grad_()
        y = txt[rank * n : (rank + 1) * n].clone().requires_grad_()
        t, b = torch.tensor(2.0, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
        loss = _run(name, x, y, t, b)
        (loss / world).backward()  # DDP averages gradients over processes: do the same here
        mean, tb = (
            loss.detach().clone() / world,
            torch.stack([t.grad, b.grad if b.grad is not None else torch.zeros(())]),
        )
        dist.all_reduce(mean)
        dist.all_reduce(tb)  # the scalars' gradients as DDP would average them
        results[name] = (mean.item(), x.grad, y.grad, tb)
    return results


@pytest.fixture(scope="module")
def two_processes():
    img, txt = randn(8, 6, seed=1), randn(8, 6, seed=2)
    return img, txt, in_two_processes(_worker, img, txt)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_two_processes_give_the_loss_and_gradients_of_one(name, two_processes):
    img, txt, out = two_processes
    x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
    t, b = torch.tensor(2.0, requires_grad=True), torch.tensor(-3.0, requires_grad=True)
    loss = _run(name, x, y, t, b)
    loss.backward()
    assert out[0][name][0] == pytest.approx(loss.item(), abs=1e-5)
    torch.testing.assert_close(torch.cat([out[0][name][1], out[1][name][1]]), x.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([out[0][name][2], out[1][name][2]]), y.grad, atol=1e-5, rtol=0)
    expected = torch.stack([t.grad, b.grad if b.grad is not None else torch.zeros(())])
    torch.testing.assert_close(out[0][name][3], expected, atol=1e-5, rtol=0)


@pytest.mark.slow  # builds text towers through transformers
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_a_few_steps_on_one_batch_learn_to_match_its_captions(name, fmnist):
    from freelabel.backbones import build_backbone
    from freelabel.methods import METHODS

    classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker"]
    images = torch.stack([fmnist.images[(fmnist.labels == c).nonzero()[0, 0]] for c in range(8)])
    view = ViewConfig(size=28, mean=(0.5,), std=(0.5,))
    torch.manual_seed(0)
    method = METHODS[name](
        build_backbone("convnet", 1, 28, widths=(8, 16)),
        view,
        embed_dim=16,
        text_args={"width": 32, "layers": 1, "heads": 2},
    )
    batch = Batch(images, views=[(images.float() / 255 - 0.5) / 0.5], texts=[f"a photo of a {c}" for c in classes])
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = method(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    method.eval()
    assert loss.item() < 0.5 * first
    encoder = Encoder.of_image_text(method, view, 1)
    logits = zeroshot_logits(encoder, images, class_embeddings(encoder, classes, ("a photo of a {}",)))
    assert (logits.argmax(1) == torch.arange(8)).float().mean() >= 0.75  # it names the images it was taught
