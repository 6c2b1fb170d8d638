"""A small BN CNN and the paper's BN MLP learn real Fashion-MNIST in a few hundred steps.
Thresholds: after 300 steps test accuracy above 75% (chance is 10%; both reach ~80%),
and the mean loss of the last 50 steps below 60% of the first 20 steps'."""
import os

import numpy as np
import pytest

import minidl as md
from minidl import nn, optim
from minidl.data import DataLoader, TensorDataset, fashion_mnist
from minidl.models import mlp
from minidl.train import accuracy_and_loss

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                                 reason="apt-get install -y dataset-fashion-mnist")]


@pytest.fixture(scope="module")
def data():
    train, test = fashion_mnist(train=True), fashion_mnist(train=False)
    x, y = test.arrays
    return train, TensorDataset(x[:2000], y[:2000])


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.mark.parametrize("name", ["cnn", "bn_mlp"])
def test_learns_fashion_mnist(name, data):
    train, test = data
    md.manual_seed(0)
    model = small_cnn() if name == "cnn" else mlp(bn=True, init_std=None)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(train, batch_size=64, shuffle=True, seed=0)
    losses = []
    for step, (x, y) in enumerate(loader):
        if step == 300:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    acc, _ = accuracy_and_loss(model, DataLoader(test, batch_size=500))
    assert np.mean(losses[-50:]) < 0.6 * np.mean(losses[:20]), losses[::25]
    assert acc > 0.75, acc
