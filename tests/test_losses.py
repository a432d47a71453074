import math

import pytest
import torch
import torch.distributed as dist
from two_processes import in_two_processes, randn

from freelabel import losses
from freelabel.memory import Queue


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True)


def nt_xent_by_hand(z1, z2, t):
    """The SimCLR paper's l(i, j), averaged over all 2N anchors, one anchor at a time."""
    z = _unit(torch.cat([z1, z2]))
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / sum(sims))
    return total / (2 * n)


def info_nce_by_hand(q, k, t, queue=None):
    q, k = _unit(q), _unit(k)
    total = 0.0
    for i in range(len(q)):
        negatives = _unit(queue) if queue is not None else torch.cat([k[:i], k[i + 1 :]])
        pos = math.exp(float(q[i] @ k[i]) / t)
        total += -math.log(pos / (pos + sum(math.exp(float(q[i] @ n) / t) for n in negatives)))
    return total / len(q)


def barlow_by_hand(z1, z2, lambd):
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[s, i] * b[s, j]) for s in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def vicreg_by_hand(z1, z2, sim=25.0, var=25.0, cov=1.0, eps=1e-4):
    z1, z2 = z1.double(), z2.double()
    n, d = z1.shape
    inv = float(((z1 - z2) ** 2).sum()) / (n * d)
    v = c = 0.0
    for z in (z1, z2):
        zc = z - z.mean(0)
        for j in range(d):
            std = math.sqrt(float((zc[:, j] ** 2).sum()) / (n - 1) + eps)
            v += max(0.0, 1 - std) / d / 2
            for k in range(d):
                if j != k:
                    c += (float((zc[:, j] * zc[:, k]).sum()) / (n - 1)) ** 2 / d
    return sim * inv + var * v + cov * c


def dino_by_hand(student, teacher, center, ts, tt):
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        p = torch.softmax((t.double() - center.double()) / tt, -1)
        for j, s in enumerate(student):
            if i == j:
                continue
            log_q = torch.log_softmax(s.double() / ts, -1)
            total += float(-(p * log_q).sum(-1).mean())
            terms += 1
    return total / terms


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_paper_formula(t):
    z1, z2 = randn(6, 5), randn(6, 5, seed=1)
    assert losses.nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_by_hand(z1, z2, t), rel=1e-5)


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    z = torch.eye(8)
    assert losses.nt_xent(z, z, 0.1) < 0.01
    assert losses.nt_xent(z, torch.roll(z, 1, 0), 0.1) > 5


def test_info_nce_with_and_without_a_queue():
    q, k, queue = randn(5, 4), randn(5, 4, seed=1), randn(7, 4, seed=2)
    assert losses.info_nce(q, k, 0.2, queue).item() == pytest.approx(info_nce_by_hand(q, k, 0.2, queue), rel=1e-5)
    assert losses.info_nce(q, k, 0.2).item() == pytest.approx(info_nce_by_hand(q, k, 0.2), rel=1e-5)


def test_normalized_mse():
    p, z = randn(6, 3), randn(6, 3, seed=1)
    expected = sum(2 - 2 * float(_unit(p[i]) @ _unit(z[i])) for i in range(6)) / 6
    assert losses.normalized_mse(p, z).item() == pytest.approx(expected, rel=1e-5)
    assert losses.normalized_mse(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_and_vicreg_match_their_papers():
    z1, z2 = randn(8, 4), randn(8, 4, seed=1)
    assert losses.barlow_twins_loss(z1, z2, 0.05).item() == pytest.approx(barlow_by_hand(z1, z2, 0.05), rel=1e-4)
    assert losses.vicreg_loss(z1, z2).item() == pytest.approx(vicreg_by_hand(z1, z2), rel=1e-4)


def test_dino_loss_skips_same_view_pairs_and_centres_the_teacher():
    student = [randn(4, 6, seed=s) for s in range(4)]  # 2 global + 2 local views
    teacher = [randn(4, 6, seed=10 + s) for s in range(2)]
    center = randn(6, seed=20)
    got = losses.dino_loss(student, teacher, center, 0.1, 0.04).item()
    assert got == pytest.approx(dino_by_hand(student, teacher, center, 0.1, 0.04), rel=1e-5)
    new = losses.update_center(torch.zeros(6), teacher[0], momentum=0.9)
    torch.testing.assert_close(new, 0.1 * teacher[0].mean(0))


def test_queue_wraps_around_oldest_first():
    q = Queue(size=5, dim=2)
    for start in (0, 3, 6):  # 9 keys into 5 slots: slots hold keys 5..8 and 4
        q.enqueue(torch.arange(start, start + 3).float().unsqueeze(1).repeat(1, 2))
    assert sorted(q.keys[:, 0].tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert q.ptr.item() == 9 % 5
    assert q.keys[3, 0].item() == 8.0 and q.keys[4, 0].item() == 4.0


# ------------------------------------------------------------------------ 2 processes == 1 process
GLOBAL_LOSSES = {
    "nt_xent": lambda a, b: losses.nt_xent(a, b, 0.2),
    "info_nce": lambda a, b: losses.info_nce(a, b, 0.2),
    "normalized_mse": losses.normalized_mse,
    "barlow_twins": lambda a, b: losses.barlow_twins_loss(a, b, 5e-3),
    "vicreg": losses.vicreg_loss,
}


def _worker(rank: int, world: int, z1: torch.Tensor, z2: torch.Tensor) -> dict:
    b = len(z1) // world
    results = {}
    for name, fn in GLOBAL_LOSSES.items():
        a1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_()
        a2 = z2[rank * b : (rank + 1) * b].clone().requires_grad_()
        loss = fn(a1, a2)
        (loss / world).backward()  # DDP averages gradients over processes: do the same here
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        results[name] = ((mean / world).item(), a1.grad, a2.grad)
    results["center"] = losses.update_center(torch.zeros(z1.shape[1]), z1[rank * b : (rank + 1) * b], 0.5)
    queue = Queue(size=12, dim=z1.shape[1])
    queue.enqueue(z1[rank * b : (rank + 1) * b])
    results["queue"] = queue.keys[: len(z1)].clone()
    return results


@pytest.fixture(scope="module")
def two_process_results():
    z1, z2 = randn(8, 16, seed=1), randn(8, 16, seed=2)
    return z1, z2, in_two_processes(_worker, z1, z2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GLOBAL_LOSSES))
def test_two_processes_give_the_loss_and_gradients_of_one(name, two_process_results):
    z1, z2, out = two_process_results
    w1, w2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = GLOBAL_LOSSES[name](w1, w2)
    loss.backward()
    assert out[0][name][0] == pytest.approx(loss.item(), abs=1e-5)
    torch.testing.assert_close(torch.cat([out[0][name][1], out[1][name][1]]), w1.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([out[0][name][2], out[1][name][2]]), w2.grad, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_processes_share_the_dino_centre_and_the_queue(two_process_results):
    z1, _, out = two_process_results
    torch.testing.assert_close(out[0]["center"], 0.5 * z1.mean(0))
    torch.testing.assert_close(out[1]["center"], out[0]["center"])
    torch.testing.assert_close(out[0]["queue"], z1)  # rank 0's keys first, then rank 1's
    torch.testing.assert_close(out[1]["queue"], z1)
