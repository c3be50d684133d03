"""A checkpoint file is data, and a save is atomic (issue 24).

* A file names state classes from a closed registry (derived from the package's
  exports); restore never imports or resolves a name it reads.
* Every size a file declares is checked against the bytes that hold it before
  anything is allocated; nesting is bounded; dtypes must be numeric. Each hostile
  file of the issue, and hypothesis' mutations of valid files (bytes, and payloads
  with a recomputed checksum), give ``CheckpointError`` or a well-formed tree.
* Saves are atomic in both formats: a child process SIGKILLed at random moments of
  its saves always leaves the old or the new tree, bit for bit, and the next save
  removes what the killed one left; a full disk leaves the old file; a file keeps
  its mode, a symlink its target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from checkpoint_kill_worker import trees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry import SPECS

import functorch_optim as fo
from functorch_optim import checkpoint
from functorch_optim.checkpoint import CheckpointError

WORKER = os.path.join(os.path.dirname(__file__), "checkpoint_kill_worker.py")
KILLS = 30  # per format


def envelope(payload: bytes, version: int = 2) -> bytes:
    """A checkpoint file around ``payload``, its checksum right."""
    return (
        struct.pack("<16sIQ", b"FUNCTORCH_OPTIM\0", version, len(payload))
        + hashlib.sha256(payload).digest()
        + payload
    )


def write(path, structure, version: int = 2) -> str:
    """A msgpack checkpoint file holding the encoded ``structure``."""
    path.write_bytes(envelope(msgpack.packb([version, structure]), version))
    return str(path)


def ndarray(shape, dtype: str, data: bytes) -> msgpack.ExtType:
    """flax's ndarray encoding, with any shape, dtype name and bytes."""
    return msgpack.ExtType(1, msgpack.packb((shape, dtype, data), use_bin_type=True))


def state_classes(tree) -> set[type]:
    """The NamedTuple classes of this library inside ``tree``."""
    found = set()
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        if type(tree).__module__.startswith("functorch_optim."):
            found.add(type(tree))
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for item in tree:
            found |= state_classes(item)
    return found


def assert_well_formed(tree, depth=0):
    """Only what a checkpoint may hold: containers, scalars, numeric arrays and the
    registry's states."""
    assert depth <= 101
    numeric = set(checkpoint._numeric_dtypes().values())
    if isinstance(tree, (jax.Array, np.ndarray, np.generic)):
        assert np.dtype(tree.dtype) in numeric, tree.dtype
    elif type(tree) is dict:
        for k, v in tree.items():
            hash(k)
            assert_well_formed(k, depth + 1)
            assert_well_formed(v, depth + 1)
    elif type(tree) in (list, tuple) or type(tree) in set(
        checkpoint._state_registry().values()
    ):
        for item in tree:
            assert_well_formed(item, depth + 1)
    else:
        assert tree is None or type(tree) in (bool, int, float, complex, str), tree


def assert_identical(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_identical(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_identical(x, y)
    elif isinstance(a, (jax.Array, np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    else:
        assert a == b


def which(restored, candidates) -> int | None:
    """The index of the candidate ``restored`` equals bit for bit, else None."""
    for i, candidate in enumerate(candidates):
        try:
            assert_identical(restored, candidate)
        except AssertionError:
            continue
        return i
    return None


# --- the closed registry of state classes --------------------------------------------


def test_registry_holds_every_state_an_init_returns():
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    states = set()
    for name, spec in SPECS.items():
        tx = spec.functional(**spec.ecosystem)
        states |= state_classes(
            tx.init({"w": params["w"]} if name == "muon" else params)
        )
    wrapped = [
        fo.packed(fo.adam(0.1)),
        fo.skip_nonfinite(fo.sgd(0.1)),
        fo.reduce_on_plateau(),
        fo.chain(fo.clip_grad_norm(1.0), fo.adamw(0.1)),
        fo.swa_utils.averaged(),
    ]
    for tx in wrapped:
        states |= state_classes(tx.init(params))
    registry = checkpoint._state_registry()
    assert len(states) >= 16, states
    assert states <= set(registry.values()), states - set(registry.values())
    for namespace in (fo, fo.swa_utils):  # and every exported state class
        for name in namespace.__all__:
            obj = getattr(namespace, name)
            if isinstance(obj, type) and name.endswith("State"):
                assert registry[obj.__name__] is obj, name
    assert all(registry[cls.__name__] is cls for cls in registry.values())


def test_a_state_is_recorded_by_its_registry_name(tmp_path):
    params = {"w": jnp.ones(3)}
    state = (fo.adam(0.1).init(params), fo.reduce_on_plateau().init(params))
    checkpoint.save(tmp_path / "s", state)
    assert b"AdamState" in (tmp_path / "s").read_bytes()
    assert b"functorch_optim.algorithms" not in (tmp_path / "s").read_bytes()
    assert_identical(checkpoint.restore(tmp_path / "s"), state)


def test_version_1_files_are_read_through_the_registry(tmp_path):
    fields = [["array", "numpy", ndarray((), "int32", bytes(4))]] + [None] * 3
    old = ["namedtuple", "functorch_optim.algorithms.adam", "AdamState", fields]
    restored = checkpoint.restore(write(tmp_path / "v1", old, version=1))
    assert type(restored) is fo.AdamState and int(restored.count) == 0
    moved = ["namedtuple", "functorch_optim.optim", "AdamState", fields]
    with pytest.raises(CheckpointError, match="not a state class"):
        checkpoint.restore(write(tmp_path / "moved", moved, version=1))


def test_a_version_1_orbax_directory_is_read_and_replaced(tmp_path):
    import orbax.checkpoint as ocp

    tree = {"x": np.arange(3.0), "n": 1}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "old" / "arrays", {"0": tree["x"]})
        checkpointer.wait_until_finished()
    structure = ["dict", [["x", ["ref", "numpy", 0]], ["n", 1]]]
    (tmp_path / "old" / "structure.fockpt").write_bytes(
        envelope(msgpack.packb([1, structure, 1]), version=1)
    )
    assert_identical(checkpoint.restore(tmp_path / "old"), tree)
    checkpoint.save(tmp_path / "old", {"y": np.ones(2)}, format="orbax")
    assert "arrays" not in os.listdir(tmp_path / "old")
    assert_identical(checkpoint.restore(tmp_path / "old"), {"y": np.ones(2)})


@pytest.mark.parametrize(
    "version, names",
    [
        (1, ["functorch_optim.__main__", "X"]),  # runs the demo's main() if imported
        (1, ["functorch_optim.checkpoint", "os.stat_result"]),  # outside the package
        (1, ["os", "stat_result"]),
        (1, ["functorch_optim.algorithms.adam", "AdamState.__class__"]),
        (2, ["functorch_optim.__main__"]),
        (2, ["os.stat_result"]),
        (2, ["Increment"]),  # a NamedTuple of the library, but no state
        (2, ["AdamState.__class__"]),
    ],
)
def test_a_file_naming_code_runs_none(tmp_path, monkeypatch, version, names):
    import functorch_optim.demo

    ran = []
    monkeypatch.setattr(functorch_optim.demo, "main", lambda *a: ran.append(a))
    checkpoint.restore(write(tmp_path / "warm", ["list", [1]]))  # imports done
    before = set(sys.modules)
    fields = [["list", list(range(10))]]
    path = write(tmp_path / "x", ["namedtuple", *names, fields], version)
    with pytest.raises(CheckpointError, match="not a state class"):
        checkpoint.restore(path)
    assert ran == []
    assert set(sys.modules) == before


# --- hostile sizes, nesting and dtypes ---------------------------------------------


def deep(levels: int):
    tree = None
    for _ in range(levels):
        tree = ["list", [tree]]
    return tree


HOSTILE = {
    "big declared array": (
        ["array", "numpy", ndarray((2**31,), "float32", b"\0" * 16)],
        r"declares float32\[2147483648\] in 16 bytes",
    ),
    "object dtype": (
        ["array", "numpy", ndarray((2,), "object", b"\0" * 16)],
        "'object', not a numeric dtype",
    ),
    "a list as array data": (  # np.asarray would make it an object array
        ["array", "numpy", [1, None, "a"]],
        "a msgpack array instead of a ext",
    ),
    "string dtype": (
        ["array", "numpy", ndarray((1,), "<U4", b"\0" * 16)],
        "not a numeric dtype",
    ),
    "500 deep": (deep(500), "nested deeper than 100"),
    "a map": ({"a": 1}, "unexpected msgpack map"),
    "unknown tag": (["pickle", "os.system"], "unknown entry 'pickle'"),
    "a ref without arrays": (["ref", "numpy", 0], "refers to an arrays directory"),
    "unhashable key": (["dict", [[["list", []], 1]]], "unhashable list key"),
    "bool as an index": (["ref", "numpy", True], "True is not a int"),
    "a bigint of letters": (["bigint", "12ab"], "'12ab' is not an integer"),
    "scalar of shape 3": (
        ["array", "numpy-scalar", ndarray((3,), "int8", b"abc")],
        "scalar of shape",
    ),
    "unknown ext": (["array", "numpy", msgpack.ExtType(7, b"x")], "ext type 7"),
    "wrong field count": (["namedtuple", "AdamState", [1, 2]], "number of fields"),
    "wrong arity": (["list", [], []], "list of 2 fields"),
    "bytes as a value": (["list", [b"raw"]], "unexpected msgpack bin"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_payloads_raise_checkpoint_error(tmp_path, name):
    structure, message = HOSTILE[name]
    with pytest.raises(CheckpointError, match=message):
        checkpoint.restore(write(tmp_path / "x", structure))


def test_declared_counts_are_checked_against_the_bytes_left(tmp_path):
    # an array32 header of 2**32 - 1 entries in a file of a few bytes
    payload = b"\x92\x02\x92\xa4list\xdd\xff\xff\xff\xff\xc0"
    (tmp_path / "count").write_bytes(envelope(payload))
    with pytest.raises(CheckpointError, match="4294967295 entries where 1 bytes"):
        checkpoint.restore(tmp_path / "count")
    payload = b"\x92\x02\xdb\xff\xff\xff\xffabc"  # a 4 GB string
    (tmp_path / "str").write_bytes(envelope(payload))
    with pytest.raises(CheckpointError, match="declares 4294967295 bytes where 3"):
        checkpoint.restore(tmp_path / "str")


def test_a_large_file_of_junk_fails_at_once(tmp_path):
    # 10 MB of empty lists, which msgpack.unpackb would build (900 MB) first
    (tmp_path / "junk").write_bytes(
        envelope(
            b"\x92\x02\x92\xa4list\xdd" + struct.pack(">I", 10**7) + b"\x90" * 10**7
        )
    )
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="unexpected msgpack array at \\[0\\]"):
        checkpoint.restore(tmp_path / "junk")
    assert time.perf_counter() - start < 5


def test_many_entries_cost_linear_memory(tmp_path):
    # every entry is at least a byte of the file, so an entry count is bounded by it
    tree = {i: None for i in range(10**5)}
    checkpoint.save(tmp_path / "many", tree)
    assert checkpoint.restore(tmp_path / "many") == tree


def test_deep_trees_are_refused_at_save(tmp_path):
    tree: list = []  # 101 lists
    for _ in range(100):
        tree = [tree]
    with pytest.raises(ValueError, match="nested deeper than 100"):
        checkpoint.save(tmp_path / "deep", tree)
    checkpoint.save(tmp_path / "deep", tree[0])  # 100 levels: saved and restored
    assert checkpoint.restore(tmp_path / "deep") == tree[0]


def oversized_orbax(directory) -> None:
    """A few-KB orbax checkpoint whose metadata declares float32[2**31] (8 GiB)."""
    import orbax.checkpoint as ocp

    name = "arrays-0123456789abcdef"
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)) as c:
        c.save(directory / name, {"0": np.arange(4, dtype=np.float32)})
    zarray = directory / name / "0" / ".zarray"
    spec = json.loads(zarray.read_text())
    zarray.write_text(json.dumps(dict(spec, shape=[2**31], chunks=[2**31])))
    structure = [2, name, 1, ["ref", "numpy", 0]]
    (directory / "structure.fockpt").write_bytes(envelope(msgpack.packb(structure)))


def test_oversized_orbax_metadata_fails_before_allocating(tmp_path):
    oversized_orbax(tmp_path / "big")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="declares arrays of 8589934592 bytes"):
        checkpoint.restore(tmp_path / "big")
    assert time.perf_counter() - start < 10


def test_orbax_arrays_are_numeric_their_own_files_and_named(tmp_path):
    tree = {"x": np.arange(4.0)}
    checkpoint.save(tmp_path / "c", tree, format="orbax")
    (arrays,) = [e for e in os.listdir(tmp_path / "c") if e.startswith("arrays-")]
    metadata = tmp_path / "c" / arrays / "_METADATA"
    moved = tmp_path / "elsewhere"
    shutil.move(metadata, moved)
    os.symlink(moved, metadata)
    with pytest.raises(CheckpointError, match="is a symlink"):
        checkpoint.restore(tmp_path / "c")
    for name in ("../../etc", "arrays-XYZ"):
        structure = [2, name, 1, ["ref", "numpy", 0]]
        (tmp_path / "c" / "structure.fockpt").write_bytes(
            envelope(msgpack.packb(structure))
        )
        with pytest.raises(CheckpointError, match="not one save\\(\\) writes"):
            checkpoint.restore(tmp_path / "c")


def test_zero_arrays_fit_the_orbax_bound(tmp_path):
    # zstd compresses zeros ~3000-fold here, within the 32768-fold bound
    tree = {"m": np.zeros(1 << 22, np.float32), "v": jnp.zeros((512, 512))}
    checkpoint.save(tmp_path / "z", tree, format="orbax")
    assert_identical(checkpoint.restore(tmp_path / "z"), tree)


# --- atomic saves ------------------------------------------------------------------


def test_a_file_keeps_its_mode_and_a_symlink_its_target(tmp_path):
    path = tmp_path / "c.ckpt"
    checkpoint.save(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o640)
    checkpoint.save(path, {"a": 2})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    link = tmp_path / "latest.ckpt"
    link.symlink_to(path)
    checkpoint.save(link, {"a": 3})
    assert link.is_symlink() and checkpoint.restore(path) == {"a": 3}
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "latest.ckpt"]


def test_the_next_save_removes_what_an_interrupted_one_left(tmp_path):
    path = tmp_path / "c.ckpt"
    stale = tmp_path / ".c.ckpt.fockpt-0123456789abcdef"
    other = tmp_path / ".d.ckpt.fockpt-0123456789abcdef"  # another target's
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    checkpoint.save(path, {"a": 1})
    assert sorted(os.listdir(tmp_path)) == sorted([other.name, "c.ckpt"])
    directory = tmp_path / "o"
    checkpoint.save(directory, {"a": np.ones(2)}, format="orbax")
    for leftover in (
        "arrays-fedcba9876543210",
        "arrays-fedcba9876543210.orbax-checkpoint-tmp",
    ):
        (directory / leftover).mkdir()
    (directory / ".structure.fockpt.fockpt-0123456789abcdef").write_bytes(b"x")
    checkpoint.save(directory, {"a": np.zeros(2)}, format="orbax")
    entries = sorted(os.listdir(directory))
    assert len(entries) == 2 and entries[0].startswith("arrays-"), entries
    assert entries[1] == "structure.fockpt"


def test_a_full_disk_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    checkpoint.save(path, {"a": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, {"a": np.ones(1000)})
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(tmp_path / "o", {"a": np.ones(3)}, format="orbax")
    monkeypatch.undo()
    assert checkpoint.restore(path) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "o"]
    assert "structure.fockpt" not in os.listdir(tmp_path / "o")  # nothing committed


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_a_killed_save_leaves_the_old_or_the_new_checkpoint(tmp_path, fmt):
    """SIGKILL a child process at random moments of its saves, KILLS times: every
    restore is one of the two trees bit for bit, and the save after the last kill
    leaves no temp file or directory."""
    candidates = trees()
    path = str(tmp_path / "ckpt")
    checkpoint.save(path, candidates[0], format=fmt)
    worker = subprocess.Popen(
        [sys.executable, WORKER, fmt, path, "24"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    counts = {"kills": 0, "old": 0, "new": 0, "lost": 0}
    committed = 0
    try:
        for _ in range(KILLS):
            worker.stdin.write(f"save {1 - committed}\n")
            worker.stdin.flush()
            answer = worker.stdout.readline().split()
            assert answer[0] == "killed", answer
            returned = int(answer[1])
            old = (committed + returned) % 2  # the last save that returned
            counts["kills"] += 1
            try:
                restored = which(checkpoint.restore(path), candidates)
            except (CheckpointError, FileNotFoundError):
                restored = None
            if restored is None:
                counts["lost"] += 1
                continue
            counts["old" if restored == old else "new"] += 1
            committed = restored
        worker.stdin.write(f"finish {1 - committed}\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "saved"
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    print(f"\n{fmt}: {counts}")
    assert counts["lost"] == 0, counts
    assert counts["old"] + counts["new"] == KILLS
    assert_identical(checkpoint.restore(path), candidates[1 - committed])
    if fmt == "msgpack":
        assert os.listdir(tmp_path) == ["ckpt"]
    else:
        entries = sorted(os.listdir(path))
        assert len(entries) == 2 and entries[0].startswith("arrays-"), entries


# --- mutated files: CheckpointError or a well-formed tree --------------------------

TREE = {
    "step": 3,
    0: {"exp_avg": np.arange(6.0).reshape(2, 3), "lr": 0.5, "betas": (0.9, 0.99)},
    "state": fo.SGDState(jnp.asarray(1, jnp.int32), [jnp.ones(2, jnp.bfloat16)]),
    "names": ["w", None, True, 1 + 2j, 2**70, np.float64(0.25)],
}
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "cut", "insert"]),
        st.integers(0),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops) -> bytes:
    buffer = bytearray(data)
    for op, at, byte in ops:
        at %= max(len(buffer), 1)
        if op == "flip" and buffer:
            buffer[at] ^= 1 << (byte % 8)
        elif op == "set" and buffer:
            buffer[at] = byte
        elif op == "cut":
            del buffer[at : at + 1 + byte % 16]
        else:
            buffer[at:at] = bytes([byte])
    return bytes(buffer)


def restores_well(path, original=None) -> None:
    """``path`` restores as ``original`` (where given), as a well-formed tree, or
    raises CheckpointError."""
    try:
        restored = checkpoint.restore(path)
    except CheckpointError:
        return
    if original is not None:
        assert_identical(restored, original)
    assert_well_formed(restored)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    directory = tmp_path_factory.mktemp("valid")
    checkpoint.save(directory / "m", TREE)
    checkpoint.save(directory / "o", TREE, format="orbax")
    return directory


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=mutations)
def test_mutated_files_raise_or_restore_exactly(valid, ops):
    data = (valid / "m").read_bytes()
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m")
        with open(path, "wb") as f:
            f.write(mutate(data, ops))
        restores_well(path, TREE)  # the checksum catches every change


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=mutations)
def test_mutated_payloads_with_their_checksum_raise_or_are_well_formed(valid, ops):
    payload = (valid / "m").read_bytes()[60:]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m")
        with open(path, "wb") as f:
            f.write(envelope(mutate(payload, ops)))
        restores_well(path)


tags = st.sampled_from(
    ["dict", "list", "tuple", "node", "namedtuple", "array", "ref", "bigint", "complex"]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["numpy", "jax", "numpy-scalar", "AdamState", "SGDState"]),
    st.binary(max_size=8),
    st.builds(
        ndarray,
        st.lists(st.integers(0, 2**40), max_size=3),
        st.sampled_from(["float32", "bfloat16", "object", "<U2", "int4", "x"]),
        st.binary(max_size=24),
    ),
)
crafted = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(tags, st.lists(inner, max_size=4)).map(lambda t: [t[0], t[1]]),
        st.tuples(tags, inner, inner).map(list),
        st.tuples(tags, inner, st.lists(inner, max_size=3)).map(list),
        st.lists(inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(structure=crafted, version=st.sampled_from([1, 2]))
def test_crafted_payloads_raise_or_are_well_formed(structure, version):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "m")
        with open(path, "wb") as f:
            f.write(envelope(msgpack.packb([version, structure]), version))
        restores_well(path)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=mutations, which_file=st.integers(0))
def test_mutated_orbax_directories_raise_or_are_well_formed(valid, ops, which_file):
    with tempfile.TemporaryDirectory() as directory:
        copy = os.path.join(directory, "o")
        shutil.copytree(valid / "o", copy)
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(copy)
            for name in names
            if name != "structure.fockpt"
        )
        structure = os.path.join(copy, "structure.fockpt")
        if which_file % 2:  # the structure's payload, its checksum recomputed
            with open(structure, "rb") as f:
                payload = f.read()[60:]
            with open(structure, "wb") as f:
                f.write(envelope(mutate(payload, ops)))
        else:  # the arrays' metadata or data
            target = files[which_file // 2 % len(files)]
            with open(target, "rb") as f:
                data = f.read()
            with open(target, "wb") as f:
                f.write(mutate(data, ops))
        restores_well(copy)
