"""The GIL is released while quantizing, and inputs are never copied (peak RSS grows by
about the output's size, not the input's). Memory is measured in subprocesses so each
measurement sees one call's peak."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import quantbridge as qb


def test_gil_is_released_while_quantizing():
    x = np.random.default_rng(0).standard_normal((2048, 4096)).astype(np.float32)
    state = {"in_call": False, "done": False}

    def worker():
        state["in_call"] = True
        qb.quantize(x)
        state["in_call"] = False
        state["done"] = True

    old = sys.getswitchinterval()
    # A long switch interval: with the GIL held inside quantize, this thread could not run
    # at all while `in_call` is set; with it released, it spins freely meanwhile.
    sys.setswitchinterval(0.5)
    try:
        spins = 0
        t = threading.Thread(target=worker)
        t.start()
        while not state["done"]:
            if state["in_call"]:
                spins += 1
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert spins > 1000


def test_threads_get_identical_results():
    x = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
    expected = np.from_dlpack(qb.quantize(x).codes).copy()
    results = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        for _ in range(20):
            results.append(np.from_dlpack(qb.quantize(x).codes).copy())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    assert all(np.array_equal(r, expected) for r in results)


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, pyarrow as pa, torch, quantbridge as qb
    kind = sys.argv[1]
    n = 256 * 2**20
    if kind.startswith("arrow"):
        values = np.ones(n // 4, np.float32) + 0.5  # pages touched before the baseline
        column = pa.FixedSizeListArray.from_arrays(pa.array(values), 8192)  # no copy
        x = column if kind == "arrow-array" else pa.table({"layer_name": ["w"], "weights": pa.FixedSizeListArray.from_arrays(pa.array(values), n // 4)})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if kind == "arrow-array":
            nbytes = qb.quantize(x, bits=4, group_size=128).nbytes
        else:
            out = qb.quantize_arrow(x, bits=4, group_size=128)
            nbytes = n // 8 + (n // 4 // 128) * 5
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(after - before, nbytes)
        sys.exit(0)
    if kind == "numpy":
        x = np.ones(n // 4, np.float32).reshape(8192, -1)
    elif kind == "torch-transposed":
        x = torch.ones(8192, n // 4 // 8192).T
    elif kind == "torch-bfloat16":
        x = torch.ones(8192, n // 2 // 8192, dtype=torch.bfloat16)
    x += 0.5  # touch every page
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q = qb.quantize(x, bits=4, group_size=128)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(after - before, q.nbytes)
""")


@pytest.mark.parametrize("kind", ["numpy", "torch-transposed", "torch-bfloat16", "arrow-array", "arrow-table"])
def test_peak_rss_grows_by_the_output_not_the_input(kind):
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, kind], capture_output=True, text=True, check=True)
    growth, output_bytes = map(int, out.stdout.split())
    input_bytes = 256 * 2**20
    # A copy of the input would add 256 MiB; allow the output plus 24 MiB of slack.
    assert growth < output_bytes + 24 * 2**20 < input_bytes // 2, (growth, output_bytes)


SET_RACE_SCRIPT = textwrap.dedent("""
    import threading, time
    import numpy as np, torch, quantbridge as qb
    torch.manual_seed(0)
    shape = (2048, 8192)  # 64 MiB: the call usually outlasts the other thread's sleep
    zeros = np.from_dlpack(qb.quantize(torch.zeros(shape), bits=4, group_size=128).codes).copy()
    held = 0
    for _ in range(5):
        t = torch.randn(shape)
        expected = np.from_dlpack(qb.quantize(t.clone(), bits=4, group_size=128).codes).copy()
        old = t.untyped_storage().data_ptr()
        def repoint():
            time.sleep(0.002)
            t.set_(torch.zeros(shape))  # drops torch's last reference to the old storage
        other = threading.Thread(target=repoint)
        other.start()
        got = np.from_dlpack(qb.quantize(t, bits=4, group_size=128).codes)
        other.join()
        assert t.untyped_storage().data_ptr() != old, "the other thread did not run"
        # The call read the old storage, held to its end, or (on a loaded machine, where
        # the other thread can run before the export) the new one: never freed memory.
        if np.array_equal(got, expected):
            held += 1
        else:
            assert np.array_equal(got, zeros), "the call read neither storage"
    assert held > 0, "the tensor was re-pointed before every call: nothing was tested"
    print("ok")
""")


def test_torch_set_during_a_call_does_not_free_the_memory_being_read():
    # torch's DLPack export shares the tensor object, not its storage: without the storage
    # guard in from_python/dlpack.rs this run reads freed memory (a segfault, measured).
    # When the other thread re-points the tensor between the guard and the export, the
    # import exports again (the test failed once on a loaded machine before that).
    out = subprocess.run([sys.executable, "-c", SET_RACE_SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


class _RepointOnExport(torch.Tensor):
    """Re-points itself (`set_()`) the first time it is exported, just before the export:
    what another thread can do while torch's Python `__dlpack__` runs."""

    def __dlpack__(self, *args, **kwargs):
        if not getattr(self, "_moved", False):
            self._moved = True
            self.set_(self._new)
        return super().__dlpack__(*args, **kwargs)


class _RepointOnStorage(torch.Tensor):
    """Re-points itself the first time its storage is asked for."""

    def untyped_storage(self):
        if not getattr(self, "_moved", False):
            self._moved = True
            self.set_(self._new)
        return super().untyped_storage()


@pytest.mark.parametrize("kind", [_RepointOnExport, _RepointOnStorage])
def test_a_tensor_repointed_during_the_import_gives_the_new_values(kind):
    # Each moment the race above can hit, made deterministic: the import must end up
    # holding the storage its capsule describes (without the re-export, the first kind is
    # refused as a corrupt description; with the storage taken after the export, the second).
    old, new = torch.randn(64, 256), torch.randn(64, 256)
    t = old.clone().as_subclass(kind)
    t._new = new
    got = np.from_dlpack(qb.quantize(t, bits=4, group_size=128).codes)
    assert np.array_equal(got, np.from_dlpack(qb.quantize(new, bits=4, group_size=128).codes))


def test_torch_views_are_bounded_by_their_storage():
    base = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    view = base[2:6, 1:5].t()
    got = qb.quantize(view, bits=8).dequantize()
    np.testing.assert_allclose(np.from_dlpack(got), view.numpy(), atol=0.2)


ONE_THREAD_SCRIPT = textwrap.dedent("""
    import hashlib
    import numpy as np, quantbridge as qb
    x = np.random.default_rng(7).standard_normal((512, 1024), dtype=np.float32)  # 8 chunks
    digest = hashlib.sha256()
    for kwargs in [dict(bits=4, group_size=128), dict(bits=8, granularity="channel"), dict(gguf_type="Q4_K")]:
        for view in (x, x.T):
            q = qb.quantize(view, stats=True, **kwargs)
            for part in (q.codes, q.scales, qb.dequantize(q)):
                if part is not None:  # a GGUF result keeps its scales in its blocks
                    digest.update(np.from_dlpack(part).tobytes())
            digest.update(repr(sorted(q.stats.items())).encode())
    print(digest.hexdigest())
""")


def test_a_one_thread_pool_gives_the_same_bytes():
    """With `RAYON_NUM_THREADS=1` (a one-CPU container) a tensor's chunks run in order on
    the calling thread instead of being handed to the pool: codes, scales, dequantized
    values and statistics are the bytes the default pool gives."""

    def run(env):
        out = subprocess.run([sys.executable, "-c", ONE_THREAD_SCRIPT], capture_output=True, text=True,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    assert run({"RAYON_NUM_THREADS": "1"}) == run({"RAYON_NUM_THREADS": "3"})
