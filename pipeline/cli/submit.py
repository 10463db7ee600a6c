"""Running a distillation on a Ray cluster through the Ray Jobs API (``distill submit``,
``distill status``, ``distill logs``).

A submission uploads the repository (the project code, without runs, W&B files, docs and
caches) as the job's working directory, with the resolved run config staged inside it, and
runs ``python -m pipeline.cli.main run`` there. Ray never reuses a submission id, so the id of a
run's n-th submission is ``distill-<name>-<n>``: a resubmission is attempt n + 1 of the same
run, and it resumes, because the run folder (``output_dir``, on storage the cluster shares)
keeps the finished stages and the runner reuses them by fingerprint.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.artifacts import atomic_write_text
from core.errors import ConfigError, DistillError
from pipeline.config.sections import DATA_DIR_ENV, MultiTaskRunConfig, RunConfig
from pipeline.ray_address import check_dashboard_address

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: the job's working directory on the cluster."""

STAGING_DIR = ".distill-submit"
"""Folder of the repository root where a submission stages its resolved config for the upload."""

UPLOAD_EXCLUDES = ["runs/", "wandb/", "logs/", ".git", "__pycache__", "docs/", ".pytest_cache", "*.egg-info",
                   "build/", "*.onnx", "*.onnx.data", "*.pte", "*.safetensors"]
"""What the upload leaves out (gitignore syntax): run outputs, models, caches and docs."""

ACTIVE = ("PENDING", "RUNNING")
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 2.0
AGENT_WAIT_S = 60.0
"""Seconds a submission waits for the job agent of a head that has just started."""


def submission_id(name: str, attempt: int) -> str:
    """The submission id of a run's ``attempt``-th submission: ``distill-<name>-<attempt>``."""
    return f"distill-{name}-{attempt}"


def attempt_number(name: str, job_id: str | None) -> int | None:
    """The attempt number of submission id ``job_id`` if it belongs to run ``name``, else None
    (``distill-a-1`` belongs to run ``a``, not to run ``a-1``'s ids such as ``distill-a-1-2``)."""
    match = re.fullmatch(rf"distill-{re.escape(name)}-(\d+)", job_id or "")
    return int(match.group(1)) if match else None


def next_attempt(name: str, job_ids: list[str | None]) -> int:
    """1 + the highest attempt of run ``name`` among ``job_ids`` (1 when there is none)."""
    return 1 + max((n for n in (attempt_number(name, j) for j in job_ids) if n is not None), default=0)


def connect(address: str) -> JobSubmissionClient:
    """A Jobs API client of the dashboard at ``address`` (``http://HOST:8265``).

    Raises:
        ConfigError: nothing listens at ``address`` (checked in seconds, before Ray's client,
            which would retry for longer), or the cluster asks for a token (Ray's token
            authentication) that this machine does not send.
    """
    check_dashboard_address(address)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "ray"]:
        logging.getLogger(name).setLevel(logging.ERROR)  # the client's upload notices are not for the console
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ConfigError(f"--address {address}: the cluster requires its authentication token; copy it from the "
                          f"head (`ray get-auth-token`) to ~/.ray/auth_token or $RAY_AUTH_TOKEN and set "
                          f"RAY_AUTH_MODE=token") from None


def attempts(client: JobSubmissionClient, name: str) -> list[JobDetails]:
    """The jobs submitted for run ``name``, oldest attempt first."""
    jobs = [job for job in client.list_jobs() if attempt_number(name, job.submission_id) is not None]
    return sorted(jobs, key=lambda job: attempt_number(name, job.submission_id))


def latest_attempt(client: JobSubmissionClient, name: str, address: str) -> JobDetails:
    """The last job submitted for run ``name``.

    Raises:
        ConfigError: the cluster at ``address`` has no job of that run.
    """
    jobs = attempts(client, name)
    if not jobs:
        raise ConfigError(f"{address}: no job of run {name!r}; submit it with `distill submit CONFIG --address "
                          f"{address}`")
    return jobs[-1]


def stage_config(cfg: RunConfig | MultiTaskRunConfig, root: Path = REPO_ROOT) -> Path:
    """Write the resolved config into ``root/.distill-submit/<name>.yaml`` for the upload; the
    job attaches to its cluster (``ray.address: auto``). A relative ``data.root`` (relative to the
    working directory, the repository root) is written relative to the staged file's folder, which
    it resolves against when the job reads the file (:func:`pipeline.config.loading.load_config`).
    Returns the path relative to ``root``."""
    raw = cfg.model_dump(mode="json")
    raw["ray"] = {"address": "auto", "num_cpus": None}
    data_root = (raw.get("data") or {}).get("root")
    if data_root is not None and not Path(data_root).is_absolute():
        raw["data"]["root"] = os.path.relpath(data_root, STAGING_DIR)
    path = Path(STAGING_DIR) / f"{cfg.name}.yaml"
    (root / STAGING_DIR).mkdir(exist_ok=True)
    atomic_write_text(root / path, yaml.safe_dump(raw, sort_keys=False))
    return path


def runtime_env(data_dir: str | None) -> dict:
    """The job's runtime env: the repository as working directory, and ``$DISTILL_DATA_DIR``
    (the cluster's data folder) when ``data_dir`` is given."""
    env = {"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES}
    if data_dir is not None:
        env["env_vars"] = {DATA_DIR_ENV: data_dir}
    return env


def submit(cfg: RunConfig | MultiTaskRunConfig, address: str, data_dir: str | None = None,
           until: str = "benchmark", gpus: float = 0) -> str:
    """Submit a run to the cluster whose dashboard is ``address``; returns the submission id.

    Args:
        cfg: the validated config; it runs there exactly as resolved here.
        address: the head's dashboard, ``http://HOST:8265``.
        data_dir: the cluster's data folder that relative data paths resolve against
            (``$DISTILL_DATA_DIR`` there); None leaves the cluster's own setting.
        until: the last stage to run.
        gpus: GPUs reserved for the driver (``entrypoint_num_gpus``): the fine-tune stage runs
            in the driver, so on a cluster with a CPU head, 1 places it on a GPU worker.

    Raises:
        ConfigError: ``output_dir`` is relative (it would land in the job's temporary working
            directory, so a resubmission could not resume), the address does not answer, or a
            job of this run is still pending or running.
    """
    if not cfg.output_dir.is_absolute():
        raise ConfigError(f"output_dir {str(cfg.output_dir)!r} is relative; a cluster job needs a folder on storage "
                          f"its nodes share, e.g. --set output_dir=/mnt/shared/runs")
    client = connect(address)
    jobs = attempts(client, cfg.name)
    running = [job.submission_id for job in jobs if job.status in ACTIVE]
    if running:
        raise ConfigError(f"run {cfg.name!r} already has job {running[-1]} {jobs[-1].status}; follow it with "
                          f"`distill logs {cfg.name} --address {address} --follow`")
    staged = stage_config(cfg)
    job = dict(entrypoint=shlex.join(["python", "-m", "pipeline.cli.main", "run", str(staged), "--until", until]),
               submission_id=submission_id(cfg.name, next_attempt(cfg.name, [j.submission_id for j in jobs])),
               runtime_env=runtime_env(data_dir), metadata={"run": cfg.name}, entrypoint_num_gpus=gpus)
    try:
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(**job)
            except RuntimeError as exc:  # a head started seconds ago has no job agent yet
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S)
    finally:  # uploaded by now
        (REPO_ROOT / staged).unlink(missing_ok=True)
        if not any((REPO_ROOT / STAGING_DIR).iterdir()):
            (REPO_ROOT / STAGING_DIR).rmdir()


def wait(client: JobSubmissionClient, job_id: str, poll_s: float = POLL_S) -> JobDetails:
    """Block until job ``job_id`` has finished; returns its final details."""
    while (job := client.get_job_info(job_id)).status not in FINISHED:
        time.sleep(poll_s)
    return job


def status_line(job: JobDetails) -> str:
    """``<id>  <STATUS>  started <time>  ended <time>`` (local times)."""
    def when(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"

    return f"{job.submission_id}  {job.status}  started {when(job.start_time)}  ended {when(job.end_time)}"


def raise_if_failed(client: JobSubmissionClient, job: JobDetails) -> None:
    """Raise for a job that failed or was stopped, naming its message and its last error line.

    Raises:
        DistillError: the job's status is FAILED or STOPPED.
    """
    if job.status not in ("FAILED", "STOPPED"):
        return
    # Ray appends the logs' tail to the message; the last error line below says what matters
    message = (job.message or "no message").splitlines()[0].split(", last available logs")[0]
    lines = [line.strip() for line in client.get_job_logs(job.submission_id).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("distill: error:")]
    errors = [line for line in lines if re.search(r"\w(Error|Exception)\b", line)]
    last = (ours or errors or lines or ["(no log output)"])[-1]
    raise DistillError(f"job {job.submission_id} {job.status}: {message}; last error: {last}")


def print_logs(client: JobSubmissionClient, job_id: str, follow: bool = False) -> None:
    """Print the logs of job ``job_id``; with ``follow``, keep printing until it finishes."""
    if not follow:
        print(client.get_job_logs(job_id), end="")
        return
    import asyncio

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
