"""Georeferenced rasters: tiles of scenes (:mod:`rsdml.geo.tiling`), their index
(:mod:`rsdml.geo.tileindex`), the class map of a tile folder's predictions
(:mod:`rsdml.geo.classmap`) and the map view of the labelling page (:mod:`rsdml.geo.page`)."""
