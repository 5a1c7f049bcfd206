"""``rsdml`` command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rsdml.cli.runs import RUN, run_argument, run_option
from rsdml.config import (
    DEVICES,
    TrainConfig,
    bounds_rule,
    config_values,
    load_yaml,
    option_fields,
)
from rsdml.errors import RsdmlError


class _StderrHandler(logging.Handler):
    """``rsdml: warning: ...`` on whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"rsdml: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # never let a log line break a run
            self.handleError(record)


def _setup_logging() -> None:
    # Records still propagate: the root logger has no handler in the CLI, and tests capture there.
    logger = logging.getLogger("rsdml")
    logger.handlers[:] = [_StderrHandler()]
    logger.setLevel(logging.INFO)


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a TrainConfig field annotation (given as a string)."""
    text = str(annotation)
    if text in ("bool", "bool | None"):
        return bool, True
    for name, t in (("int", int), ("float", float)):
        if text.startswith(name):
            return t, False
    return str, False


def _option(f: Any) -> Callable[[Callable[..., Any]], Any]:
    """The click option for an option field (default None = 'not given on the command line')."""
    ctype, is_flag = _click_type(f.type)
    flag = f.name.replace("_", "-")
    help_text = str(f.metadata.get("help", ""))
    rule = bounds_rule(f, whole=ctype is int)
    if rule:  # the declared bounds, in the words of the error a wrong value gets
        help_text += f" Must be {rule}."
    if f.default is not None and "default:" not in help_text:  # no "[default: None]"
        help_text += f" [default: {f.default}]"
    if is_flag:
        return click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=help_text)
    if f.metadata.get("choices"):
        return click.option(f"--{flag}", f.name, type=click.Choice(f.metadata["choices"]),
                            default=None, help=help_text)
    return click.option(f"--{flag}", f.name, type=ctype, default=None, help=help_text,
                        metavar=f.metadata.get("metavar"))


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add one CLI option per TrainConfig option field."""
    for f in reversed(list(option_fields())):
        func = _option(option_fields()[f])(func)
    return func


def _method_params() -> tuple[type, ...]:
    from rsdml.training.methods.params import param_classes

    return param_classes()


class _TrainCommand(click.Command):
    """``rsdml train``: TrainConfig's options plus those the registered methods declare (read
    from the registry when the command runs, so a method added at run time has its flags)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        declared = [f for name, f in option_fields(_method_params()).items()
                    if name not in TrainConfig.field_names()]
        extra: list[click.Parameter] = []
        for f in declared:
            extra.extend(_option(f)(lambda: None).__click_params__)  # type: ignore[attr-defined]
        # After the TrainConfig options, before --help.
        return [*params[:-1], *extra, params[-1]] if params else extra


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None and k not in ("config_path", "resume")}


#: The commands that run as a group of ranks under torchrun (the others refuse it).
TORCHRUN_COMMANDS = ("train", "evaluate", "embed", "index")
#: The end of the refusal under torchrun: the agent's traceback that comes next is not ours.
TORCHRUN_REPORT_FOLLOWS = "(torchrun's own error report follows)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rsdml")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Semi-supervised deep metric learning for remote-sensing scene images (HR-S2DML)."""
    from rsdml.training.launch import launched_by_torchrun

    if launched_by_torchrun() and ctx.invoked_subcommand not in TORCHRUN_COMMANDS:
        # torchrun's agent then prints its own ChildFailedError traceback (in its process, out
        # of our reach): say so, lest it read as a crash of rsdml's.
        raise RsdmlError(f"rsdml {ctx.invoked_subcommand} runs as one process; run it without "
                         f"torchrun (under torchrun: rsdml {', '.join(TORCHRUN_COMMANDS)}) "
                         f"{TORCHRUN_REPORT_FOLLOWS}")


@cli.command(cls=_TrainCommand)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML file of options (keys as below, '_' for '-'); the command line overrides it.")
@click.option("--resume", type=click.Path(file_okay=False), metavar=RUN,
              help="Continue the interrupted or finished run in this run folder.")
@click.option("--extend", is_flag=True, default=False,
              help="With --resume: accept a new --epochs / --steps; the remaining steps follow "
                   "the schedule of the new budget (recorded in RUN/config_history.jsonl).")
@config_options
def train(config_path: str | None, resume: str | None, extend: bool, **options: Any) -> None:
    """Train a model on an image folder (one sub-folder per class) and evaluate it."""
    from rsdml.training.runner import train as run_train

    given = _given(options)
    params = _method_params()
    # One loader for the file and the flags: keys normalised, values typed, unknown keys refused.
    values = config_values(load_yaml(config_path), config_path, params) if config_path else {}
    values.update(config_values(given, "options", params))
    if resume:
        result = run_train(TrainConfig(), resume=resume, overrides=values, extend=extend)
    else:
        if extend:
            raise RsdmlError("--extend goes with --resume RUN (it changes a run's budget)")
        if values.get("split"):  # a reused split brings its protocol and fractions
            from rsdml.data.split import split_options

            values = {**split_options(values["split"]), **values}
        result = run_train(TrainConfig.from_dict(values, source=config_path or "options",
                                                 params=params))
    _print_summary(result)


def _print_summary(result: dict[str, Any]) -> None:
    if not _is_main():  # under torchrun rank 0 speaks for the run
        return
    keys = ("knn_acc", "macro_f1", "cluster_acc", "nmi", "map_at_20", "map_at_r")
    parts = [f"{k} {result[k]:.4f}" for k in keys if isinstance(result.get(k), (int, float))]
    if not any(k in result for k in keys):  # --labels: no image outside the file has a label
        parts = ["no test labels (trained from --labels); the report shows the predictions "
                 "per class, `rsdml predict` lists them"]
    if isinstance(result.get("copy_top1"), (int, float)):  # needs no labels
        parts.append(f"copy_top1 {result['copy_top1']:.4f}")
    if isinstance(result.get("wall_seconds"), (int, float)):
        parts.append(f"{result['wall_seconds'] / 60:.1f} min")
    step = f", step {result['step']}" if result.get("step") is not None else ""
    partial = " (partial)" if result.get("epoch_is_whole") is False else ""
    click.echo(f"done ({result.get('checkpoint', 'last')} checkpoint, epoch "
               f"{result.get('epoch')}{partial}{step}): " + ", ".join(parts))


@cli.command()
@run_argument()
@click.option("--checkpoint", default="auto", show_default=True,
              help="last, best, auto (best where the protocol has a validation split) or a path.")
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Where the run's data set is now, if it moved (recorded in config.yaml); "
                   "a folder or a downloaded data set's name.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate(run_dir: str, checkpoint: str, device: str | None, data: str | None,
             quiet: bool) -> None:
    """Re-evaluate the checkpoint of run folder RUN: RUN/eval/ (metrics.json, embeddings.npz,
    report.html)."""
    from rsdml.training.runner import evaluate_run

    result = evaluate_run(run_dir, checkpoint=checkpoint, device=device, quiet=quiet, data=data)
    _print_summary(result)
    if _is_main():
        click.echo(f"report: {Path(run_dir) / 'eval' / 'report.html'}")


@cli.command()
@click.argument("data", type=click.Path())
@run_option("Run folder whose model embeds the images.", required=True, torchrun_alias=True)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Output .npz (embeddings, paths).")
@click.option("--checkpoint", default="auto", show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True)
def embed(data: str, run_dir: str, out_file: str, checkpoint: str, device: str | None,
          batch_size: int | None, force: bool, quiet: bool) -> None:
    """Embed every image under DATA (any folder tree) with a trained run's model."""
    from rsdml.training.embed import embed_folder

    n = embed_folder(data, run_dir, out_file, checkpoint=checkpoint, device=device,
                     batch_size=batch_size, quiet=quiet, force=force)
    if _is_main():
        click.echo(f"embedded {n} images -> {out_file}")


@cli.command()
@click.option("--out", default="rsdml-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the synthetic data and the run.")
@click.option("--epochs", type=int, default=None, help="Override the demo's epoch count.")
@click.option("--quiet", is_flag=True)
def demo(out: str, epochs: int | None, quiet: bool) -> None:
    """Train HR-S2DML on a small synthetic scene data set on the CPU (about a minute)."""
    from rsdml.demo import run_demo

    run_demo(Path(out), epochs=epochs, quiet=quiet)


@cli.command(name="list")
def list_registries() -> None:
    """List the available methods and backbones."""
    # the torch-free catalogues (each registry checks at import that they agree with it)
    from rsdml.models.catalogue import BACKBONE_NAMES
    from rsdml.training.methods.params import CATALOGUE

    click.echo("methods:   " + ", ".join(CATALOGUE))
    click.echo("backbones: " + ", ".join(BACKBONE_NAMES))


def _register() -> None:
    from rsdml.cli.cache import cache
    from rsdml.cli.datasets import datasets, split
    from rsdml.cli.experiment import experiment
    from rsdml.cli.label import label, predict, suggest
    from rsdml.cli.search import index, search, serve
    from rsdml.cli.tile import tile
    from rsdml.cli.tune import tune

    cli.add_command(experiment)
    cli.add_command(tune)
    cli.add_command(cache)
    cli.add_command(datasets)
    cli.add_command(split)
    cli.add_command(index)
    cli.add_command(search)
    cli.add_command(serve)
    cli.add_command(suggest)
    cli.add_command(label)
    cli.add_command(predict)
    cli.add_command(tile)


_register()


class _Terminated(BaseException):
    """SIGTERM outside the training loop (the loop itself saves a checkpoint and exits 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def _is_main() -> bool:
    from rsdml.training.distributed import is_main

    return is_main()


#: The commands that run networks over many images: their passes keep freed memory for reuse
#: (rsdml.allocator); the servers and the quick commands keep the system's allocator.
COMPUTE_COMMANDS = frozenset({"train", "experiment", "tune", "evaluate", "embed", "index",
                              "predict", "suggest", "demo", "tile"})


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    _setup_logging()
    if _command(sys.argv[1:] if argv is None else argv) in COMPUTE_COMMANDS:
        from rsdml import allocator

        allocator.enable()
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        cli.main(args=argv, prog_name="rsdml", standalone_mode=False)
    except _Terminated:
        click.echo("rsdml: terminated (SIGTERM) outside the training loop; continue a started "
                   "run with `rsdml train --resume RUN`", err=True)
        sys.exit(143)
    except click.exceptions.Abort:
        click.echo("rsdml: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except RsdmlError as e:
        code = getattr(e, "exit_code", 2)
        if _is_main() or type(e).__name__ != "TrainingInterrupted":  # one line, not one a rank
            # a signal (exit 128 + N) stopped it: that is not an error of the user's
            click.echo(f"rsdml: {e}" if code >= 128 else f"rsdml: error: {e}", err=True)
        sys.exit(code)
    except KeyboardInterrupt:
        click.echo("rsdml: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(0)
