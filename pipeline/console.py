"""Where log records go: a short console for the user, the full record in ``runs/<name>/logs/``.

The console shows what a user reads or acts on: our packages' records at INFO and above (one
line per stage start and end, results, warnings), and the progress bars (tqdm writes to stderr
itself). Everything else, at DEBUG and above, goes to ``logs/distill.log`` of the run: Ray,
Ray Train and Ray Data, transformers' load reports, DeepSpeed's accelerator notices and Python
warnings. Each Ray worker process (label actors, train workers, Ray's helper actors) runs
:func:`setup_worker_logging` when it starts and writes its records to ``logs/worker-<pid>.log``,
so its chatter does not reach the driver's console either.

STYLE.md, "The console": a quick run fits on two screens.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
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
    console = logging.StreamHandler(sys.stderr)
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
