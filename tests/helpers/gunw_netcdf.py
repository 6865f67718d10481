"""Replicas of ARIA Sentinel-1 GUNW products (netCDF-4) for tests and benchmarks.

No real GUNW file is small enough to ship (each is 4 MiB to 150 MB; see
../shared/data/SOURCES.md), so the tests read replicas written here from the product's
published specification: ARIA's packaging template and writer in DockerizedTopsApp
(``isce2_topsapp/templates/nc_packaging_template*.json``, ``packaging_utils/nc_packaging.py``)
and a real product's layout. What is the same as in a real product:

* groups ``/science/grids/data``, ``/science/grids/imagingGeometry``,
  ``/science/grids/corrections``, ``/science/radarMetaData/inputSLC/{reference,secondary}``;
* layers ``unwrappedPhase`` (rad), ``coherence``, ``connectedComponents``, ``amplitude``
  (watt): float32 on ``(latitude, longitude)``, gzip-compressed, with ``_FillValue``
  0 / 0 / -1 / 0, ``description``, ``units``, ``long_name``, ``standard_name`` and
  ``grid_mapping = "crs"``;
* 1-D float64 ``latitude`` (decreasing) and ``longitude`` coordinates of pixel centres at
  3 arcsec, with ``_CoordinateAxisType``, ``units``, ``long_name``, ``standard_name``;
* the grid mapping variable ``crs`` (int32) with ``grid_mapping_name = latitude_longitude``,
  the WGS84 ellipsoid and ``crs_wkt``;
* the 3-D metadata cubes (``perpendicularBaseline`` and friends) on
  ``(heightsMeta, latitudeMeta, longitudeMeta)`` with their own ``crsMeta``;
* radar metadata strings on the unlimited ``matchup`` dimension, the input SLC names;
* ``productBoundingBox`` at the root: the footprint WKT as a char array
  ``(wkt_count, wkt_length)`` with ``crs_polygon`` and the ``ogr_*`` global attributes.

What differs: the arrays are small (a few hundred pixels a side) and their values are smooth
synthetic fields (so bilinear warps are testable and the files compress); inside the raster,
pixels outside the footprint polygon hold the fill values, as in real products. The files
are written with h5netcdf (netCDF-4 is HDF5), which is what this environment has.

Run as a script to write products for the demo AOI: ``python tests/helpers/gunw_netcdf.py DIR``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5netcdf
import h5py
import numpy as np
import shapely
from shapely.geometry import Polygon

ARCSEC3 = 1.0 / 1200.0  # 3 arc seconds in degrees: the GUNW posting
FILL = {"unwrappedPhase": 0.0, "coherence": 0.0, "connectedComponents": -1.0, "amplitude": 0.0}
UNITS = {
    "unwrappedPhase": "rad",
    "coherence": "unitless",
    "connectedComponents": "unitless",
    "amplitude": "watt",
}
DESCRIPTIONS = {
    "unwrappedPhase": "Unwrapped phase",
    "coherence": "Coherence",
    "connectedComponents": "Snaphu connected components",
    "amplitude": "Amplitude",
}
WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
    'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],'
    'AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]'
)


@dataclass(frozen=True)
class ProductSpec:
    """One replica product: the pair, the acquisition geometry and the raster's extent."""

    reference: dt.date  # the later acquisition (ARIA's convention)
    secondary: dt.date
    track: int
    direction: str  # "A" or "D"
    west: float  # raster extent in degrees, snapped to the 3 arcsec grid when written
    south: float
    east: float
    north: float
    version: str = "3_0_1"
    frame: int = 5289
    seed: int = 0
    inset_x: float = 0.1  # fraction of the extent left as fill around the footprint quad
    inset_y: float = 0.1  # (0: the footprint reaches the raster's edge, as where frames meet)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        """The ARIA file name pattern (without ``.nc``): direction, track, dates, time, place."""
        lon = round(abs(self.west) * 100)
        lat = round(abs(self.south) * 100)
        place = (
            f"{lon:05d}{'W' if self.west < 0 else 'E'}_{lat:05d}{'S' if self.south < 0 else 'N'}"
        )
        digest = hashlib.sha1(f"{self}".encode()).hexdigest()[:4]
        dates = f"{self.reference:%Y%m%d}_{self.secondary:%Y%m%d}"
        return (
            f"S1-GUNW-{self.direction}-R-{self.track:03d}-tops-{dates}-020815-{place}-PP-"
            f"{digest}-v{self.version}"
        )

    @property
    def file_name(self) -> str:
        return f"{self.name}.nc"

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre longitudes (increasing) and latitudes (decreasing), 3 arcsec apart."""
        west = np.floor(self.west / ARCSEC3) * ARCSEC3
        north = np.ceil(self.north / ARCSEC3) * ARCSEC3
        width = round((self.east - west) / ARCSEC3)
        height = round((north - self.south) / ARCSEC3)
        lons = west + (np.arange(width) + 0.5) * ARCSEC3
        lats = north - (np.arange(height) + 0.5) * ARCSEC3
        return lons, lats

    def footprint(self) -> Polygon:
        """A skewed quad inside the extent, like a radar frame's outline in lon/lat."""
        dx = (self.east - self.west) * self.inset_x
        dy = (self.north - self.south) * self.inset_y
        return Polygon(
            [
                (self.west + 2 * dx, self.south + dy),
                (self.east - dx, self.south + 2 * dy),
                (self.east - 2 * dx, self.north - dy),
                (self.west + dx, self.north - 2 * dy),
                (self.west + 2 * dx, self.south + dy),
            ]
        )

    def layers(self) -> dict[str, np.ndarray]:
        """The four layers: smooth fields inside the footprint, fill values outside it."""
        lons, lats = self.grid()
        lon2, lat2 = np.meshgrid(lons, lats)
        rng = np.random.default_rng(self.seed)
        phase0, freq = rng.uniform(0, 2 * np.pi), rng.uniform(20, 60)
        fields = {
            "unwrappedPhase": 8.0 * np.sin(freq * lon2 + phase0) + 3.0 * np.cos(freq * lat2) + 20.0,
            "coherence": 0.55 + 0.4 * np.sin(freq * (lon2 + lat2) + phase0),
            "connectedComponents": np.floor((lon2 - lons[0]) / (lons[-1] - lons[0] + 1e-9) * 4),
            "amplitude": 2000.0 + 800.0 * np.cos(freq * lat2 - phase0) * np.sin(freq * lon2),
        }
        inside = shapely.contains_xy(self.footprint(), lon2, lat2)
        return {
            name: np.where(inside, values, FILL[name]).astype("float32")
            for name, values in fields.items()
        }


def _strings(group: h5netcdf.Group, name: str, values: list[str], description: str) -> None:
    variable = group.create_variable(name, ("matchup",), dtype=h5py.string_dtype(), chunks=(16,))
    variable[:] = np.array(values, dtype=object)
    variable.attrs["description"] = description
    variable.attrs["long_name"] = name
    variable.attrs["standard_name"] = name


def write_product(spec: ProductSpec, folder: Path) -> Path:
    """Write ``spec`` as ``folder/<name>.nc``; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.file_name
    lons, lats = spec.grid()
    footprint = spec.footprint()
    with h5netcdf.File(path, "w") as nc:
        nc.attrs.update(
            {
                "product_type": "UNW GEO IFG",
                "Conventions": "CF-1.6",
                "title": "ARIA standard product UNW GEO IFG",
                "version": "1b",
                "author": "replica written by m3leo-tiles tests (tests/helpers/gunw_netcdf.py)",
                "institution": "Jet Propulsion Laboratory",
                "source": "Contains modified Copernicus Sentinel data processed by ESA and ARIA "
                "NASA/JPL (layout only: synthetic values)",
                "references": "https://aria.jpl.nasa.gov/",
                "ogr_geometry_field": "productBoundingBox",
                "ogr_layer_name": "productBoundingBox",
                "ogr_layer_type": "POLYGON",
            }
        )
        nc.dimensions["matchup"] = None  # unlimited, as ARIA's writer makes it
        nc.resize_dimension("matchup", 1)  # each metadata string variable holds one value
        wkt = footprint.wkt
        nc.dimensions["wkt_length"] = len(wkt)
        nc.dimensions["wkt_count"] = 1
        box_var = nc.create_variable("productBoundingBox", ("wkt_count", "wkt_length"), "S1")
        box_var[0, :] = np.frombuffer(wkt.encode("ascii"), dtype="S1")
        box_var.attrs.update(
            {
                "description": "Product bounding box defined as ISO WKT polygon",
                "units": "unitless",
                "grid_mapping": "crs_polygon",
                "long_name": "productBoundingBox",
                "standard_name": "productBoundingBox",
            }
        )
        polygon_crs = nc.create_variable("crs_polygon", (), "i4")
        polygon_crs.attrs.update(
            {"spatial_ref": WGS84_WKT, "long_name": "crs_polygon", "standard_name": "crs_polygon"}
        )

        science = nc.create_group("science")
        grids = science.create_group("grids")
        data = grids.create_group("data")
        _crs(data, "crs")
        data.dimensions["latitude"] = len(lats)
        data.dimensions["longitude"] = len(lons)
        _coordinate(data, "longitude", lons, "Lon", "degrees_east")
        _coordinate(data, "latitude", lats, "Lat", "degrees_north")
        for name, values in spec.layers().items():
            variable = data.create_variable(
                name,
                ("latitude", "longitude"),
                "f4",
                data=values,
                fillvalue=np.float32(FILL[name]),
                compression="gzip",
                chunks=(min(128, len(lats)), min(128, len(lons))),
            )
            variable.attrs.update(
                {
                    "description": DESCRIPTIONS[name],
                    "units": UNITS[name],
                    "grid_mapping": "crs",
                    "long_name": name,
                    "standard_name": name,
                }
            )

        geometry = grids.create_group("imagingGeometry")
        _crs(geometry, "crsMeta")
        cube_lons = np.linspace(lons[0], lons[-1], 5)
        cube_lats = np.linspace(lats[0], lats[-1], 5)
        heights = np.array([-1500.0, 0.0, 3000.0, 9000.0])
        geometry.dimensions.update({"heightsMeta": 4, "latitudeMeta": 5, "longitudeMeta": 5})
        _coordinate(geometry, "longitudeMeta", cube_lons, "Lon", "degrees_east")
        _coordinate(geometry, "latitudeMeta", cube_lats, "Lat", "degrees_north")
        _coordinate(geometry, "heightsMeta", heights, "Lev", "meter")
        cube = np.linspace(30.0, 45.0, 100).reshape(4, 5, 5)
        for name, units, scale in (
            ("perpendicularBaseline", "meter", 3.0),
            ("parallelBaseline", "meter", 1.0),
            ("incidenceAngle", "degrees", 1.0),
            ("lookAngle", "degrees", 0.9),
            ("azimuthAngle", "degrees", -2.0),
        ):
            variable = geometry.create_variable(
                name,
                ("heightsMeta", "latitudeMeta", "longitudeMeta"),
                "f8",
                data=cube * scale,
                fillvalue=0.0,
                compression="gzip",
            )
            variable.attrs.update(
                {
                    "description": name,
                    "units": units,
                    "grid_mapping": "crsMeta",
                    "long_name": name,
                    "standard_name": name,
                }
            )
        corrections = grids.create_group("corrections")
        corrections.create_group("derived").create_group("ionosphere")
        external = corrections.create_group("external")
        external.create_group("troposphere")
        external.create_group("tides")

        radar = science.create_group("radarMetaData")
        _strings(radar, "missionID", ["Sentinel-1"], "Sentinel-1")
        _strings(radar, "productType", ["UNW GEO IFG"], "UNW GEO IFG")
        _strings(radar, "unwrapMethod", ["snaphu_mcf"], "Method used to unwrap IFG product")
        wavelength = radar.create_variable("wavelength", (), "f8", data=0.05546576)
        wavelength.attrs.update({"description": "Radar wavelength", "units": "meter"})
        slc = radar.create_group("inputSLC")
        for role, day in (("reference", spec.reference), ("secondary", spec.secondary)):
            scene = (
                f"S1A_IW_SLC__1SDV_{day:%Y%m%d}T020749_{day:%Y%m%d}T020816_"
                f"0{spec.track:05d}_06BB8A_0FCC"
            )
            group = slc.create_group(role)
            _strings(group, "L1InputGranules", [scene], f"{role.title()} input granules")
            _strings(group, "orbitType", ["precise"], f"{role.title()} orbit type")
    return path


def _crs(group: h5netcdf.Group, name: str) -> None:
    variable = group.create_variable(name, (), "i4")
    variable.attrs.update(
        {
            "grid_mapping_name": "latitude_longitude",
            "longitude_of_prime_meridian": 0.0,
            "semi_major_axis": 6378137.0,
            "inverse_flattening": 298.257223563,
            "crs_wkt": WGS84_WKT,
            "long_name": name,
            "standard_name": name,
        }
    )


def _coordinate(
    group: h5netcdf.Group, name: str, values: np.ndarray, axis: str, units: str
) -> None:
    variable = group.create_variable(name, (name,), "f8", data=values)
    standard = {"Lon": "longitude", "Lat": "latitude", "Lev": "height"}[axis]
    variable.attrs.update(
        {
            "_CoordinateAxisType": axis,
            "units": units,
            "long_name": standard,
            "standard_name": standard,
        }
    )


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gunw-products")
    spec = ProductSpec(
        dt.date(2020, 1, 17), dt.date(2020, 1, 5), 64, "A", -118.2, 33.8, -117.8, 34.2
    )
    print(write_product(spec, out))


def reference_warp(paths, layer, grid) -> np.ndarray:
    """An independent ``rasterio.warp.reproject`` of a layer of products onto a tile's grid,
    later products painted over earlier ones (how adjacent frames of one pair mosaic): what
    the gunw source's chips must equal."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from m3leo_tiles.sources.gunw._gunw_read import layer_path

    out = np.full((grid.height, grid.width), np.nan, "float32")
    for path in paths:
        with rasterio.open(layer_path(str(path), layer)) as dataset:
            reproject(
                rasterio.band(dataset, 1),
                out,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                init_dest_nodata=False,
                resampling=Resampling.nearest if layer.categorical else Resampling.bilinear,
            )
    return out
