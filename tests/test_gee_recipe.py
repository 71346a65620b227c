"""The Earth Engine recipe and export tasks, built and serialised offline
(``ee.apitestcase``); assertions on the serialised expression graphs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ee
import pytest
from gee_fakes import calls, offline_ee

from extract_GPS_images import gee_recipe as recipe
from extract_GPS_images import schema
from extract_GPS_images.gee_download import Location, pixels_request
from extract_GPS_images.gee_export import ExportConfig, export_task, task_description
from extract_GPS_images.schema import META_BANDS, s2_channel_names

LOC = Location(
    cell_key="c0123456789abcdef",
    cell_id="POLYGON ((1 2, 3 4))",
    year=2014,
    imagery_year=2016,
    lat=21.0285,
    lon=105.8542,
    label=1.75,
)


@pytest.fixture(autouse=True)
def _ee():
    with offline_ee():
        yield


def graph(obj: Any) -> dict:
    """The expression as Earth Engine's Cloud API JSON, without value references."""
    return ee.serializer.encode(obj, is_compound=False, for_cloud_api=True)


def const(arg: dict) -> Any:
    return arg["constantValue"]


def image_graph(config: recipe.RecipeConfig | None = None) -> dict:
    return graph(
        recipe.location_image(
            lat=LOC.lat,
            lon=LOC.lon,
            label=LOC.label,
            year=LOC.year,
            imagery_year=LOC.imagery_year,
            config=config or recipe.RecipeConfig(),
        )
    )


def loaded_collections(g: dict) -> set[str]:
    return {const(a["id"]) for a in calls(g, "ImageCollection.load")}


def date_ranges(g: dict) -> set[tuple[str, str]]:
    return {(const(a["start"]), const(a["end"])) for a in calls(g, "DateRange")}


def test_default_collections_bands_and_scaling():
    g = image_graph()
    # Cloud Score+ is linked to the Sentinel-2 scenes and scores them by default.
    assert loaded_collections(g) == {recipe.S2_L1C, recipe.CLOUD_SCORE_PLUS, recipe.DYNAMIC_WORLD}
    links = list(calls(g, "Image.linkCollection"))
    assert links and all(const(a["linkedBands"]) == ["cs_cdf"] for a in links)
    selections = [a["bandSelectors"] for a in calls(g, "Image.select") if "bandSelectors" in a]
    assert any(const(s) == ["B2", "B3", "B4", "B8", "B11", "B12"] for s in selections)
    assert ["cs_cdf"] in [const(s) for s in selections if "constantValue" in s]
    assert "0.6" in json.dumps(list(calls(g, "Image.gte")))
    assert not list(calls(g, "Image.bitwiseAnd"))  # no QA60
    divisors = [a["image2"] for a in calls(g, "Image.divide")]
    assert any("10000" in json.dumps(d) for d in divisors)
    # Clear pixels are scored in a buffer of half the patch (3375 m).
    assert {const(a["distance"]) for a in calls(g, "Geometry.buffer")} == {3375.0}


def test_qa60_option_and_its_gap_years():
    g = image_graph(recipe.RecipeConfig(cloud_method="qa60"))  # imagery 2016: no gap
    selections = [
        const(a["bandSelectors"])
        for a in calls(g, "Image.select")
        if "constantValue" in a.get("bandSelectors", {})
    ]
    assert ["QA60"] in selections and not list(calls(g, "Image.linkCollection"))
    assert "3072" in json.dumps(list(calls(g, "Image.bitwiseAnd")))
    for year in (2022, 2023, 2024):
        with pytest.raises(ValueError, match="QA60 band .* is masked from 2022-02-01"):
            recipe.location_image(
                lat=1.0,
                lon=2.0,
                label=1.0,
                year=year,
                imagery_year=year,
                config=recipe.RecipeConfig(cloud_method="qa60"),
            )
    with pytest.warns(UserWarning, match="QA60 GAP"):
        recipe.location_image(
            lat=1.0,
            lon=2.0,
            label=1.0,
            year=2023,
            imagery_year=2023,
            config=recipe.RecipeConfig(cloud_method="qa60", qa60_gap="warn"),
        )
    # Cloud Score+ has no such gap; QA60 outside it neither refuses nor warns.
    for config, year in (
        (recipe.RecipeConfig(), 2023),
        (recipe.RecipeConfig(cloud_method="qa60"), 2021),
    ):
        recipe.check_cloud_method(config, year)


def test_valid_masks_clear_shares_and_dw_nodata_in_the_graph():
    config = recipe.RecipeConfig()
    g = image_graph(config)
    renames = [const(a["names"]) for a in calls(g, "Image.rename") if "constantValue" in a["names"]]
    for name in (*config.valid_names, *config.clear_names):
        assert [name] in renames, name
    assert config.valid_names == ["valid_q1", "valid_q2", "valid_q3", "valid_q4", "valid_DW"]
    # Masks come from the chosen scenes' masks (all bands present), DW nodata is 255.
    assert len(list(calls(g, "Image.mask"))) >= 5
    assert list(calls(g, "Reducer.min"))
    unmask_values = [json.dumps(a["value"]) for a in calls(g, "Image.unmask") if "value" in a]
    assert any(str(schema.DW_NODATA) in v for v in unmask_values)
    # The clear share is the scored fraction, set on each scene; 0 for the empty image.
    sets = json.dumps(list(calls(g, "Element.set")))
    assert '"clear_share"' in sets
    params = pixels_request(LOC, config)
    final = const(
        graph(params["expression"])["functionInvocationValue"]["arguments"]["bandSelectors"]
    )
    assert final == config.record_bands


def test_night_lights_option():
    for kind, collection, band in (
        ("annual", recipe.VIIRS_ANNUAL, "average"),
        ("monthly", recipe.VIIRS_MONTHLY, "avg_rad"),
    ):
        config = recipe.RecipeConfig(night_lights=kind)
        g = image_graph(config)
        assert collection in loaded_collections(g)
        assert [band] in [
            const(a["bandSelectors"])
            for a in calls(g, "Image.select")
            if "constantValue" in a.get("bandSelectors", {})
        ]
        assert config.channel_names[-2:] == ["DW", "NL"] and "valid_NL" in config.valid_names
        assert ("2016-01-01", "2017-01-01") in date_ranges(g)
        means = list(calls(g, "reduce.mean"))  # the mean over the year's composites
        assert means and all(collection in json.dumps(m) for m in means)
    assert recipe.VIIRS_ANNUAL not in loaded_collections(image_graph())
    assert "NL" not in recipe.RecipeConfig().channel_names


def test_quarter_month_and_year_date_filters():
    g = image_graph()
    imagery = LOC.imagery_year  # label year 2014 -> 2016 imagery
    quarters = {
        ("2016-01-01", "2016-04-01"),
        ("2016-04-01", "2016-07-01"),
        ("2016-07-01", "2016-10-01"),
        ("2016-10-01", "2017-01-01"),
    }
    year = (f"{imagery}-01-01", f"{imagery + 1}-01-01")
    assert date_ranges(g) == quarters | {year}
    months = date_ranges(image_graph(recipe.RecipeConfig(periods="month")))
    assert len(months - {year}) == 12 and (f"{imagery}-12-01", f"{imagery + 1}-01-01") in months
    assert date_ranges(image_graph(recipe.RecipeConfig(periods="year"))) == {year}


def test_fallback_is_decided_on_the_server():
    g = image_graph()
    # Per quarter: in-period scenes, the year's least-cloudy scene and an empty image,
    # merged and ranked; no client-side size() round trip.
    assert len(list(calls(g, "ImageCollection.merge"))) >= 2 * 4
    sets = json.dumps(list(calls(g, "Element.set")))
    assert '"s2_source"' in sets and '"rank"' in sets
    # Year candidates come after any in-period scene, the empty image last.
    offsets = {const(a["right"]) for a in calls(g, "Number.add") if "constantValue" in a["right"]}
    assert recipe._YEAR_RANK_OFFSET in offsets
    # The per-quarter sources are packed 2 bits per quarter into the s2_fallback band.
    factors = {
        const(a["right"]) for a in calls(g, "Number.multiply") if "constantValue" in a["right"]
    }
    assert {1, 4, 16, 64} <= factors
    assert not list(calls(g, "Algorithms.If"))


def test_dynamic_world_mode_and_median():
    g = image_graph()
    assert list(calls(g, "Reducer.mode")) and not list(calls(g, "Reducer.median"))
    assert list(calls(image_graph(recipe.RecipeConfig(dw_reducer="median")), "Reducer.median"))


def test_metadata_bands_are_constants_of_the_location():
    g = image_graph()
    constants = [
        const(a["value"]) for a in calls(g, "Image.constant") if "constantValue" in a["value"]
    ]
    assert [LOC.label, LOC.lat, LOC.lon, 2014.0, 2016.0] in constants
    renames = [const(a["names"]) for a in calls(g, "Image.rename") if "constantValue" in a["names"]]
    assert list(META_BANDS) in renames
    assert ["DW"] in renames


def test_download_request_grid_and_band_order():
    params = pixels_request(LOC, recipe.RecipeConfig())
    assert params["fileFormat"] == "NPY"  # .npy bytes, read without a copy (read_npy)
    grid = params["grid"]
    assert grid["dimensions"] == {"width": 225, "height": 225}
    assert grid["affineTransform"] == {
        "scaleX": 30.0,
        "shearX": 0.0,
        "translateX": -3375.0,
        "shearY": 0.0,
        "scaleY": -30.0,
        "translateY": 3375.0,
    }
    assert "21.02850000" in grid["crsWkt"] and "105.85420000" in grid["crsWkt"]
    g = graph(params["expression"])
    final = const(g["functionInvocationValue"]["arguments"]["bandSelectors"])
    assert final == [
        *s2_channel_names(),
        "DW",
        "valid_q1",
        "valid_q2",
        "valid_q3",
        "valid_q4",
        "valid_DW",
        "clear_q1",
        "clear_q2",
        "clear_q3",
        "clear_q4",
        "s2_fallback",
    ]
    assert final[:7] == ["B2_q1", "B3_q1", "B4_q1", "B8_q1", "B11_q1", "B12_q1", "B2_q2"]


def test_export_task_parameters_drive_and_cloud_storage():
    task = export_task(
        location=LOC,
        recipe=recipe.RecipeConfig(size=64, scale=10),
        config=ExportConfig(folder="myfolder"),
    )
    config = task.config
    assert config["description"] == "c0123456789abcdef_2014"
    options = config["fileExportOptions"]
    assert options["fileFormat"] == "TF_RECORD_IMAGE"
    assert options["driveDestination"] == {
        "folder": "myfolder",
        "filenamePrefix": "c0123456789abcdef_2014",
    }
    assert options["tfRecordOptions"] == {
        "tileDimensions": {"width": 64, "height": 64},
        "compress": True,
    }
    # The pixel grid is folded into the expression: fixed projection, 64 x 64 patch.
    g = graph(config["expression"])
    clip = next(calls(g, "Image.clipToBoundsAndScale"))
    assert "[0, 0, 64, 64]" in json.dumps(clip["geometry"])
    reproject = next(calls(g, "Image.reproject"))
    assert const(reproject["crsTransform"]) == [10.0, 0.0, -320.0, 0.0, -10.0, 320.0]
    assert "Transverse_Mercator" in json.dumps(reproject["crs"])

    gcs = export_task(
        location=LOC,
        recipe=recipe.RecipeConfig(),
        config=ExportConfig(destination="gcs", bucket="bkt", prefix="run1/"),
    )
    dest = gcs.config["fileExportOptions"]["cloudStorageDestination"]
    assert dest == {"bucket": "bkt", "filenamePrefix": "run1/c0123456789abcdef_2014"}
    assert gcs.config["description"] == "run1_c0123456789abcdef_2014"
    assert gcs.state == ee.batch.Task.State.UNSUBMITTED  # built, never started


def test_bad_export_settings_are_named():
    with pytest.raises(ValueError, match="100"):
        task_description(cell_key="x" * 101, year=2019)
    with pytest.raises(ValueError, match="bucket"):
        ExportConfig(destination="gcs")
    with pytest.raises(ValueError, match="cloud_method must be one of"):
        recipe.RecipeConfig(cloud_method="s2cloudless")


def test_period_ranges_and_fallback_codes():
    assert recipe.period_ranges(year=2019)[1] == ("q2", "2019-04-01", "2019-07-01")
    code = recipe.SOURCE_YEAR * 4 + recipe.SOURCE_NONE * 4**3
    assert recipe.decode_fallback(code, recipe.PERIODS["quarter"]) == {
        "q1": "period",
        "q2": "year",
        "q3": "period",
        "q4": "none",
    }
    assert recipe.fallback_summary(code, recipe.PERIODS["quarter"]) == "q2:year;q4:none"
    assert recipe.fallback_summary(0, recipe.PERIODS["quarter"]) == ""


def definitions(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if (
            "functionDefinitionValue" in node
            and "point" in node["functionDefinitionValue"]["argumentNames"]
        ):
            yield node["functionDefinitionValue"]
        for value in node.values():
            yield from definitions(value)
    elif isinstance(node, list):
        for value in node:
            yield from definitions(value)


def test_recipe_is_one_function_per_imagery_year_called_per_location():
    config = recipe.RecipeConfig()
    assert recipe.recipe_function(config, 2019) is recipe.recipe_function(config, 2019)
    one, two = (
        graph(
            recipe.location_image(
                lat=lat, lon=lon, label=1.0, year=2019, imagery_year=2019, config=config
            )
        )
        for lat, lon in ((10.0, 100.0), (-5.5, 30.25))
    )
    assert list(definitions(one)) == list(definitions(two)) and len(list(definitions(one))) == 1
    points = [
        const(a["coordinates"]) for g in (one, two) for a in calls(g, "GeometryConstructors.Point")
    ]
    assert points == [[100.0, 10.0], [30.25, -5.5]]
