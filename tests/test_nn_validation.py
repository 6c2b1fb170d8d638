"""Layers refuse bad hyperparameters when built, and a failed load_state_dict leaves the
module unchanged (issue 13 item 12)."""
import numpy as np
import pytest

from minidl import nn


@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel_size=0), "kernel_size must be >= 1"),
    (dict(kernel_size=(3, 0)), "kernel_size must be >= 1"),
    (dict(kernel_size=3, stride=0), "stride must be >= 1"),
    (dict(kernel_size=3, padding=-1), "padding must be >= 0"),
    (dict(kernel_size=3, dilation=0), "dilation must be >= 1"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size must be an int or a pair"),
    (dict(kernel_size=2.5), "kernel_size must be an int or a pair"),
    (dict(kernel_size=3, groups=0), "groups must be a positive int"),
])
def test_conv2d_rejects_bad_geometry_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(3, 4, **kwargs)


def test_conv2d_rejects_bad_channel_counts():
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        nn.Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        nn.Conv2d(3, -1, 3)
    nn.Conv2d(3, 4, (1, 3), stride=(1, 2), padding=(0, 1))  # valid ones still work


@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
@pytest.mark.parametrize("kwargs,message", [
    (dict(kernel_size=0), "kernel_size must be >= 1"),
    (dict(kernel_size=2, stride=0), "stride must be >= 1"),
    (dict(kernel_size=2, padding=-1), "padding must be >= 0"),
    (dict(kernel_size=2, padding=2), "at most half the kernel size"),
])
def test_pools_reject_bad_geometry_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError, match=f"{cls.__name__}: .*{message}"):
        cls(**kwargs)
    cls(kernel_size=3, stride=2, padding=1)  # valid


def test_failed_load_state_dict_leaves_the_module_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: np.full_like(v, 7) for k, v in before.items()}
    last = list(state)[-1]   # the last entry does not convert: nothing may be copied
    state[last] = np.array(["x"] * state[last].size).reshape(state[last].shape)
    with pytest.raises(RuntimeError, match=f"{last!r}.*does not convert"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    state[last] = np.full(before[last].shape, 1 + 2j)  # complex into float: refused too
    with pytest.raises(RuntimeError, match="complex128 does not convert"):
        model.load_state_dict(state)
    state[last] = np.full(before[last].shape, 7, dtype=np.int64)  # ints cast fine
    model.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert (v == 7).all(), k
