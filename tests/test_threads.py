"""A facade used from several threads (a logging or checkpoint thread beside the
training loop, two threads stepping one optimizer): its public methods are
serialized, so no caller sees a deleted array, an XLA error or a lost step."""

import copy
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import functorch_optim as fo

STEPS = 100


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 256), "b": jnp.ones((3,))}


def _grads():
    return {"w": jnp.full((256,), 0.5), "b": jnp.full((3,), -0.25)}


def _loss(p):
    return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["b"]))


def _run(*targets):
    """Run each target in its own thread; the exceptions they raised."""
    errors = []

    def guarded(target):
        try:
            target()
        except Exception as e:  # reported by the test, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    return errors


def _check_usable(tree):
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            assert not leaf.is_deleted()
            np.asarray(leaf)


def _beside_steps(opt, read):
    """Step ``opt`` STEPS times while another thread calls ``read()`` over and
    over (from before the first step to after the last); the errors raised."""
    started, done = threading.Event(), threading.Event()
    grads = _grads()

    def reader():
        try:
            while not done.is_set():
                read()
                started.set()
        finally:
            started.set()

    def stepper():
        started.wait(timeout=60)
        try:
            for _ in range(STEPS):
                opt.step(grads)
        finally:
            done.set()

    return _run(reader, stepper)


READS = {
    "params": lambda opt, path: opt.params,
    "grads": lambda opt, path: opt.grads,
    "state": lambda opt, path: dict(opt.state),
    "state_dict": lambda opt, path: opt.state_dict(),
    "checkpoint": lambda opt, path: fo.checkpoint.save(path, opt.state_dict()),
}


@pytest.mark.parametrize("what", list(READS))
def test_reads_beside_steps_stay_usable(what, tmp_path):
    """Every array read while another thread steps is valid then and later."""
    opt = fo.Adam(_params(), lr=0.01)
    opt.step(_grads())
    path, read = tmp_path / "opt.ckpt", []
    assert _beside_steps(opt, lambda: read.append(READS[what](opt, path))) == []
    assert len(read) > 1
    _check_usable(read)
    assert int(opt.state_dict()["state"][0]["step"]) == STEPS + 1
    if what == "checkpoint":
        restored = fo.checkpoint.restore(path)
        assert 1 <= int(restored["state"][0]["step"]) <= STEPS + 1


def _stepped_alone(closure, steps):
    opt = fo.SGD(_params(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.step(_loss if closure else _grads())
    return opt


@pytest.mark.parametrize("closure", [False, True], ids=["grads", "closure"])
def test_two_threads_stepping_lose_no_step(closure):
    """Each step is the same function of the optimizer's state (fixed grads, or a
    closure of the params), so 2K serialized steps in any order give the
    single-threaded result exactly."""
    opt = fo.SGD(_params(), lr=0.01, momentum=0.9)
    grads = _grads()

    def stepper():
        for _ in range(STEPS):
            opt.step(_loss if closure else grads)

    assert _run(stepper, stepper) == []
    alone = _stepped_alone(closure, 2 * STEPS)
    jax.tree.map(np.testing.assert_array_equal, opt.params, alone.params)
    jax.tree.map(
        np.testing.assert_array_equal,
        opt.state_dict()["state"],
        alone.state_dict()["state"],
    )


def test_lbfgs_two_threads_stepping_and_one_reading():
    def quadratic(p):
        return jnp.sum((p["w"] - 1.0) ** 2 * jnp.arange(1, 9))

    def lbfgs():
        return fo.LBFGS({"w": jnp.zeros(8)}, lr=0.1, max_iter=2)

    opt, read, done = lbfgs(), [], threading.Event()

    def stepper():
        for _ in range(STEPS // 4):
            opt.step(quadratic)

    def reader():
        while not done.is_set():
            read.append((opt.params, opt.state_dict()))

    def steppers():
        try:
            assert _run(stepper, stepper) == []
        finally:
            done.set()

    assert _run(steppers, reader) == []
    _check_usable(read)
    alone = lbfgs()
    for _ in range(STEPS // 2):
        alone.step(quadratic)
    np.testing.assert_array_equal(opt.params["w"], alone.params["w"])
    jax.tree.map(
        np.testing.assert_array_equal,
        opt.state_dict()["state"],
        alone.state_dict()["state"],
    )


def test_state_dict_round_trip_in_a_background_thread():
    opt = fo.Adam(_params(), lr=0.01)
    opt.step(_grads())

    def round_trip():
        saved = opt.state_dict()
        _check_usable(saved)
        opt.load_state_dict(saved)

    assert _beside_steps(opt, round_trip) == []
    _check_usable(opt.params)

    # from a thread, into an optimizer the thread did not build
    expected = copy.deepcopy(opt.state_dict())
    other = fo.Adam(_params(), lr=0.5)
    assert _run(lambda: other.load_state_dict(opt.state_dict())) == []
    jax.tree.map(np.testing.assert_array_equal, other.state_dict(), expected)


def test_hooks_and_closures_call_back_in_the_same_thread():
    """The lock is reentrant: a hook or closure may use the optimizer it runs in."""
    opt = fo.Adam(_params(), lr=0.01)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.params))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(o.state_dict()))
    opt.register_state_dict_pre_hook(lambda o: seen.append(o.grads))
    assert _run(lambda: opt.step(lambda p: _loss(opt.params) + 0 * _loss(p))) == []
    assert len(seen) == 3
    _check_usable(seen)


def test_copies_have_their_own_lock():
    opt = fo.Adam(_params(), lr=0.01)
    opt.step(_grads())
    twin = copy.deepcopy(opt)
    assert twin._lock is not opt._lock

    def step_both():
        twin.step(_grads())
        opt.step(_grads())

    assert _run(step_both, step_both) == []
    jax.tree.map(np.testing.assert_array_equal, twin.params, opt.params)
