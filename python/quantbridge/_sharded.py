"""Shard-parallel checkpoint quantization: one task per input shard, on a process pool, a
Ray cluster or a Dask cluster (docs/distributed.md).

Per-group round-to-nearest makes every shard independent, so the job is a map over the
index's shards. The driver (this module, in the caller's process) plans the whole job in
Rust before anything is written, schedules one task per shard on the engine, and, once
every shard is there, writes the index and ``config.json`` and renames the folder into
place. A worker's task (:func:`run_shard`) writes one output shard under a temporary name,
syncs it, reads it back and renames it: no partial shard is ever visible under its name.

The folder is built in ``.<OUTPUT>.partial`` beside OUTPUT, with a manifest that records
each finished shard's size and SHA-256 (and its per-layer report). A re-run of the same
job after a crash verifies the finished shards against the manifest and skips them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import _native
from ._errors import validation_error
from ._native import QuantizationError, __version__

EXECUTORS = ("local", "ray", "dask")
MANIFEST = "quantbridge-manifest.json"
INDEX = "model.safetensors.index.json"
MIB = 2**20
# The documented bound of one task's memory: the tensor in flight, one result queued
# behind it and the job's own buffers (docs/formats.md, bounded memory).
TASK_OVERHEAD_BYTES = 100 * MIB
# Tests only: "<shard file>:<marker path>" kills the worker that quantizes that shard,
# after its first tensor, the first time (when the marker file does not exist yet).
KILL_ONCE_ENV = "QUANTBRIDGE_TEST_KILL_ONCE"

Progress = Callable[[dict[str, Any], int, int], object]


def is_sharded(source: Path) -> bool:
    """``source`` is a sharded checkpoint: a folder with an index, or the index itself."""
    return (source.is_dir() and (source / INDEX).is_file()) or source.name.endswith(".index.json")


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one output shard (plain data: it is pickled)."""

    input: str
    file: str
    folder: str
    spec: tuple[Any, ...]
    format: str
    scale_dtype_given: bool
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    kill_marker: str | None = None
    # The CPUs the engine gave the task: its process's pool is sized to them (None: the
    # caller's own process, whose pool is left alone).
    threads: int | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def run_shard(task: ShardTask) -> dict[str, Any]:
    """A worker's task: write output shard ``task.file``; its size, SHA-256 and reports."""
    from ._files import _selector  # the worker rebuilds the caller's patterns

    threads = _native._size_task_pool(task.threads or 0)
    progress = None
    marker = task.kill_marker
    if marker is not None and not os.path.exists(marker):
        def progress(report: dict[str, Any], done: int, total: int) -> None:
            with contextlib.suppress(OSError):  # no marker folder: die on every attempt
                Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-shard

    reports = _native.quantize_shard(
        Path(task.input), task.file, Path(task.folder), task.spec, format=task.format,
        scale_dtype_given=task.scale_dtype_given, select=_selector(task.include, task.exclude), progress=progress,
    )
    path = Path(task.folder) / task.file
    return {"file": task.file, "size": path.stat().st_size, "sha256": _sha256(path), "reports": reports,
            "threads": threads}


def _core_share(workers: int) -> int:
    """The engine threads of each of ``workers`` worker processes on this machine: its cores
    shared among them, not each process's pool on all of them (as OMP_NUM_THREADS is set for
    Ray and Dask tasks)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _task_memory(shard: dict[str, Any]) -> int:
    """The memory one shard's task declares to the scheduler."""
    return 2 * shard["largest_tensor"] + TASK_OVERHEAD_BYTES


# -- the engines: each runs `tasks` and yields results as they finish ---------------------


def _run_local(tasks: list[ShardTask], memory: dict[str, int], workers: int, max_retries: int,
               address: str | None) -> Iterator[dict[str, Any]]:
    """Up to ``workers`` shards at a time, each in a fresh ``python -m
    quantbridge._shard_worker`` process (``workers == 1``: in this process). A process per
    shard makes a death attributable, so only that shard is run again (at most
    ``max_retries`` times), and it needs neither ``fork`` in a threaded caller nor the
    caller's ``if __name__ == "__main__"`` guard, as a ``multiprocessing`` pool would."""
    if address is not None:
        raise validation_error("address", f"{address!r} for the local executor", "none (it runs on this machine)",
                               "drop --address, or pass --executor ray|dask")
    if workers == 1:
        for task in tasks:
            yield run_shard(task)
        return
    share = _core_share(workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quantbridge-shard") as threads:
        running = {threads.submit(_in_subprocess, replace(t, threads=share), max_retries) for t in tasks}
        try:
            for future in as_completed(running):
                yield future.result()
        finally:
            for future in running:  # an error or Ctrl-C: queued shards are not started
                future.cancel()


def _in_subprocess(task: ShardTask, max_retries: int) -> dict[str, Any]:
    """``run_shard(task)`` in a child process, again if the child is killed."""
    for attempt in range(max_retries + 1):
        child = subprocess.run([sys.executable, "-m", "quantbridge._shard_worker"], input=pickle.dumps(task),
                               capture_output=True, check=False)
        if child.returncode == 0:
            return pickle.loads(child.stdout)
        if child.returncode == 1 and child.stdout:
            raise pickle.loads(child.stdout)  # the task's own error, as it was raised
        died = (f"died (killed by {signal.Signals(-child.returncode).name})" if child.returncode < 0
                else f"died (exit status {child.returncode})")
        stderr = child.stderr.decode(errors="replace").strip().splitlines()[-1:]
    raise QuantizationError(
        f"shard {task.file}: its worker process {died} {attempt + 1} times (max_retries={max_retries})"
        f"{': ' + stderr[0] if stderr else ''}; check the machine's memory (dmesg) or raise --max-retries")


def _run_ray(tasks: list[ShardTask], memory: dict[str, int], workers: int, max_retries: int,
             address: str | None) -> Iterator[dict[str, Any]]:
    """Ray tasks (``max_retries`` for lost workers and nodes, ``memory=`` declared), on the
    cluster at ``address`` or a local instance of ``workers`` CPUs started here."""
    with _engine_import("ray"):
        import ray
        from ray.exceptions import RayTaskError

    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        if address is None:
            options["num_cpus"] = workers
        ray.init(address=address, **options)
    try:
        remote = ray.remote(run_shard)
        refs = {
            # One declared CPU, one engine thread (Ray sets OMP_NUM_THREADS the same way).
            remote.options(num_cpus=1, memory=memory[t.file], max_retries=max_retries,
                           name=f"quantbridge:{t.file}").remote(replace(t, threads=1)): t
            for t in tasks
        }
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            task = refs.pop(done[0])
            try:
                yield ray.get(done[0])
            except RayTaskError as exc:  # the task's own exception: raise it as it was
                raise exc.cause from None
            except ray.exceptions.RayError as exc:
                raise QuantizationError(f"shard {task.file}: the Ray task failed after {max_retries} retries: "
                                        f"{exc}") from None
    finally:
        if started:
            ray.shutdown()


def _run_dask(tasks: list[ShardTask], memory: dict[str, int], workers: int, max_retries: int,
              address: str | None) -> Iterator[dict[str, Any]]:
    """Dask futures (``retries``; a lost worker's task is rescheduled by the scheduler),
    on the scheduler at ``address`` or a ``LocalCluster`` of ``workers`` processes started
    here. Memory is declared as the ``MEMORY`` resource when every worker offers it (the
    local cluster's workers do)."""
    with _engine_import("dask"):
        from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if address is None:
            per_worker = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // workers
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                resources={"MEMORY": per_worker}, silence_logs=logging.CRITICAL))
            client = stack.enter_context(Client(cluster))
            share = _core_share(workers)
        else:
            client = stack.enter_context(Client(address))
            share = 1  # a worker thread per task: Dask's nannies set OMP_NUM_THREADS=1 too
        offered = [w.get("resources", {}).get("MEMORY") for w in client.scheduler_info()["workers"].values()]
        declare = bool(offered) and all(m is not None for m in offered)
        if declare:
            for t in tasks:
                if memory[t.file] > max(offered):
                    raise validation_error(
                        f"shard {t.file}", f"a task needing {memory[t.file] / MIB:.0f} MiB",
                        f"at most the largest Dask worker's MEMORY resource ({max(offered) / MIB:.0f} MiB)",
                        "start workers with more memory (dask worker --resources MEMORY=BYTES)")
        futures = {
            client.submit(run_shard, replace(t, threads=share), key=f"quantbridge-shard-{t.file}-{os.urandom(4).hex()}",
                          pure=False, retries=max_retries,
                          resources={"MEMORY": memory[t.file]} if declare else None): t
            for t in tasks
        }
        for future in as_completed(futures):
            yield future.result()


ENGINES = {"local": _run_local, "ray": _run_ray, "dask": _run_dask}


@contextlib.contextmanager
def _engine_import(executor: str) -> Iterator[None]:
    """An engine that is not installed is a usage error that says how to install it."""
    try:
        yield
    except ImportError as exc:
        raise validation_error("executor", f"{executor!r}, whose engine is not installed ({exc})",
                               "an installed engine", f"pip install 'quantbridge[{executor}]', or --executor local") from None


# -- the driver ---------------------------------------------------------------------------


class _Staging:
    """``.<OUTPUT>.partial`` beside OUTPUT, locked against a second driver, with the
    manifest of finished shards."""

    def __init__(self, output: Path, job: dict[str, Any]) -> None:
        self.output = output
        self.path = output.parent / f".{output.name}.partial"
        self.job = job
        self.done: dict[str, dict[str, Any]] = {}
        self.path.mkdir(exist_ok=True)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OSError(f"another quantbridge job is writing {output} (it holds {self.path}); wait for it, "
                          "or stop it") from None
        manifest = self.path / MANIFEST
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(manifest.read_text())
            if saved.get("job") == job:
                self.done = saved["shards"]
        if not self.done:  # a new job, or another job's leftovers: start clean
            for entry in self.path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def verified(self, file: str) -> bool:
        """``file`` is finished and its bytes are the ones the manifest recorded."""
        record = self.done.get(file)
        path = self.path / file
        ok = (record is not None and path.is_file() and path.stat().st_size == record["size"]
              and _sha256(path) == record["sha256"])
        if not ok:
            self.done.pop(file, None)
        return ok

    def record(self, result: dict[str, Any]) -> None:
        self.done[result["file"]] = {k: result[k] for k in ("size", "sha256", "reports")}
        temp = self.path / f".{MANIFEST}.tmp"
        temp.write_text(json.dumps({"job": self.job, "shards": self.done}))
        os.replace(temp, self.path / MANIFEST)

    def remove_strays(self, keep: set[str]) -> None:
        """Anything but the finished shards (a killed task's temporary file, the manifest)."""
        for entry in self.path.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def commit(self, force: bool) -> None:
        """Rename into place; an existing OUTPUT (``force``) is moved aside, then removed."""
        old = self.output.parent / f".{self.output.name}.old-{os.getpid()}"
        had_old = self.output.exists()
        if had_old:
            os.rename(self.output, old)
        os.rename(self.path, self.output)
        if had_old:
            shutil.rmtree(old) if old.is_dir() else old.unlink()

    def close(self) -> None:
        os.close(self._fd)


def quantize_sharded(
    source: Path, output: Path, *, spec: tuple[Any, ...], format: str, scale_dtype_given: bool,
    include: tuple[str, ...], exclude: tuple[str, ...], force: bool, progress: Progress | None,
    executor: str, address: str | None, workers: int | None, max_retries: int,
) -> list[dict[str, Any]]:
    """The shard-parallel job behind :func:`quantbridge.quantize_file` (its docstring)."""
    from ._files import _selector

    if executor not in ENGINES:
        raise validation_error("executor", repr(executor), f"one of {', '.join(EXECUTORS)}",
                               "pass --executor local (a process pool on this machine), ray or dask")
    select = _selector(include, exclude)
    shards = _native.shard_plan(source, output, spec, format=format, scale_dtype_given=scale_dtype_given,
                                force=force, select=select)
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, len(shards)))
    if workers < 1:
        raise validation_error("workers", str(workers), "1 or more", "pass --workers N with N >= 1")
    files = [s["file"] for s in shards]
    inputs = {}
    for f in files:
        st = (source if source.is_dir() else source.parent).joinpath(f).stat()
        inputs[f] = [st.st_size, st.st_mtime_ns]
    job = {"quantbridge": __version__, "input": str(source.resolve()), "inputs": inputs, "format": format,
           "spec": list(spec), "scale_dtype_given": scale_dtype_given, "include": list(include),
           "exclude": list(exclude)}
    staging = _Staging(output, job)
    try:
        return _drive(source, staging, shards, spec=spec, format=format, scale_dtype_given=scale_dtype_given,
                      include=include, exclude=exclude, force=force, progress=progress, executor=executor,
                      address=address, workers=workers, max_retries=max_retries, select=select)
    except BaseException as exc:
        if staging.done:
            exc.add_note(f"{len(staging.done)} of {len(shards)} shards are finished in {staging.path}; run the "
                         "same command again to resume (or delete that folder)")
        else:  # nothing to resume: leave nothing behind
            shutil.rmtree(staging.path, ignore_errors=True)
        raise
    finally:
        staging.close()


def _drive(source: Path, staging: _Staging, shards: list[dict[str, Any]], *, spec: tuple[Any, ...], format: str,
           scale_dtype_given: bool, include: tuple[str, ...], exclude: tuple[str, ...], force: bool,
           progress: Progress | None, executor: str, address: str | None, workers: int, max_retries: int,
           select: Any) -> list[dict[str, Any]]:
    kill_file, _, kill_marker = os.environ.get(KILL_ONCE_ENV, "").partition(":")
    total = sum(s["input_bytes"] for s in shards)
    on_shard = getattr(progress, "shard_done", None)
    done_bytes = 0
    by_file: dict[str, list[dict[str, Any]]] = {}

    def finished(file: str, reports: list[dict[str, Any]]) -> None:
        nonlocal done_bytes
        by_file[file] = reports
        if on_shard is not None:  # first, so the shard's last progress line counts it
            on_shard(len(by_file), len(shards))
        for report in reports:
            done_bytes += report["input_bytes"]
            if progress is not None:
                progress(report, done_bytes, total)

    for s in shards:  # resumed: verified against the manifest, reported, not re-run
        if staging.verified(s["file"]):
            finished(s["file"], staging.done[s["file"]]["reports"])
    tasks = [
        ShardTask(str(source), s["file"], str(staging.path), spec, format, scale_dtype_given, include, exclude,
                  kill_marker if s["file"] == kill_file and kill_marker else None)
        for s in shards if s["file"] not in by_file
    ]
    memory = {s["file"]: _task_memory(s) for s in shards}
    results = ENGINES[executor](tasks, memory, workers, max_retries, address)
    try:
        for result in results:
            staging.record(result)
            finished(result["file"], result["reports"])
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # an error or Ctrl-C: the engine's pool or cluster is shut down
    staging.remove_strays(set(by_file))
    _native.finish_shards(source, staging.path, spec, format=format, scale_dtype_given=scale_dtype_given,
                          select=select)
    staging.commit(force)
    return [r for s in shards for r in by_file[s["file"]]]
