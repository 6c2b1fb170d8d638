"""minidl.optim: update rules against torch.optim over whole trajectories, parameter
groups, state_dict resume, and the lr schedulers against torch.optim.lr_scheduler."""
import json

import numpy as np
import pytest

import minidl
import minidl.nn as nn
import minidl.optim as optim
from minidl.optim import lr_scheduler

SHAPES = [(4, 3), (3,), (2, 1, 3, 3), (1,)]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grad_of(p: np.ndarray, step: int, i: int) -> np.ndarray:
    """A gradient that depends on the current parameter (a quadratic bowl plus a
    step-dependent push), so errors in the update rule compound along the trajectory."""
    rng = np.random.default_rng(1000 * step + i)
    return (0.7 * p + rng.standard_normal(p.shape)).astype(p.dtype)


def run_minidl(cls, kwargs, init, steps, skip=None):
    params = [nn.Parameter(a.copy()) for a in init]
    opt = cls(params, **kwargs)
    history = []
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if skip == i else minidl.Tensor(grad_of(p.data, t, i))
        opt.step()
        history.append([p.data.copy() for p in params])
    return history, opt, params


def run_torch(torch, cls, kwargs, init, steps, skip=None):
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = cls(params, **kwargs)
    history = []
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if skip == i else torch.from_numpy(grad_of(p.detach().numpy(), t, i))
        opt.step()
        history.append([p.detach().numpy().copy() for p in params])
    return history


def assert_trajectories_match(ours, theirs, dtype):
    tol = 1e-5 if dtype == np.float32 else 1e-10
    for step, (a_step, b_step) in enumerate(zip(ours, theirs)):
        for a, b in zip(a_step, b_step):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1, np.abs(b).max()),
                                       err_msg=f"step {step}")


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.005, centered=True, momentum=0.9)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_trajectory_matches_torch(name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    init = make_params(dtype)
    ours, _, _ = run_minidl(getattr(optim, name), kwargs, init, 20)
    theirs = run_torch(torch, getattr(torch.optim, name), kwargs, init, 20)
    assert_trajectories_match(ours, theirs, dtype)
    # The trajectory really moved (a no-op optimizer would fail above, but be explicit).
    assert not np.allclose(ours[-1][0], init[0])


@pytest.mark.parametrize("name,kwargs", [CASES[1], CASES[6], CASES[11]])
def test_params_without_grad_are_skipped(name, kwargs):
    torch = pytest.importorskip("torch")
    init = make_params(np.float32)
    ours, opt, params = run_minidl(getattr(optim, name), kwargs, init, 5, skip=2)
    theirs = run_torch(torch, getattr(torch.optim, name), kwargs, init, 5, skip=2)
    assert_trajectories_match(ours, theirs, np.float32)
    np.testing.assert_array_equal(params[2].data, init[2])
    assert params[2] not in opt.state  # no state was created for it


def test_param_groups_have_their_own_options():
    torch = pytest.importorskip("torch")
    init = make_params(np.float32)

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:], "lr": 0.01, "momentum": 0.5}]

    ours = [nn.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    opt = optim.SGD(groups(ours), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(groups(theirs), lr=0.1, momentum=0.9)
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9
    for t in range(10):
        for i, (p, tp) in enumerate(zip(ours, theirs)):
            p.grad = minidl.Tensor(grad_of(p.data, t, i))
            tp.grad = torch.from_numpy(grad_of(tp.detach().numpy(), t, i))
        opt.step()
        topt.step()
    assert_trajectories_match([[p.data for p in ours]],
                              [[p.detach().numpy() for p in theirs]], np.float32)


@pytest.mark.parametrize("name,kwargs", [CASES[2], CASES[3], CASES[7], CASES[8], CASES[11]])
def test_state_dict_round_trip_resumes_identically(name, kwargs):
    cls = getattr(optim, name)
    init = make_params(np.float32)
    params = [nn.Parameter(a.copy()) for a in init]
    opt = cls(params, **kwargs)

    def run(opt, params, steps, start):
        for t in range(start, start + steps):
            for i, p in enumerate(params):
                p.grad = minidl.Tensor(grad_of(p.data, t, i))
            opt.step()
        return [p.data.copy() for p in params]

    run(opt, params, 7, 0)
    saved_params = [p.data.copy() for p in params]
    saved = opt.state_dict()
    frozen = json.dumps(saved, default=lambda a: a.tolist())
    expected = run(opt, params, 6, 7)
    # The saved state holds copies: the steps after saving did not change it.
    assert json.dumps(saved, default=lambda a: a.tolist()) == frozen
    assert all(isinstance(v, (np.ndarray, int, float)) for s in saved["state"].values()
               for v in s.values())
    assert saved["param_groups"][0]["params"] == [0, 1, 2, 3]

    fresh = [nn.Parameter(a.copy()) for a in saved_params]
    opt2 = cls(fresh, lr=123.0)  # options come back from the state dict
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    resumed = run(opt2, fresh, 6, 7)
    for a, b in zip(resumed, expected):
        np.testing.assert_array_equal(a, b)


def test_state_dict_survives_a_string_keyed_format():
    """A file format that stores dict keys as strings and tuples as lists (JSON, npz
    metadata) must still load."""
    init = make_params(np.float64)
    _, opt, params = run_minidl(optim.Adam, dict(lr=0.01, betas=(0.8, 0.9)), init, 3)
    saved = opt.state_dict()
    as_json = json.loads(json.dumps(saved, default=lambda a: a.tolist()))
    for s in as_json["state"].values():
        for k, v in s.items():
            if isinstance(v, list):
                s[k] = np.asarray(v)
    opt2 = optim.Adam(params)
    opt2.load_state_dict(as_json)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert opt2.state[params[0]]["step"] == 3
    np.testing.assert_array_equal(opt2.state[params[1]]["exp_avg"],
                                  opt.state[params[1]]["exp_avg"])


def test_state_dict_layout_matches_torch():
    torch = pytest.importorskip("torch")
    for name, kwargs in [CASES[1], CASES[5], CASES[11]]:
        init = make_params(np.float32)
        _, opt, _ = run_minidl(getattr(optim, name), kwargs, init, 2)
        tparams = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
        topt = getattr(torch.optim, name)(tparams, **kwargs)
        for p in tparams:
            p.grad = torch.ones_like(p)
        topt.step()
        ours, theirs = opt.state_dict(), topt.state_dict()
        assert list(ours["state"]) == list(theirs["state"])
        assert set(ours["state"][0]) == set(theirs["state"][0])
        assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]
        for k, v in ours["param_groups"][0].items():
            assert theirs["param_groups"][0][k] == v


def test_load_state_dict_rejects_a_different_model():
    _, opt, _ = run_minidl(optim.SGD, dict(lr=0.1, momentum=0.9), make_params(np.float32), 2)
    saved = opt.state_dict()
    fewer = optim.SGD([nn.Parameter(np.zeros((4, 3), np.float32))], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has 4 parameters in the state, 1 here"):
        fewer.load_state_dict(saved)
    other = optim.SGD([nn.Parameter(np.zeros(s[::-1], np.float32)) for s in SHAPES], lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(saved)


def test_zero_grad_and_argument_checks():
    p = nn.Parameter(np.ones(3, np.float32))
    p.grad = minidl.ones(3)
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and not p.grad.data.any()
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)


def test_step_records_nothing_and_keeps_arrays_in_place():
    """Updates are in place on p.data under no tape: the model's arrays stay the same
    objects (state_dict loading and optimizers both rely on it)."""
    lin = nn.Linear(3, 2)
    arrays = [p.data for p in lin.parameters()]
    opt = optim.Adam(lin.parameters(), lr=0.1)
    lin(minidl.randn(4, 3)).sum().backward()
    opt.step()
    assert all(p.data is a for p, a in zip(lin.parameters(), arrays))
    assert all(p.is_leaf and p.grad_fn is None for p in lin.parameters())
    loss = opt.step(closure=lambda: lin(minidl.randn(4, 3)).sum())
    assert loss.requires_grad


# ------------------------------------------------------------------------------ schedulers

SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 11], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1 / (1 + e) ** 0.5)),
]


def _lr_sequence(opt_cls, sched_cls, kwargs, params, steps=25):
    opt = opt_cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.03}], lr=0.1)
    sched = sched_cls(opt, **kwargs)
    seq = [sched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        sched.step()
        seq.append(sched.get_last_lr())
        assert seq[-1] == [g["lr"] for g in opt.param_groups]
    return seq


@pytest.mark.parametrize("name,kwargs", SCHEDULERS)
def test_scheduler_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    ours = _lr_sequence(optim.SGD, getattr(lr_scheduler, name), kwargs,
                        [nn.Parameter(np.zeros(2, np.float32)) for _ in range(2)])
    theirs = _lr_sequence(torch.optim.SGD, getattr(torch.optim.lr_scheduler, name), kwargs,
                          [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-14)
    assert ours[0] == [0.1, 0.03]


def test_scheduler_closed_forms_and_resume():
    p = nn.Parameter(np.zeros(1, np.float32))
    opt = optim.SGD([p], lr=1.0)
    sched = lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    for epoch in range(1, 13):
        sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(0.5 ** (epoch // 4))
    state = sched.state_dict()
    assert "optimizer" not in state and state["last_epoch"] == 12
    expected = []
    for _ in range(5):
        sched.step()
        expected.append(sched.get_last_lr())
    opt2 = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=1.0)
    opt2.param_groups[0]["lr"] = 0.5 ** 3  # as restored from the optimizer's state_dict
    sched2 = lr_scheduler.StepLR(opt2, step_size=99)
    sched2.load_state_dict(state)
    got = []
    for _ in range(5):
        sched2.step()
        got.append(sched2.get_last_lr())
    assert got == expected

    lam = lr_scheduler.LambdaLR(opt, lambda e: 0.1 * e)
    assert "lr_lambdas" not in lam.state_dict()
    with pytest.raises(ValueError, match="expected 1 lr_lambdas"):
        lr_scheduler.LambdaLR(opt, [lambda e: 1, lambda e: 2])
