"""``rsdml suggest``, ``rsdml label`` and ``rsdml predict``: the labelling loop's commands."""

from __future__ import annotations

import click

from rsdml.cli.runs import run_argument, run_option

DEVICE = click.Choice(["auto", "cpu", "cuda"])


@click.command()
@click.argument("data", type=click.Path())
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="CSV of the suggestions (rank, path, strategy, predicted class, probability).")
@click.option("-n", "--n", "n", type=int, default=50, show_default=True,
              help="How many images to suggest.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
              help="The labels so far (path,class); labelled images are never suggested.")
@run_option("Run folder of a trained run: suggest uncertain and diverse images from its "
            "predictions.")
@click.option("--strategy", type=click.Choice(["auto", "typiclust", "kcentre", "uncertain",
                                               "random"]), default="auto", show_default=True,
              help="auto: uncertain with --run, typiclust without (docs/labelling.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def suggest(data: str, out_file: str, n: int, labels_file: str | None, run_dir: str | None,
            strategy: str, seed: int, device: str, quiet: bool) -> None:
    """Which images under DATA to label next (typical and diverse, or uncertain with --run)."""
    from rsdml.labelling.suggest import suggest_for_folder, write_suggestions

    data_bytes, paths, used = suggest_for_folder(data, n, run=run_dir, labels_file=labels_file,
                                                 strategy=strategy, seed=seed, device=device,
                                                 quiet=quiet)
    write_suggestions(out_file, data_bytes)
    click.echo(f"suggested {len(paths)} image(s) ({used}) -> {out_file}")


@click.command()
@run_argument()
@click.argument("data", type=click.Path())
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="CSV: path, class, probability, knn_agreement, margin; least certain first.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
              help="Labels to predict from (default: the run's labels file, else its split's "
                   "labelled images).")
@click.option("--device", type=DEVICE, default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per embedding batch (default: the run's eval_batch_size, 256); "
                   "memory grows with it.")
@click.option("--map", "map_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="DATA made by `rsdml tile`: also write the class map to this folder (a "
                   "GeoTIFF per scene and tiles.gpkg; docs/maps.md).")
@click.option("--quiet", is_flag=True)
def predict(run_dir: str, data: str, out_file: str, labels_file: str | None, device: str | None,
            batch_size: int | None, map_dir: str | None, quiet: bool) -> None:
    """Predict the class of every unlabelled image under DATA with the run folder RUN."""
    from rsdml.labelling.predict import predict_folder, write_predictions

    if map_dir:
        from rsdml.geo.classmap import check_map_target

        check_map_target(map_dir, data)
    pred = predict_folder(run_dir, data, labels_file=labels_file, device=device, quiet=quiet,
                          batch_size=batch_size)
    write_predictions(out_file, pred)
    cal = pred.calibration
    note = (f"probabilities calibrated on {cal.held_out} labelled images the run did not train "
            f"on (T={cal.temperature:.3g})" if cal.held_out else
            "probabilities not calibrated: every label was used in training (label more "
            "images, then predict again: labels added since training calibrate them)")
    click.echo(f"predicted {len(pred.paths)} image(s), {len(pred.classes)} classes -> {out_file} "
               f"(least certain first); {note}")
    if map_dir:
        from rsdml.geo.classmap import predictions_map

        done = predictions_map(map_dir, data, pred, labels_file=labels_file, run_dir=run_dir)
        click.echo(f"map of {sum(s['tiles'] for s in done['scenes'].values())} tiles -> "
                   f"{map_dir} ({', '.join(f'{n}.tif' for n in done['scenes'])}, tiles.gpkg)")


@click.command()
@click.argument("data", type=click.Path())
@click.option("--labels", "labels_file", required=True, type=click.Path(dir_okay=False),
              help="The labels file to write (path,class); created if missing, every label "
                   "saved at once (a journal beside it survives a killed server).")
@click.option("--suggestions", type=click.Path(dir_okay=False), default=None,
              help="`rsdml suggest` CSV: the order to label in (default: 200 images chosen as "
                   "`rsdml suggest` would).")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="`rsdml predict` CSV: the review view (accept or correct the least certain).")
@run_option("Run folder whose embeddings the search uses (default: the pretrained trunk's).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only (no "
                   "authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="TCP port; 0 picks a free one (printed at start).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
def label(data: str, labels_file: str, suggestions: str | None, predictions: str | None,
          run_dir: str | None, host: str, port: int, device: str, quiet: bool) -> None:
    """A labelling page for the images under DATA, writing --labels FILE.csv."""
    from rsdml.labelling.page import open_session, serve_labelling
    from rsdml.retrieval.web import bind

    def log(line: str) -> None:
        click.echo(line, err=True)

    sock = bind(host, port, backlog=256)  # a busy port fails now, before any work
    try:
        session = open_session(data, labels_file, run=run_dir, suggestions=suggestions,
                               predictions=predictions, device=device, quiet=quiet, log=log)
    except BaseException:
        sock.close()
        raise
    serve_labelling(session, sock=sock, log=log)
