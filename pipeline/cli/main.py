"""``distill``: the command line.

    distill run CONFIG [--set key=value ...] [--until STAGE] [--force STAGE ...] [--dry-run]
                  (a CONFIG with a top-level ``tasks`` key trains a multi-task student)
    distill validate CONFIG [--set key=value ...]
    distill show CONFIG [--set key=value ...]
    distill presets
    distill --version
    distill teacher list | install NAME | random --shape bert-large|1.3b --out DIR
    distill submit CONFIG --address http://HOST:8265 [--set key=value ...] [--data-dir DIR] [--until STAGE] [--gpus N] [--wait]
    distill status NAME --address http://HOST:8265
    distill logs NAME --address http://HOST:8265 [--follow]
    distill bench label CONFIG [--rows 4000] [--emit-layers 3,6 | --logits-only] [--engines inference,zero]
                  [--set key=value ...]
    distill bench readback CONFIG [--set key=value ...]
    distill bench latency CONFIG [--set key=value ...]
    distill sweep CONFIG --set-grid train.key=v1,v2,... [--set-grid ...] [--set key=value ...] [--metric NAME]
    distill predict BUNDLE ["text" ...] [--file F] [--artifact NAME] [--check [--dev FILE]]

CONFIG is a preset name (``distill presets`` lists them) or a YAML file. A known error
(bad config, bad data, missing artifact) prints one line and exits with code 2; Ctrl-C prints
one line (for ``run``: the stage interrupted and the command that resumes) and exits with 130.
``distill run`` is a layer over :func:`pipeline.api.run`, the Python API's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import shlex
import sys

from pipeline.observability.console import RUN_LOG_NAME, quiet_import_noise, run_logging, setup_logging

quiet_import_noise()  # before the imports below bring in torch and transformers

from pipeline.config.loading import load_config  # noqa: E402
from pipeline.config.resolved import preset_table, resolved_yaml  # noqa: E402
from pipeline.stages import STAGE_NAMES  # noqa: E402
from core.errors import ConfigError, DistillError  # noqa: E402

DESCRIPTION = ("Distil a fine-tuned transformer teacher into compact students (data, fine-tune, label, train, "
               "evaluate, then optionally prune, export, quantize, benchmark) on Ray, locally or on a cluster.")
"""What ``distill --help`` says the tool does."""
SET_HELP = "override a config field, e.g. --set train.epochs=3 (repeatable)"


def layer_pair(text: str) -> tuple[int, int]:
    """``"3,6"`` -> ``(3, 6)``; argparse reports a ValueError as a usage error."""
    first, second = (int(part) for part in text.split(","))
    return first, second


def config_arguments(sub: argparse.ArgumentParser, config_help: str = "preset name or YAML file",
                     set_help: str = SET_HELP) -> argparse.ArgumentParser:
    """Add the ``CONFIG`` positional and the repeatable ``--set KEY=VALUE`` to a subcommand; returns it."""
    sub.add_argument("config", help=config_help)
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``distill``."""
    parser = argparse.ArgumentParser(prog="distill", description=DESCRIPTION,
                                     epilog="CONFIG is a preset name (distill presets) or a YAML file.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('distill')}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a distillation, reusing finished stages"), ("validate", "check a config"),
                       ("show", "print the resolved config as YAML (bases merged, defaults written out), to "
                                "copy and edit")):
        config_arguments(commands.add_parser(name, help=text))
    submit = config_arguments(commands.add_parser(
        "submit", help="run on a Ray cluster through its Jobs API; a resubmission resumes"),
        "preset name or YAML file; validated here, run there as resolved here")
    submit.add_argument("--data-dir", help="the cluster's data folder for relative data paths ($DISTILL_DATA_DIR there)")
    submit.add_argument("--wait", action="store_true", help="wait for the job; exit 2 if it fails")
    submit.add_argument("--gpus", type=float, default=0,
                        help="GPUs for the driver, which runs the fine-tune stage (1 puts it on a GPU worker)")
    for name, text in (("status", "the latest job of a run"), ("logs", "the logs of a run's latest job")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name", help="the run's name")
    commands.choices["logs"].add_argument("--follow", action="store_true", help="print until the job finishes")
    for name in ("submit", "status", "logs"):
        commands.choices[name].add_argument("--address", required=True, help="the head's dashboard, http://HOST:8265")
    for name in ("run", "submit"):
        commands.choices[name].add_argument(
            "--until", default="benchmark", choices=STAGE_NAMES, metavar="STAGE",
            help=f"last stage to run, one of {', '.join(STAGE_NAMES)} (prune, export, quantize and benchmark run "
                 f"only when the config has their sections; default benchmark)")
    commands.choices["run"].add_argument("--force", action="append", default=[], choices=STAGE_NAMES, metavar="STAGE",
                                         help="redo this stage and the ones after it (repeatable)")
    commands.choices["run"].add_argument("--dry-run", action="store_true",
                                         help="print, per stage, reuse or rerun and why (no manifest yet, a config "
                                              "section or a library version changed, an upstream stage reruns); "
                                              "runs nothing")
    commands.add_parser("presets", help="list the presets shipped with the package, each with what it does")
    teacher = commands.add_parser("teacher", help="teachers by name: list the catalogue, install one offline, "
                                                  "or save a random-initialised one of a named size")
    teacher.add_argument("action", choices=["install", "list", "random"])
    teacher.add_argument("name", nargs="?", help="install: the teacher's name (distill teacher list)")
    teacher.add_argument("--shape", choices=["bert-large", "1.3b"],
                         help="random: BERT-large (24 x 1024, 335M parameters) or 1.3b (24 x 2048, 1.28B)")
    teacher.add_argument("--out", help="random: the folder to write (a teacher.model for an SST-2 config)")
    for size in ("layers", "hidden"):  # tests make a tiny teacher through the command
        teacher.add_argument(f"--{size}", type=int, help=argparse.SUPPRESS)
    predict_parser(commands.add_parser("predict", help="a shipped bundle (runs/NAME/ship/MODEL) on raw texts: label "
                                                      "and probabilities; --check: every artifact against PyTorch"))
    bench_parsers(commands.add_parser("bench", help="measure a stage against a named baseline; prints a table, "
                                                    "writes JSON"))
    sweep = config_arguments(commands.add_parser(
        "sweep", help="grid search over train.* settings on a run's soft labels (Ray Tune); prints a table of dev "
                      "scores, writes sweep/results.json"),
        "preset name or YAML file of a run that has finished its label stage",
        "override a config field for every trial")
    sweep.add_argument("--set-grid", dest="grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="values of one train.* setting to try, e.g. train.loss.temperature=1,2,4 (repeatable: "
                            "every combination is a trial)")
    sweep.add_argument("--metric", default=None, help="dev score to rank by: accuracy (sequence tasks; the default) "
                                                      "or entity_f1 (the default), entity_precision, entity_recall")
    return parser


def predict_parser(predict: argparse.ArgumentParser) -> None:
    """``distill predict``'s arguments (:mod:`pipeline.cli.predict`)."""
    predict.add_argument("bundle", help="a bundle folder, runs/NAME/ship/MODEL")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--file", help="a text file, one text a line")
    predict.add_argument("--artifact", help="the artifact's path in the bundle (bundle.json lists them; default the "
                                            "first, the fastest Pareto pick)")
    predict.add_argument("--check", action="store_true", help="run every artifact on the dev split: agreement with "
                                                              "the PyTorch model (exit 1 under 99.5%%) and tokenizer ids")
    predict.add_argument("--dev", help="--check on this split file (parquet) instead of the run's data/dev")


def bench_parsers(bench: argparse.ArgumentParser) -> None:
    """``distill bench label|readback|latency``, each with the flags it acts on."""
    kinds = bench.add_subparsers(dest="what", required=True, metavar="{label,readback,latency}")
    label = config_arguments(kinds.add_parser(
        "label", help="the label stage against a naive transformers loop: examples/s and bytes of each signal"),
        "preset name or YAML file of a run that has finished its finetune stage (--until finetune)")
    label.add_argument("--rows", type=int, default=4000, help="transfer-set rows to label (default 4000)")
    signals = label.add_mutually_exclusive_group()
    signals.add_argument("--emit-layers", type=layer_pair, default=(3, 6), metavar="A,B",
                         help="two teacher layers whose hidden states and attention maps the third way emits "
                              "(default 3,6)")
    signals.add_argument("--logits-only", action="store_true",
                         help="leave out the third way (a whole split's hidden states take gigabytes)")
    label.add_argument("--engines", type=lambda text: text.split(","), metavar="E1,E2",
                       help="run the label stage once per DeepSpeed engine (inference, zero; zero keeps "
                            "label.offload and label.nvme_path, e.g. --set label.offload=nvme --set "
                            "label.nvme_path=DIR), with each actor's peak RSS beside the teacher's fp32 weights")
    config_arguments(kinds.add_parser(
        "readback", help="memory of streaming the label shards into training batches, a quarter of them "
                         "against all"),
        "preset name or YAML file of a run that has finished its label stage (--until label)")
    config_arguments(kinds.add_parser(
        "latency", help="the benchmark stage's measurement of every variant, against the teacher's best variant"),
        "preset name or YAML file of a run that has finished its quantize stage (--until quantize); the "
        "benchmark section's settings apply")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``distill``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(None)
    with contextlib.ExitStack() as logs:  # a run's log setup, undone when the command ends
        return run_command(args, logs)


def run_command(args: argparse.Namespace, logs: contextlib.ExitStack) -> int:
    """Carry out one parsed command; ``logs`` holds the run's :func:`run_logging` once it has a run."""
    try:
        if args.command == "presets":
            print(preset_table())
            return 0
        if args.command == "teacher":
            return teacher_command(args)
        if args.command == "sweep":
            return run_sweep(args, logs)
        if args.command in ("status", "logs"):
            return follow_job(args)
        if args.command == "predict":
            from pipeline.cli.predict import run_predict

            return run_predict(args)
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            from pipeline.tasks import check_before_stages

            check_before_stages(cfg)  # the rules that read the teacher's config.json or the source runs
            print(f"{args.config}: valid; run directory {cfg.run_dir}")
            return 0
        if args.command == "show":
            print(resolved_yaml(cfg, shlex.join([args.config, *(w for v in args.overrides for w in ("--set", v))])),
                  end="")
            return 0
        if args.command == "submit":
            return submit_job(cfg, args)
        if args.command == "bench":
            return run_bench(cfg, args, logs)
        if args.dry_run:
            return print_dry_run(cfg, args)
        print(f"log: {cfg.run_dir / 'logs' / RUN_LOG_NAME}", file=sys.stderr)  # api.run's run_logging writes it
        from pipeline import api

        result = api.run(cfg, until=args.until, force=tuple(args.force))
        if result.report is not None:  # the report is written with the evaluate stage
            print(f"report: {result.report}")
        return 0
    except DistillError as exc:
        # an error raised in a Ray actor or task arrives wrapped (ray.exceptions.RayTaskError, a
        # subclass of the error's type whose text holds the remote traceback); print the error itself
        cause = getattr(exc, "cause", None)
        print(f"distill: error: {cause if isinstance(cause, DistillError) else exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C; pipeline.runner.StageInterrupted names the stage
        print(interrupted_line(args, getattr(exc, "stage", None)), file=sys.stderr)
        return 130


def run_bench(cfg, args: argparse.Namespace, logs: contextlib.ExitStack) -> int:
    """``distill bench label|readback|latency``: measure, print the table, write ``bench/<what>.json``.

    Raises:
        ConfigError: ``cfg`` is a multi-task run (it has no label stage of its own).
    """
    if not cfg.runs_stage("label"):
        raise ConfigError(f"{args.config}: bench measures a single-task run; give that run's config")
    out_file = cfg.run_dir / "bench" / f"{args.what}.json"
    logs.enter_context(run_logging(cfg.run_dir / "logs"))
    if args.what == "label":
        from pipeline.cli import bench_label as bench

        layers = None if args.logits_only else args.emit_layers
        print(bench.render(bench.bench_label(cfg, args.rows, out_file, layers, args.engines)))
    elif args.what == "readback":
        from pipeline.cli import bench_readback

        print(bench_readback.render(bench_readback.bench_readback(cfg, out_file)))
    else:
        from pipeline.stages import benchmark
        from pipeline.evaluation import report_compress

        print(report_compress.benchmark_table(benchmark.bench_latency(cfg, out_file)))
    print(f"written: {out_file}")
    return 0


def interrupted_line(args: argparse.Namespace, stage: str | None) -> str:
    """The one line Ctrl-C prints: for ``distill run``, the stage interrupted (None: between
    stages), what is kept and the command that resumes (the same run, without ``--force``)."""
    if args.command != "run":
        return "distill: interrupted"
    command = ["distill", "run", args.config, *(word for value in args.overrides for word in ("--set", value)),
               *(["--until", args.until] if args.until != "benchmark" else [])]
    return (f"distill: interrupted{f' during {stage}' if stage else ''}; finished stages, label shards and train "
            f"checkpoints are kept; resume with: {shlex.join(command)}")


def print_dry_run(cfg, args: argparse.Namespace) -> int:
    """``distill run --dry-run``: one line per stage, ``reuse`` or ``rerun: <reasons>``
    (:func:`pipeline.runner.dry_run`); starts no Ray and writes no manifest."""
    from pipeline.runner import dry_run

    for stage, reasons in dry_run(cfg, until=args.until, force=tuple(args.force)):
        print(f"{stage:<9} {'rerun: ' + '; '.join(reasons) if reasons else 'reuse'}")
    return 0


def teacher_command(args: argparse.Namespace) -> int:
    """``distill teacher list`` prints the catalogue and where each teacher is installed;
    ``distill teacher install NAME`` installs one (:func:`teachers.catalog.install`); ``distill teacher
    random`` saves a random-initialised one of a named size (:func:`random_teacher`)."""
    from teachers import catalog

    if args.action == "random":
        return random_teacher(args)
    if args.action == "list":
        for name, entry in catalog.CATALOG.items():
            folder = catalog.teacher_cache() / name
            state = f"installed in {folder}" if (folder / "config.json").is_file() else "not installed"
            print(f"{name}: {entry.description}; {state}")
        return 0
    if not args.name:
        raise ConfigError("distill teacher install needs a name; distill teacher list shows them")
    print(f"{args.name}: installed in {catalog.install(catalog.catalogued(args.name))}")
    return 0


def random_teacher(args: argparse.Namespace) -> int:
    """``distill teacher random --shape S --out DIR`` (:func:`teachers.random_init.save_random_teacher`)."""
    if not args.shape or not args.out:
        raise ConfigError("distill teacher random needs --shape (bert-large or 1.3b) and --out DIR")
    from pathlib import Path

    from teachers.random_init import SHAPES, save_random_teacher

    shape = SHAPES[args.shape].resized(args.layers, args.hidden)
    print(f"{args.shape}: {shape}; written to {save_random_teacher(Path(args.out), shape)}")
    return 0


def run_sweep(args: argparse.Namespace, logs: contextlib.ExitStack) -> int:
    """``distill sweep``: plan and check every trial, then run them (:mod:`pipeline.cli.sweep`); print the table."""
    from pipeline.cli import sweep
    from pipeline.artifacts import RunDir

    trials, metric = sweep.prepare(args.config, args.grid, args.overrides, args.metric)
    cfg = trials[0].cfg
    log_file = logs.enter_context(run_logging(cfg.run_dir / "logs"))
    print(f"log: {log_file}", file=sys.stderr)
    rows = sweep.run_sweep(trials, metric)
    print(sweep.render(rows))
    print(f"written: {RunDir(cfg.run_dir).sweep_results}")
    return 0


def submit_job(cfg, args: argparse.Namespace) -> int:
    """``distill submit``: submit, then (with ``--wait``) follow the job to its end."""
    from pipeline.cli import submit

    job_id = submit.submit(cfg, args.address, args.data_dir, args.until, args.gpus)
    print(f"submitted {job_id}; follow it with `distill logs {cfg.name} --address {args.address} --follow`")
    if args.wait:
        client = submit.connect(args.address)
        job = submit.wait(client, job_id)
        submit.raise_if_failed(client, job)
        print(submit.status_line(job))
    return 0


def follow_job(args: argparse.Namespace) -> int:
    """``distill status`` and ``distill logs`` of a run's latest job."""
    from pipeline.cli import submit

    client = submit.connect(args.address)
    job = submit.latest_attempt(client, args.name, args.address)
    if args.command == "logs":
        submit.print_logs(client, job.submission_id, args.follow)
        return 0
    submit.raise_if_failed(client, job)
    print(submit.status_line(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
