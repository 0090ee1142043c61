"""The embedded synthetic dataset: deterministic from its seed, and of graded difficulty -- a shallow model
gets easy samples right but not hard ones, and a deeper one does clearly better on the same small budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repro.data import load_dataset
from repro.data.synthetic import CLASS_PAIRS, generate_synthetic


def test_same_seed_same_images_other_seed_other_images():
    a = generate_synthetic(seed=3, num_train=200, num_test=50)
    b = generate_synthetic(seed=3, num_train=200, num_test=50)
    c = generate_synthetic(seed=4, num_train=200, num_test=50)
    assert torch.equal(a["train"].images, b["train"].images) and torch.equal(a["test"].labels, b["test"].labels)
    assert not torch.equal(a["train"].images, c["train"].images)
    assert a["train"].images.dtype == torch.uint8 and tuple(a["train"].images.shape) == (200, 3, 32, 32)
    assert 0.0 <= float(a["train"].difficulty.min()) and float(a["train"].difficulty.max()) <= 1.0


def test_load_dataset_synthetic_defaults():
    dataset = load_dataset("synthetic", seed=0)
    assert dataset.num_classes == len(CLASS_PAIRS) == 10 and dataset.channels == 3 and dataset.image_size == 32
    counts = dataset.counts()
    assert sum(counts["train"]) == 10_000 and sum(counts["test"]) == 2_000
    assert min(counts["train"]) > 850 and max(counts["train"]) < 1150  # uniform labels: 1000 +- 5 sigma
    assert dataset.source == "embedded (seed 0)" and len(dataset.fingerprint) == 16


def _standardise(images, reference):
    x = images.float() / 255
    mean = (reference.float() / 255).mean(dim=(0, 2, 3), keepdim=True)
    std = (reference.float() / 255).std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std


def _fit_and_score(model, x, y, x_test, y_test, epochs=4, batch=100):
    torch.manual_seed(0)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).float()


@pytest.fixture()
def one_thread():
    """Tiny models train faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shallow_model_is_clearly_worse_than_deep_but_above_chance(one_thread):
    data = generate_synthetic(seed=0, num_train=2400, num_test=1200)
    train, test = data["train"], data["test"]
    x, x_test = _standardise(train.images, train.images), _standardise(test.images, train.images)
    # Shallow: a linear probe on raw pixels (what an exit right after the input could at best do linearly).
    shallow = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    # Deep: three 3x3 conv layers (receptive field 15 px, enough to see both motifs of a pair) + max-pool.
    deep = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    shallow_correct = _fit_and_score(shallow, x, train.labels, x_test, test.labels)
    deep_correct = _fit_and_score(deep, x, train.labels, x_test, test.labels)
    easy, hard = test.difficulty < 1 / 3, test.difficulty >= 2 / 3
    shallow_acc, deep_acc = shallow_correct.mean().item(), deep_correct.mean().item()
    # Measured when written (seed 0): shallow 0.49 (easy 0.84, hard 0.11), deep 0.65 (hard 0.25).
    assert 0.30 < shallow_acc < 0.75, shallow_acc  # far above chance (0.10), far from trivially solved
    assert deep_acc > shallow_acc + 0.10, (shallow_acc, deep_acc)
    assert shallow_correct[easy].mean().item() > 0.75  # easy samples: the shallow model gets them
    assert shallow_correct[hard].mean().item() < 0.35  # hard samples: it mostly does not
    assert deep_correct[hard].mean().item() > shallow_correct[hard].mean().item() + 0.07
