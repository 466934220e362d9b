"""The scoring processes of a worker node: N single-process Celery workers, one supervisor.

``nearwatch worker --concurrency N --pool processes`` forks N processes from the node's main
process, after the imports, the metrics directory and the model cache
are set up. Each runs its own Celery worker with the ``solo`` pool: it takes a batch from
the broker and scores it itself, so a batch is decoded once, where it is scored (the prefork
pool decodes it in its parent and pickles it through a pipe to a child, and back).
Measured at 10k references: node CPU 3-6 µs/record less than prefork (docs/SERVICE.md,
"Measured design choices"). Not the default: each process is also its node's broker consumer,
and kombu's Redis transport moves a message into its unacknowledged index only after it has
read and decoded it (BRPOP, then HSET): a process killed in those few milliseconds loses
that message until its producer resubmits it (``NEARWATCH_BATCH_TIMEOUT``). A prefork child
never holds a message its parent has not indexed.

The main process (this module's ``Supervisor``) serves ``/metrics`` (``app.py``) and
watches its children:

- SIGTERM/SIGINT/SIGQUIT are passed on: each process finishes and acknowledges its batch
  (Celery's warm shutdown), then the node exits 0.
- A process that dies (killed, out of memory) is replaced, as the prefork pool replaces a
  child. Its batch is requeued at once, as ``reject_on_worker_lost`` does for prefork: each
  process writes the delivery tag of the batch it received to ``<run dir>/delivery-<pid>``,
  and the supervisor restores that tag from the broker's unacknowledged index (kombu's
  ``restore_by_tag``: a no-op when the batch was acknowledged). Redelivery is safe (tasks).
- Each process builds its scorer (loads the model) before it consumes, and follows the
  registry (hot reload) on its own, like a prefork child.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import SCORING_QUEUE

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("nearwatch.worker")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
_TAG_BYTES = 128  # a kombu delivery tag is a uuid (36 characters)


def worker_argv(pool: str, concurrency: int, loglevel: str) -> list[str]:
    """Celery worker arguments of one scoring process (solo) or of a prefork pool."""
    return ["worker", "--queues", SCORING_QUEUE, "--pool", pool,
            "--concurrency", str(concurrency), "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"nearwatch-{os.getpid()}@%h"]


class Supervisor:
    """Starts ``concurrency`` scoring processes, replaces dead ones, stops them on a signal."""

    def __init__(self, app: Celery, concurrency: int, loglevel: str, run_dir: Path,
                 metrics_dir: Path | None = None) -> None:
        self.app, self.concurrency, self.loglevel = app, concurrency, loglevel
        self.run_dir, self.metrics_dir = run_dir, metrics_dir
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping: int | None = None  # the signal that asked the node to stop
        self._failures = 0  # consecutive processes that died soon after starting

    def run(self) -> int:
        """Until stopped: 0 after a stop signal once every process has finished."""
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._stop)
        for _ in range(self.concurrency):
            self._start()
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = self.children.pop(pid, None)
            if started is None:
                continue
            self._reap(pid, status, time.monotonic() - started)
            if self.stopping is None:
                self._pause_after_failures()
                if self.stopping is None:
                    self._start()
        return 0

    def _stop(self, signum: int, _frame: Any) -> None:
        first = self.stopping is None
        self.stopping = signum
        if first:
            log.warning("stopping %d scoring processes (%s): batches in progress finish",
                        len(self.children), signal.Signals(signum).name)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _start(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # no stop signal between the fork and the child's own handlers (see the child)
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the scoring process: never returns into the supervisor's code
            code = 1
            try:
                for signum in _STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)  # Celery installs its own
                _stop_with_parent(supervisor)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                code = _scoring_process(self.app, self.loglevel, self.run_dir)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                log.exception("scoring process %d failed", os.getpid())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _reap(self, pid: int, status: int, lived: float) -> None:
        how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        tag_file = self.run_dir / f"delivery-{pid}"
        tag = _read_tag(tag_file)
        tag_file.unlink(missing_ok=True)
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        if self.stopping is not None and os.WIFEXITED(status):
            return  # a warm shutdown: its batches were acknowledged
        # a process that keeps dying right after starting (an exit, a crash or the OOM killer
        # while loading the model) is restarted with a growing pause, not in a tight loop
        self._failures = self._failures + 1 if lived < 10 else 0
        requeued = bool(tag) and self._requeue(tag)
        log.warning("scoring process %d died (%s)%s; starting another", pid, how,
                    ": its batch was requeued" if requeued else "")

    def _requeue(self, tag: str) -> bool:
        """Put the dead process's batch back on its queue, if still unacked (at the back, as
        prefork's requeue of a lost batch does)."""
        try:
            with self.app.connection_for_write() as connection:
                channel: Any = connection.default_channel
                qos = channel.qos
                if not hasattr(qos, "restore_by_tag"):
                    return False  # not kombu's Redis transport: the broker redelivers
                before = channel.client.hexists(qos.unacked_key, tag)
                qos.restore_by_tag(tag, leftmost=True)
                return bool(before)
        except Exception as exc:  # the visibility timeout restores it anyway
            log.warning("could not requeue batch %s now (%s): it comes back after the "
                        "visibility timeout", tag, exc)
            return False

    def _pause_after_failures(self) -> None:
        if self._failures < 2:
            return
        until = time.monotonic() + min(30.0, 0.5 * 2 ** self._failures)
        while time.monotonic() < until and self.stopping is None:
            time.sleep(0.1)


def _stop_with_parent(supervisor: int) -> None:
    """SIGTERM (a warm shutdown) when the supervisor dies, as a prefork child exits with its
    parent: no scoring process outlives its node unsupervised (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _read_tag(path: Path) -> str:
    try:
        return path.read_bytes().strip(b"\0 \n").decode("ascii", "replace")
    except OSError:
        return ""


class _Trimmer:
    """Gives freed heap memory back to the system after an oversized batch.

    glibc keeps what a 30 MB message's decoded copies used (its heap grows to the high-water
    mark of the largest message and stays there: +270-320 MB in tests/test_fuzz_service.py).
    After a batch whose message exceeds ``threshold`` bytes has been handled, ``malloc_trim``
    returns the free pages (+~100 MB, flat). Ordinary batches never trigger it: a fixed mmap
    threshold instead (mallopt) cost 6 µs/record of page faults (faiss's 16 MiB blocks).
    """

    def __init__(self, threshold: int = 8 << 20) -> None:
        self.threshold = threshold
        self.big = threading.Event()
        self.done = threading.Event()
        try:
            self.trim: Any = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: its allocator decides
            return
        threading.Thread(target=self._run, name="nearwatch-trim", daemon=True).start()

    def received(self, size: int) -> None:
        if size > self.threshold:
            self.done.clear()
            self.big.set()

    def _run(self) -> None:
        while True:
            self.big.wait()
            self.big.clear()
            self.done.wait()  # the batch was scored; its message is released just after
            time.sleep(0.2)
            if not self.big.is_set():
                self.trim(0)


def _scoring_process(app: Celery, loglevel: str, run_dir: Path) -> int:
    """One scoring process: load the model, note each batch's delivery tag, run Celery."""
    from celery.signals import task_postrun, task_received

    from .app import start_worker
    from .pool import build_runtime

    fd = os.open(run_dir / f"delivery-{os.getpid()}", os.O_WRONLY | os.O_CREAT, 0o600)
    trimmer = _Trimmer()

    def note_delivery(request: Any = None, **_: Any) -> None:
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag:
            os.pwrite(fd, str(tag).encode("ascii", "replace")[:_TAG_BYTES].ljust(_TAG_BYTES,
                                                                                 b"\0"), 0)
        body = getattr(message, "body", None)
        trimmer.received(len(body) if isinstance(body, bytes | str) else 0)

    task_received.connect(note_delivery, weak=False)
    task_postrun.connect(lambda **_: trimmer.done.set(), weak=False)
    build_runtime(app, watch=True)  # the model is loaded before the first batch
    start_worker(app, worker_argv("solo", 1, loglevel))
    return 0
