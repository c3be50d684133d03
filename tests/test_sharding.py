"""Scale out: sharded params and state on 8 devices, and 2 processes.

The 8-device checks run in one subprocess (tests/sharding_checks.py: this process
keeps its one device, and JAX starts once for all checks), started in the
background as soon as these tests are collected; each test here asserts one of its
results. The multi-process test starts 2 processes of 4 CPU devices each
(tests/multiprocess_worker.py) and compares their training with a run here.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import multiprocess_worker
import numpy as np
import pytest
import sharding_checks  # defines the cases; runs nothing on import
from registry import SPECS

import functorch_optim as fo

HERE = Path(__file__).parent
ROOT = HERE.parent
# The checks run alongside the rest of the suite (see start_checks), so slower
# than alone.
CHECKS_TIMEOUT_S = 600
WORKER_TIMEOUT_S = 120
POLL_S = 0.5


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def shared_dir(tmp_path_factory) -> Path:
    """The session's temp directory, the same for every pytest-xdist worker (their
    own ones are inside it)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    return shared


def start_checks(shared: Path) -> None:
    """Start tests/sharding_checks.py in the background, once per session even with
    pytest-xdist's workers (a file lock serializes them).

    Called when the tests that read its results are collected (tests/conftest.py):
    the checks take a minute or two, and a worker that ran them when the first of
    those tests came up would be held up (and the others with it, waiting on the
    lock). A shell writes the exit status once the checks end, so the results do
    not depend on the process that started them still running.
    """
    with open(shared / "sharding_checks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (shared / "sharding_checks.pid").exists():
            return
        run = '"$0" "$1" >"$2.out" 2>"$2.err"; echo $? >"$2.tmp"; mv "$2.tmp" "$2.rc"'
        process = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                run,
                sys.executable,
                str(HERE / "sharding_checks.py"),
                str(shared / "sharding_checks"),
            ],
            env=_env(),
            cwd=ROOT,
            process_group=0,  # the shell and the checks: killed together
        )
        (shared / "sharding_checks.pid").write_text(str(process.pid))


def _wait_for_checks(shared: Path) -> dict:
    """The checks' results once they end; a crash, or a timeout, as a failed
    check."""
    start_checks(shared)  # collected without the conftest hook: start them now
    started = (shared / "sharding_checks.pid").stat().st_mtime
    rc_path = shared / "sharding_checks.rc"
    while not rc_path.exists():
        if time.time() - started > CHECKS_TIMEOUT_S:
            os.killpg(int((shared / "sharding_checks.pid").read_text()), signal.SIGKILL)
            detail = f"timed out after {CHECKS_TIMEOUT_S} s"
            return {"crash": {"ok": False, "detail": detail}}
        time.sleep(POLL_S)
    returncode = int(rc_path.read_text())
    lines = (shared / "sharding_checks.out").read_text().strip().splitlines()
    if returncode != 0 or not lines:
        stderr = (shared / "sharding_checks.err").read_text()
        return {"crash": {"ok": False, "detail": stderr[-4000:]}}
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """The checks' results, computed once per session (see start_checks)."""
    return _wait_for_checks(shared_dir(tmp_path_factory))


def _assert_ok(results: dict, key: str) -> None:
    if key not in results:
        failed = {k: v["detail"] for k, v in results.items() if not v["ok"]}
        pytest.fail(
            f"check {key} did not run; failures:\n"
            + "\n".join(f"{k}:\n{v}" for k, v in failed.items())
        )
    assert results[key]["ok"], results[key]["detail"]


ALGORITHMS = list(sharding_checks.ALGORITHMS)
ELEMENTWISE = [name for name in ALGORITHMS if SPECS[name].elementwise]


def test_every_algorithm_is_checked():
    names = {SPECS[n].facade for n in sharding_checks.ALGORITHMS}
    facade_classes = {
        name
        for name in fo.__all__
        if isinstance(getattr(fo, name), type)
        and issubclass(getattr(fo, name), fo.Optimizer)
        and name not in ("Optimizer", "LBFGS")  # LBFGS: checked by the global tests
    }
    assert facade_classes == names


def test_no_check_failed(results):
    failed = {k: v["detail"] for k, v in results.items() if not v["ok"]}
    assert not failed, failed


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize(
    "check",
    [
        "init_sharding",
        "jit_keeps_sharding",
        "matches_unsharded",
        "explicit",
        "explicit_clip",
        "facade",
    ],
)
def test_sharded(results, check, name):
    """tx.init places the state as the params; a jitted step keeps it; the
    trajectory equals the unsharded one; the same on an explicit-sharding mesh
    (eval_shape of ShapeDtypeStructs included), also chained after
    clip_grad_norm with no all-gather; the facade keeps params and state sharded
    through steps and state_dict round trips."""
    _assert_ok(results, f"{check}/{name}")


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_step_has_no_collectives(results, name):
    _assert_ok(results, f"no_collectives/{name}")


@pytest.mark.parametrize("norm_type", ["2.0", "1.0", "inf"])
def test_clip_grad_norm_global_norm(results, norm_type):
    _assert_ok(results, f"clip_grad_norm/{norm_type}")


def test_lbfgs_dot_products(results):
    _assert_ok(results, "lbfgs/strong_wolfe")


def test_lbfgs_on_an_explicit_mesh(results):
    _assert_ok(results, "lbfgs_explicit/strong_wolfe")


@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "adafactor"])
def test_a_state_sharding_set_by_the_user_is_kept(results, name):
    """flax's cookbook "Sharding Optimization State Differently" (see
    sharding_checks.check_state_sharding_kept); Adafactor's factors are not
    params-shaped."""
    _assert_ok(results, f"state_sharding_kept/{name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one():
    """2 processes x 4 CPU devices, data-parallel fo.adam and fo.Adam: the result
    equals this single-device process's run."""
    address = f"127.0.0.1:{_free_port()}"
    worker = str(HERE / "multiprocess_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, address, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=WORKER_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:  # on a timeout or an error: leave no process behind
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    distributed = json.loads(outputs[0][0].strip().splitlines()[-1])
    single = multiprocess_worker.train(None)
    for run in ("functional", "facade"):
        for name, value in single[run].items():
            np.testing.assert_allclose(
                distributed[run][name],
                value,
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{run} {name}",
            )
