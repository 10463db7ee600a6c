"""Where log records go: a short console for the user, the full record in ``runs/<name>/logs/``.

The console shows what a user reads or acts on: our packages' records at INFO and above (one
line per stage start and end, results, warnings), and the progress bars (tqdm writes to stderr
itself). Everything else, at DEBUG and above, goes to ``logs/distill.log`` of the run: Ray,
Ray Train and Ray Data, transformers' load reports, DeepSpeed's accelerator notices and Python
warnings. Each Ray worker process (label actors, train workers, Ray's helper actors) runs
:func:`setup_worker_logging` when it starts and writes its records to ``logs/worker-<pid>.log``,
so its chatter does not reach the driver's console either. Native code in the driver that writes
to its stderr descriptor (Ray's core worker, gloo, ONNX Runtime) goes to the run's log too
(:func:`native_stderr_to`), and so do two notices Ray forwards from its own processes
(:data:`RAY_FORWARDED_NOISE`) and ExecuTorch's threadpool notes, which its bindings write through
``sys.stderr`` (logged at DEBUG by :func:`compress.backends.runtime_notes_logged`).

STYLE.md, "The console": a quick run fits on two screens.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

CONSOLE_LOGGERS = ("pipeline", "students", "teachers", "compress", "core")
"""Packages whose records at INFO and above reach the console."""

LOG_DIR_ENV = "DISTILL_LOG_DIR"
"""Environment variable that tells Ray worker processes the run's logs folder."""

RUN_LOG_NAME = "distill.log"
"""The driver's log file inside ``runs/<name>/logs/``."""

FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(message)s"

RAY_ENV = {
    # One copy of a line repeated by several workers (Ray's default, stated so that it stays on).
    "RAY_DEDUP_LOGS": "1",
    # Ray Train v2 would otherwise replace the handlers of the root and ray.train loggers of its
    # controller and workers with its own console ones, and prefix every print of a worker.
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
"""Environment of the driver and (inherited) of Ray's processes, set before ``ray.init``."""


RAY_FORWARDED_NOISE = (
    # Ray's core worker, for Ray Data's map actors and Ray Train's PreemptionWatcher: they hold
    # their constructor arguments in the object store (ray issue 53727); nothing for the user to do.
    "has constructor arguments in the object store and max_restarts > 0",
    # the raylet, when Ray Data and Ray Train start more worker processes than this machine has
    # cores (ray issue 3644); they start, only more slowly.
    "PYTHON worker processes have been started on node",
)
"""Lines of Ray's processes that ``log_to_driver`` would print on the console; they go to the run's
log instead (:func:`route_ray_forwarded_noise`). Every other forwarded line, the train progress
bar's included, still reaches the console."""

IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")
"""Loggers that warn while being imported, before any handler is set up: torchao (pulled in by
transformers' quantizers) about CUDA kernels a CPU build lacks, and torch's pytree about enums
that torchao registers. Nothing in them asks the user to act, so they keep ERROR and above only."""


def quiet_import_noise() -> None:
    """Silence :data:`IMPORT_NOISE_LOGGERS` below ERROR; call before importing torch or transformers."""
    for name in IMPORT_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _OurPackages(logging.Filter):
    """Passes records of :data:`CONSOLE_LOGGERS` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in CONSOLE_LOGGERS


def setup_logging(log_dir: Path | None) -> Path | None:
    """Route every log record of this (driver) process: ours to the console, all to the run's log.

    Safe to call more than once (each call replaces the handlers of the last).

    Args:
        log_dir: the run's ``logs/`` folder, created if missing; None keeps only the console
            (for commands that start neither Ray, transformers nor DeepSpeed).

    Returns:
        The log file written, or None without ``log_dir``.
    """
    console = _ConsoleHandler()
    console.setLevel(logging.INFO)
    console.addFilter(_OurPackages())
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    handlers: list[logging.Handler] = [console]
    if log_dir is None:
        _install(handlers, route_third_party=False)
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / RUN_LOG_NAME
    handlers.append(_file_handler(log_file))
    os.environ[LOG_DIR_ENV] = str(log_dir.resolve())
    _install(handlers)
    return log_file


@contextlib.contextmanager
def run_logging(log_dir: Path) -> Iterator[Path]:
    """:func:`setup_logging` for a run, with :func:`native_stderr_to` its log file, for the block.

    On exit the root logger gets back the handlers and level it had (a notebook's, or the
    console of :func:`setup_logging` ``(None)``), the run's own are closed, and :data:`LOG_DIR_ENV`
    is as it was, so that a second run in the process starts from the same state.

    Yields:
        The run's log file, ``log_dir / distill.log``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level, env_log_dir = root.handlers[:], root.level, os.environ.get(LOG_DIR_ENV)
    with native_stderr_to(log_dir / RUN_LOG_NAME):
        try:
            yield setup_logging(log_dir)
        finally:
            for handler in root.handlers[:]:
                root.removeHandler(handler)
                handler.close()
            for handler in handlers:
                root.addHandler(handler)
            root.setLevel(level)
            if env_log_dir is None:
                os.environ.pop(LOG_DIR_ENV, None)
            else:
                os.environ[LOG_DIR_ENV] = env_log_dir


@contextlib.contextmanager
def native_stderr_to(log_file: Path) -> Iterator[None]:
    """Point this process's file descriptor 2 at ``log_file`` (appending) for the block, while
    Python's ``sys.stderr`` (the console records, the progress bars, error lines) keeps writing
    to the terminal through a copy of the original descriptor.

    Native code writes to descriptor 2 below Python's logging: Ray's core worker in the driver
    (its ERROR-level notes about Ray Data's actors), gloo, ONNX Runtime. When ``sys.stderr`` is
    not descriptor 2 (pytest's capture), it is left as it is. Both are restored on exit.
    """
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    if _is_descriptor_2(python_stderr):
        sys.stderr = open(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding,
                          errors="backslashreplace")
    with open(log_file, "ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        if sys.stderr is not python_stderr:
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)


def route_ray_forwarded_noise() -> None:
    """After ``ray.init(log_to_driver=True)``: lines of Ray's processes that match
    :data:`RAY_FORWARDED_NOISE` go to the ``ray.forwarded`` logger (the run's log) instead of the
    console. Wraps the driver's ``ray_print_logs`` handler (Ray 2.60's private stream dispatcher);
    with another Ray that lacks it, nothing changes and the log says so.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        logging.getLogger(__name__).debug("ray: no stream dispatcher; forwarded lines stay on the console")
        return
    with dispatcher._lock:
        dispatcher.handlers = [(name, _ForwardedNoiseFilter(handle)
                                if name == "ray_print_logs" and not isinstance(handle, _ForwardedNoiseFilter)
                                else handle) for name, handle in dispatcher.handlers]


class _ForwardedNoiseFilter:
    """Ray's print handler of forwarded lines, minus :data:`RAY_FORWARDED_NOISE` (logged instead)."""

    def __init__(self, print_lines):
        self.print_lines = print_lines
        self.log = logging.getLogger("ray.forwarded")

    def __call__(self, data: dict) -> None:
        kept = []
        for line in data.get("lines", []):
            if any(noise in line for noise in RAY_FORWARDED_NOISE):
                source = data.get("actor_name") or data.get("task_name") or ""
                self.log.info("(%s pid=%s) %s", source, data.get("pid"), line)
            else:
                kept.append(line)
        if kept:
            self.print_lines({**data, "lines": kept})


class _ConsoleHandler(logging.StreamHandler):
    """The console handler: writes to whatever ``sys.stderr`` is when a record arrives (so that
    :func:`native_stderr_to` can move it), like logging's own last-resort handler."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always sys.stderr


def _is_descriptor_2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and ValueError
        return False


def setup_worker_logging() -> None:
    """Ray's ``worker_process_setup_hook``: this worker's records go to ``logs/worker-<pid>.log``.

    Without :data:`LOG_DIR_ENV` (a worker outside a run) records at WARNING and above go to the
    worker's stderr, which Ray keeps in its session folder.
    """
    quiet_import_noise()
    log_dir = os.environ.get(LOG_DIR_ENV)
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = _file_handler(Path(log_dir) / f"worker-{os.getpid()}.log")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
    _install([handler])
    threading.excepthook = _log_thread_exception  # e.g. Ray Train's placement-group cleaner thread


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a worker's background thread goes to the log, not to the console."""
    logging.getLogger("threading").error("thread %s died", getattr(args.thread, "name", "?"),
                                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def ray_runtime_env() -> dict:
    """The ``runtime_env`` that makes every Ray worker of the run call :func:`setup_worker_logging`."""
    env = dict(RAY_ENV)
    if LOG_DIR_ENV in os.environ:
        env[LOG_DIR_ENV] = os.environ[LOG_DIR_ENV]
    return {"worker_process_setup_hook": f"{__name__}.setup_worker_logging", "env_vars": env}


def _file_handler(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    return handler


def _install(handlers: list[logging.Handler], route_third_party: bool = True) -> None:
    """Make ``handlers`` the root logger's only ones and (unless told not to) send third-party
    loggers through them."""
    os.environ.update(RAY_ENV)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in CONSOLE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    if not route_third_party:
        return
    import ray.data  # noqa: F401  (Ray and Ray Data give their loggers console handlers on import)
    import torch  # noqa: F401  (its loggers exist from here; imports below log through them)

    _route_console_loggers()
    _route_transformers()
    _route_deepspeed()
    _route_datasets()
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        _propagate_only(logging.getLogger(name), logging.INFO)
    _route_console_loggers()


def _route_console_loggers() -> None:
    """Every third-party logger made so far that writes to the console (torch makes dozens, each
    with its own stderr handler) loses that handler and passes its records to the root's."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name.split(".")[0] in CONSOLE_LOGGERS:
            continue
        consoles = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)]
        for handler in consoles:
            logger.removeHandler(handler)
        if consoles:
            logger.propagate = True
            logger.setLevel(max(logger.level, logging.INFO))


def _propagate_only(logger: logging.Logger, level: int) -> None:
    """``logger`` keeps no handler of its own; its records at ``level`` and above reach the root's."""
    for old in logger.handlers[:]:
        logger.removeHandler(old)
    logger.propagate = True
    logger.setLevel(level)


def _route_transformers() -> None:
    """transformers' records (load reports included) to the root handlers, without its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.set_verbosity_info()
    hf_logging.disable_progress_bar()  # "Loading weights" bars of small checkpoints


def _route_datasets() -> None:
    """Hugging Face datasets' records to the root handlers, and no bars for its quick table steps
    ("Generating train split", "Map", "Creating parquet")."""
    import datasets

    _propagate_only(logging.getLogger("datasets"), logging.INFO)
    datasets.disable_progress_bars()


def _route_deepspeed() -> None:
    """DeepSpeed's logger (its own stdout handler, made at import) to the root handlers.

    DeepSpeed logs its accelerator choice while it is imported, before any handler can be
    changed, so the import happens here with stdout captured, and the text goes to the log.
    """
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import deepspeed.utils

    _propagate_only(deepspeed.utils.logger, logging.INFO)
    for line in captured.getvalue().splitlines():
        logging.getLogger("deepspeed.import").info(line)
