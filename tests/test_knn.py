import pytest
import torch

from freelabel.evaluate.knn import knn_accuracy, knn_predict


def test_weighted_votes_by_hand():
    # Three training points on the unit circle; the test point is nearest to class 0 but the two
    # class-1 points together outweigh it once k=3.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.0]])
    t = 1.0
    w0, w1 = torch.exp(torch.tensor(1.0 / t)), 2 * torch.exp(torch.tensor(0.6 / t))
    assert w1 > w0  # so k=3 must flip the vote
    preds = knn_predict(train, labels, test, ks=(1, 3), temperature=t)
    assert preds[1].item() == 0 and preds[3].item() == 1


def test_clusters_are_classified_perfectly_and_shuffled_labels_at_chance():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=g) * 5
    train_labels = torch.arange(500) % 5
    test_labels = torch.arange(200) % 5
    train = centres[train_labels] + torch.randn(500, 32, generator=g)
    test = centres[test_labels] + torch.randn(200, 32, generator=g)
    assert knn_accuracy(train, train_labels, test, test_labels, ks=(20,))["top1_k20"] == 100.0
    shuffled = train_labels[torch.randperm(500, generator=g)]
    assert knn_accuracy(train, shuffled, test, test_labels, ks=(20,))["top1_k20"] == pytest.approx(20, abs=10)


def test_k_larger_than_the_training_set_is_clipped():
    train, labels = torch.eye(3), torch.tensor([0, 1, 2])
    preds = knn_predict(train, labels, torch.eye(3), ks=(200,))
    assert preds[200].tolist() == [0, 1, 2]
