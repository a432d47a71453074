"""Loss functions, pure and distribution-aware.

Each loss takes this process's tensors. Where a loss looks across the batch it says so, and it
gathers with :func:`freelabel.dist.gather`, whose backward all-reduces, so that N processes each holding a slice
of the batch get the same loss (averaged over processes) and the same gradients (after DDP's
gradient averaging) as one process holding the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .dist import gather, ring_pass, world


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy (NT-Xent) over two views.

    Every one of the 2N embeddings (N = global batch) is an anchor whose positive is the other view
    of its image and whose negatives are the other 2N - 2 embeddings. Gathers across processes;
    returns the mean over this process's 2B anchors.
    """
    rank = world()[0]
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    candidates = torch.cat([gather(z1), gather(z2)])  # [2N, D]: all first views, then all second views
    anchors = torch.cat([z1, z2])  # [2B, D]
    logits = anchors @ candidates.T / temperature
    b, n = z1.shape[0], candidates.shape[0] // 2
    own = rank * b + torch.arange(b, device=z1.device)
    self_index = torch.cat([own, own + n])  # where each anchor sits among the candidates
    positive = torch.cat([own + n, own])
    logits[torch.arange(2 * b, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, queue: torch.Tensor | None = None
) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is the key of the same image.

    With a ``queue`` [K, D] of past keys (MoCo v2) the negatives are the queue and nothing is
    gathered. Without one (MoCo v3) the negatives are the keys of every other image in the global
    batch: keys are gathered across processes. Returns the mean over this process's queries.
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    if queue is not None:
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ F.normalize(queue.float(), dim=1).T], 1)
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    else:
        logits = q @ gather(k).T
        target = world()[0] * len(q) + torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits / temperature, target)


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)``, averaged over this process's rows (no gather)."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=1).mean()


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher distribution of each global view
    and the student distribution of every other view. ``student`` holds logits of all views (the
    global ones first, in the teacher's order), ``teacher`` those of the global views. No gather:
    the mean over this process's images (the centre is all-reduced by :func:`update_center`)."""
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1) for t in teacher]
    return cross_view_entropy(student, targets, student_temp)


def cross_view_entropy(
    student: list[torch.Tensor], targets: list[torch.Tensor], student_temp: float = 0.1
) -> torch.Tensor:
    """The mean over pairs of views ``i != j`` of ``H(targets[i], softmax(student[j] / student_temp))``:
    :func:`dino_loss` once the teacher's distributions are made (by centring or Sinkhorn-Knopp). No
    gather: the mean over this process's images."""
    targets = [t.float().detach() for t in targets]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(t * lp).sum(-1).mean() for i, t in enumerate(targets) for j, lp in enumerate(log_probs) if i != j]
    return sum(terms) / len(terms)


@torch.no_grad()
def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """The mean entropy of the rows of ``probs`` over its largest value, log K: 1 for uniform rows, 0 for
    one-hot ones (a DINO teacher collapsing to uniform outputs nears 1; to one prototype, 0)."""
    p = probs.float().clamp(min=1e-12)
    return -(p * p.log()).sum(-1).mean() / math.log(p.shape[-1])


@torch.no_grad()
def distillation_signs(loss: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """A self-distillation run's signs (DINO, Fig. 7), from its cross-entropy ``loss`` against the teacher's
    distributions ``targets [N, K]``, each normalised by log K: the teacher's entropy (high early in a run,
    and in a collapse to uniform outputs), the student's KL divergence from it (``loss`` less that entropy;
    0 when the student predicts its teacher exactly), and the entropy of the batch's mean distribution,
    ``prototype_spread`` (0 when every image goes to one prototype: that collapse)."""
    entropy = normalised_entropy(targets)
    return {
        "teacher_entropy": entropy,
        "student_kl": loss.detach().float() / math.log(targets.shape[-1]) - entropy,
        "prototype_spread": normalised_entropy(targets.float().mean(0, keepdim=True)),
    }


def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre: an EMA of the mean teacher logits over the global batch (all-reduced)."""
    total = teacher.float().sum(0)
    count = torch.tensor(float(len(teacher)), device=teacher.device)
    if world()[1] > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return center * momentum + (total / count) * (1 - momentum)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins: the cross-correlation of the two views' batch-standardised embeddings should be
    the identity. Statistics over the global batch (gathered); every process gets the whole loss."""
    z1, z2 = gather(z1.float()), gather(z2.float())
    n = len(z1)
    z1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False).clamp(min=1e-6)
    z2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False).clamp(min=1e-6)
    c = z1.T @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg: invariance (MSE between views) + variance (hinge on each dimension's std, target 1) +
    covariance (off-diagonal covariances squared, over the dimension). Statistics over the global
    batch (gathered); every process gets the whole loss."""
    z1, z2 = gather(z1.float()), gather(z2.float())
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance, covariance = 0.0, 0.0
    for z in (z1, z2):
        z = z - z.mean(0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(0) + eps)).mean() / 2
        cov = z.T @ z / (n - 1)
        covariance = covariance + (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def rebalancing_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Colorization's class rebalancing (Zhang et al. 2016): ``w ∝ ((1 - lam) p + lam / Q)^-1`` for a
    prior ``p`` over Q bins (counts, normalised here), scaled so that ``E_p[w] = sum_q p_q w_q = 1``.
    ``lam = 1`` gives no rebalancing; ``lam = 0`` makes every bin count equally."""
    p = prior.double() / prior.double().sum().clamp(min=1e-12)
    w = 1 / ((1 - lam) * p + lam / len(p))
    return (w / (p * w).sum()).to(prior.dtype)


def rebalanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Colorization's multinomial cross-entropy: scores ``[B, Q, H, W]`` against soft targets of the
    same shape, each place weighted by ``weights [Q]`` of its target's most likely bin. The mean over
    this process's places (no gather)."""
    ce = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
    return (weights[target.argmax(1)] * ce).mean()


@torch.no_grad()
def update_histogram(counts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``counts [Q]`` plus the soft targets ``[B, Q, H, W]`` of the global batch summed per bin
    (all-reduced), so that every process rebalances with the same prior."""
    batch = target.float().sum((0, 2, 3))
    if world()[1] > 1:
        dist.all_reduce(batch)
    return counts + batch


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021) over B image-caption pairs per process.

    ``image``, ``text``: ``[B, D]`` embeddings (normalised here); ``logit_scale``: the learnable log
    inverse temperature, used as it is (the method keeps the parameter at most ln 100 after each step,
    so that its gradient never vanishes at the cap). Each image's positive is its caption among the N
    captions of the global batch and each caption's its image: both sides are gathered. Returns the mean
    of the two directions over this process's pairs.
    """
    image, text = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    scale = logit_scale.float().exp()
    target = world()[0] * len(image) + torch.arange(len(image), device=image.device)
    return (
        F.cross_entropy(scale * image @ gather(text).T, target)
        + F.cross_entropy(scale * text @ gather(image).T, target)
    ) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every image-caption pair (i, j) of the global
    batch of N is its own binary problem, positive where i == j,

        loss = -1/N sum_ij log sigmoid(z_ij (exp(logit_scale) <x_i, y_j> + logit_bias)),  z_ij = +-1.

    ``image``, ``text``: ``[B, D]`` (normalised here). Nothing is gathered: the captions' embeddings
    travel round the ring of processes, one process's chunk at a time (with their gradients coming
    back the same way), so a process only ever holds a B x B block of the N x N similarities.
    Returns this process's part, the sum over its B images divided by B; the mean over processes
    is the loss above.
    """
    image, text = F.normalize(image.float(), dim=1), F.normalize(text.float(), dim=1)
    scale, bias = logit_scale.float().exp(), logit_bias.float()
    signs = 2 * torch.eye(len(image), device=image.device) - 1  # the chunk of this process's own captions
    total = -F.logsigmoid(signs * (scale * image @ text.T + bias)).sum()
    for _ in range(world()[1] - 1):  # then every other process's captions, all negatives
        text = ring_pass(text)
        total = total - F.logsigmoid(-(scale * image @ text.T + bias)).sum()
    return total / len(image)


def ibot_patch_loss(
    student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, student_temp: float = 0.1
) -> torch.Tensor:
    """iBOT's masked-token loss: ``student [M, K]`` logits and ``teacher [M, K]`` target distributions
    of the ``M`` hidden patches of ``masks [B, N]`` (in ``masks.nonzero()`` order). Each image's
    cross-entropies are averaged over its hidden patches; the loss is the mean over the B images,
    those without hidden patches counting 0 (as DINOv2). No gather: the mean over this process's images."""
    ce = -(teacher.float().detach() * F.log_softmax(student.float() / student_temp, dim=-1)).sum(-1)
    per_image = masks.sum(1, keepdim=True).clamp(min=1).expand_as(masks)[masks]
    return (ce / per_image).sum() / len(masks)


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019), DINOv2's spreading regulariser: ``-mean_i log d(x_i, NN(x_i))``
    of the L2-normalised rows, ``NN`` the nearest other row. The neighbours are sought in the global
    batch (rows gathered, with gradients); the mean is over this process's rows."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    others = gather(x)
    sims = x @ others.T
    own = world()[0] * len(x) + torch.arange(len(x), device=x.device)
    sims[torch.arange(len(x), device=x.device), own] = -2.0  # not one's own neighbour
    nearest = others[sims.argmax(1)]
    return -torch.log((x - nearest).norm(dim=-1) + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """SwAV's and DINOv2's Sinkhorn-Knopp centring: target distributions ``[B, K]`` for the teacher's
    ``logits [B, K]`` (rows sum to 1) whose prototypes are used equally over the global batch (each
    column sums to about ``N / K``, N rows in all processes; exactly in the limit of iterations).
    Distributed as DINOv2: the total, the per-prototype sums and the row count are all-reduced."""
    distributed = world()[1] > 1
    q = logits.float() / temp
    top = q.max()
    if distributed:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(q - top)  # the shift cancels in the normalisations; it only keeps exp finite
    total, rows = q.sum(), torch.tensor(float(len(q)), device=q.device)
    if distributed:
        dist.all_reduce(total)
        dist.all_reduce(rows)
    q /= total
    for _ in range(iterations):
        per_prototype = q.sum(0, keepdim=True)
        if distributed:
            dist.all_reduce(per_prototype)
        q /= per_prototype * q.shape[1]  # every prototype holds 1/K of the mass
        q /= q.sum(1, keepdim=True) * rows  # every row holds 1/N
    return q * rows


def gram_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DINOv3's Gram anchoring: the mean squared difference between the Gram matrices (patch-to-patch
    cosine similarities) of ``student [B, N, D]`` and a frozen Gram teacher's ``teacher [B, N, D]``
    patch features, image by image; no gradient reaches the teacher. No gather: the mean over this
    process's images and patch pairs."""
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float().detach(), dim=-1)
    return (s @ s.transpose(1, 2) - t @ t.transpose(1, 2)).pow(2).mean()


def masked_patch_loss(
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """MAE's loss: mean squared error of predicted pixels ``pred [B, N, P]`` against ``patches [B, N, P]``,
    averaged over the hidden patches only (``mask [B, N]``, True = hidden). With ``norm_pix`` each target
    patch is normalised by its own mean and (unbiased) variance first. Local: every process hides as many
    patches, so the mean of the processes' losses is the loss of the whole batch."""
    if norm_pix:
        patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + eps).sqrt()
    per_patch = (pred - patches).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def latent_prediction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """I-JEPA's loss: predicted tokens against the target encoder's, each target token layer-normed (no affine);
    ``smooth_l1`` as the released code, or ``l2`` (mean squared error) as the paper writes it. Local."""
    target = F.layer_norm(target.float(), target.shape[-1:])
    if kind == "l2":
        return F.mse_loss(pred.float(), target)
    return F.smooth_l1_loss(pred.float(), target)
