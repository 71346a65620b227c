"""Wealth maps of places without labels: predictions with conformal intervals as map files
(:mod:`utils.maps.maps`) and the map stage of ``map.ipynb`` (:mod:`utils.maps.stage`)."""
