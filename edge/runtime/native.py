"""Keep native libraries' stderr chatter out of the console, but available with ``-v``.

LiteRT and MediaPipe print straight to file descriptor 2 from C++ (not through Python), so neither
``warnings`` nor ``logging`` can silence them. Measured on this machine (ai-edge-litert 2.3.0,
mediapipe 1.2.2), once per process each:

* LiteRT ``Interpreter.allocate_tensors()`` (the first one in the process only):
  ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` Construction, ``invoke()`` and exit print nothing.
* MediaPipe ``FaceDetector.create_from_options``: six ``INFO:`` lines (``[environment.cc:36] Creating LiteRT environment``,
  ``RegisterAccelerator`` (GPU WebGPU, CpuAccelerator), ``XNNPACK CPU accelerator registered``,
  ``Flatbuffer model initialized ...``) plus the XNNPACK line above; later:
  ``WARNING: Logging before InitGoogle() is written to STDERR`` and
  ``W... inference_runner_litert.cc:1418] Input tensor memory is not aligned ...`` once, at the first
  ``detect()`` whose input buffer happens to be misaligned: usually the first call, but in 1 of 12 runs here
  a later one, so a quiet block around only the first ``detect()`` does not always catch it;
  ``close()``: two ``INFO: [accelerator_registry.cc:43] DestroyAccelerator`` lines.
  (``GLOG_minloglevel`` does not silence any of these in mediapipe 1.x.)

:func:`quiet_native_stderr` points fd 2 at a temporary file for the duration of a ``with`` block and then
re-emits each captured line on the ``edge.native`` logger at DEBUG, so the default console stays clean and
``-v`` (DEBUG logging) still shows them.

Caveat (inherent to redirecting a process-wide file descriptor): while the block runs, *everything* written
to fd 2 by any thread, including Python's own ``sys.stderr`` and logging handlers writing to it, lands in
the capture and is re-emitted at DEBUG. Keep the blocks short (interpreter creation, a first invoke, a
close), never around the frame loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

log = logging.getLogger("edge.native")

#: Serialises redirections: fd 2 is process-wide, so two threads interleaving dup/dup2 would restore the
#: wrong descriptor. Re-entrant so a nested block in the same thread just captures into the outer file.
_LOCK = threading.RLock()

_libc: ctypes.CDLL | None
try:  # fflush(NULL) flushes C stdio buffers (stderr is normally unbuffered, but a library may change that).
    _libc = ctypes.CDLL(None)
    _libc.fflush.argtypes = [ctypes.c_void_p]
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _libc = None


def _flush_all() -> None:
    """Push out anything buffered above fd 2, so it goes to the descriptor it was written for."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or broken stream: nothing to flush
            pass
    if _libc is not None:
        _libc.fflush(None)


@contextlib.contextmanager
def quiet_native_stderr(level: int = logging.DEBUG, error_level: int = logging.WARNING) -> Iterator[None]:
    """Capture what native code writes to fd 2 inside the block and log it on ``edge.native``.

    Args:
        level: Logging level for the captured lines (DEBUG: hidden by default, shown with ``-v``).
        error_level: Level used instead when the block raises, so the native explanation of a failure
            (for example a model LiteRT cannot load) is not hidden behind DEBUG.

    fd 2 is restored even when the block raises; the exception then propagates unchanged.
    """
    with _LOCK:
        _flush_all()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (daemonised without stderr): nothing to redirect
            yield
            return
        failed = False
        text = ""
        try:
            with tempfile.TemporaryFile() as capture:
                try:
                    os.dup2(capture.fileno(), 2)
                    try:
                        yield
                    except BaseException:
                        failed = True
                        raise
                    finally:
                        _flush_all()
                        os.dup2(saved, 2)
                finally:
                    os.close(saved)
                    capture.seek(0)
                    text = capture.read().decode("utf-8", errors="replace")
        finally:
            # Also (louder) when the block raised: that is when the native explanation matters most.
            for line in text.splitlines():
                if line.strip():
                    log.log(error_level if failed else level, "%s", line.rstrip())
