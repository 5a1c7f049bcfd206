"""``rsdml index`` and ``rsdml search``: parse arguments and call rsdml.retrieval."""

from __future__ import annotations

import click

from rsdml.cli.runs import run_option
from rsdml.config import DEVICES
from rsdml.errors import RsdmlError

_KINDS = ["auto", "flat", "hnsw", "ivf", "ivfpq"]


@click.command(name="index")
@click.argument("data", type=click.Path())
@run_option("Run folder whose model embeds the images (required for a new index from a "
            "folder; with --add, defaults to the run the index records).", torchrun_alias=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Index folder to write (index.faiss, vectors.npy, meta.json, model.json).")
@click.option("--add", "add_to", type=click.Path(file_okay=False), default=None,
              help="Extend this index with DATA instead of writing a new one; images it holds "
                   "unchanged are skipped.")
@click.option("--kind", type=click.Choice(_KINDS), default="auto", show_default=True,
              help="faiss index: exact flat, or approximate hnsw/ivf/ivfpq; auto: flat below "
                   "100000 vectors.")
@click.option("--checkpoint", default="auto", show_default=True,
              help="last, best, auto or a path (a new index only).")
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--force", is_flag=True, help="Replace --out if it is an index already.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index(data: str, run_dir: str | None, out: str | None, add_to: str | None, kind: str,
          checkpoint: str, device: str | None, batch_size: int | None, force: bool,
          quiet: bool) -> None:
    """Build a searchable index of DATA, or extend one with --add.

    DATA is an image folder (class sub-folders, if any, give each image its class) or an .npz
    from `rsdml embed`. New index: `rsdml index DATA --run RUN --out INDEX`; extend:
    `rsdml index --add INDEX NEW_DATA`. Embeddings of another model than the index's are
    refused. See docs/retrieval.md.
    """
    from rsdml.retrieval.indexing import add_to_index, build_index
    from rsdml.training.distributed import is_main

    if add_to is not None:
        if out is not None or kind != "auto" or force:
            raise RsdmlError("--add extends an existing index; drop --out/--kind/--force (the "
                             "index keeps its kind)")
        done = add_to_index(add_to, data, run_dir=run_dir, checkpoint=checkpoint,
                            device=device, batch_size=batch_size, quiet=quiet)
        if is_main():  # under torchrun rank 0 speaks
            replaced = f", replaced {done.replaced} changed" if done.replaced else ""
            click.echo(f"added {done.added} images{replaced}, skipped {done.skipped} already "
                       f"indexed -> {add_to} ({len(done.index)} images, {done.index.kind})")
        return
    if out is None:
        raise RsdmlError("--out is required: the index folder to write (or use --add INDEX to "
                         "extend one)")
    idx = build_index(data, out, run_dir=run_dir, kind=kind, checkpoint=checkpoint,
                      device=device, batch_size=batch_size, quiet=quiet, force=force)
    if is_main():
        click.echo(f"indexed {len(idx)} images ({idx.kind}) -> {out}")


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--image", type=click.Path(dir_okay=False), default=None,
              help="Query with this image file (embedded by the index's model).")
@click.option("--id", "image_id", default=None,
              help="Query with an indexed image, by its relative path; it is left out of the "
                   "results.")
@click.option("--k", type=int, default=10, show_default=True, help="Number of results.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@run_option("Where the index's run folder is now, if it moved (--image only).")
@click.option("--device", type=click.Choice(DEVICES), default=None)
def search(index_dir: str, image: str | None, image_id: str | None, k: int, fmt: str,
           run_dir: str | None, device: str | None) -> None:
    """Find the indexed images most similar to --image FILE or --id PATH (cosine similarity)."""
    from rsdml.retrieval.archive import ArchiveIndex
    from rsdml.retrieval.query import format_hits, search_id, search_image

    if (image is None) == (image_id is None):
        raise RsdmlError("give exactly one query: --image FILE or --id PATH")
    idx = ArchiveIndex.open(index_dir)
    if image is not None:
        hits = search_image(index_dir, image, k, run_dir=run_dir, device=device, index=idx)
    else:
        hits = search_id(index_dir, image_id or "", k, index=idx)
    click.echo(format_hits(hits, fmt, query=image or image_id or ""))


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only (the service "
                   "has no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port; 0 picks a free one (printed at start).")
@run_option("Where the index's run folder is now, if it moved.")
@click.option("--device", type=click.Choice(DEVICES), default=None)
@click.option("--workers", type=int, default=2, show_default=True,
              help="Requests computed at once.")
@click.option("--queue", type=int, default=16, show_default=True,
              help="Requests that may wait for a worker; more are answered 503.")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True,
              help="Largest accepted upload (413 above).")
@click.option("--max-pixels", type=int, default=50_000_000, show_default=True,
              help="Largest image (width x height) decoded; a decompression-bomb guard.")
@click.option("--max-decoded-mb", type=float, default=256.0, show_default=True,
              help="Largest decoded image (height x width x bands x bytes per sample); a "
                   "multi-band decompression-bomb guard.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="A further Host name the service answers (repeatable), e.g. the name a "
                   "reverse proxy forwards; others get 400 (DNS-rebinding guard).")
@click.option("--images", multiple=True, type=click.Path(file_okay=False), metavar="FOLDER",
              help="An image folder of the index whose thumbnails may be shown (repeatable); "
                   "folders you indexed on this machine are shown without it.")
def serve(index_dir: str, host: str, port: int, run_dir: str | None, device: str | None,
          workers: int, queue: int, max_upload_mb: float, max_pixels: int,
          max_decoded_mb: float, allow_hosts: tuple[str, ...], images: tuple[str, ...]) -> None:
    """Serve INDEX over HTTP: a search page at / and a JSON API under /api.

    Search by uploading an image or by clicking a result, mark results relevant or not and
    re-rank (Rocchio), filter by class, export the marked images as CSV. Build INDEX with
    `rsdml index`. See docs/retrieval.md for the endpoints and limits.
    """
    from rsdml.retrieval.server import Limits
    from rsdml.retrieval.server import serve as run_server

    for flag, mb in (("--max-upload-mb", max_upload_mb), ("--max-decoded-mb", max_decoded_mb)):
        if mb <= 0:
            raise RsdmlError(f"{flag} {mb} must be above 0")
    limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                    max_decoded_bytes=int(max_decoded_mb * 1024 * 1024),
                    workers=workers, queue=queue)
    run_server(index_dir, host=host, port=port, limits=limits, run_dir=run_dir, device=device,
               allow_hosts=allow_hosts, images=images,
               log=lambda line: click.echo(line, err=True))
