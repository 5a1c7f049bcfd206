"""``rsdml tile``: georeferenced scenes to a folder of tiles (the rest of rsdml's input)."""

from __future__ import annotations

import click


@click.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="SCENES...")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="TILES",
              help="The tile folder to make: TILES/SCENE/rRRR_cCCC.tif and TILES/tiles.json.")
@click.option("--size", type=int, default=256, show_default=True, help="Tile side in pixels.")
@click.option("--stride", type=int, default=None,
              help="Pixels between tile origins (default: --size, tiles side by side; smaller "
                   "overlaps them).")
@click.option("--min-valid", type=float, default=0.5, show_default=True,
              help="Skip tiles with less than this share of pixels inside the scene and not "
                   "nodata.")
@click.option("--compress", type=click.Choice(["deflate", "none"]), default="deflate",
              show_default=True,
              help="Tile files: deflate (lossless, smaller) or none (larger, about 3x faster to "
                   "write and read; docs/maps.md).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tile(scenes: tuple[str, ...], out_dir: str, size: int, stride: int | None, min_valid: float,
         compress: str, force: bool, quiet: bool) -> None:
    """Cut the rasters SCENES (GeoTIFF or anything GDAL reads; one CRS) into georeferenced
    tiles that every command here reads as an image folder (docs/maps.md)."""
    from rsdml.geo.tiling import tile_scenes

    index = tile_scenes(scenes, out_dir, size=size, stride=stride, min_valid=min_valid,
                        compress=compress, force=force, quiet=quiet)
    grids = ", ".join(f"{s.name} {s.rows} x {s.cols}" for s in index.scenes)
    click.echo(f"tiled {len(index.scenes)} scene(s) into {len(index.tiles)} tiles of {size} px "
               f"({grids} grid) -> {out_dir}")
