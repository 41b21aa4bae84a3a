"""The WMTS 1.0.0 capabilities document and the OWS exception documents the server answers with."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import mercantile

from pipeline.geo.tiles import TILE_SIZE
from pipeline.server.layers import (
    CRS_URN,
    EXTENSIONS,
    FORMATS,
    MATRIX_SET,
    MATRIX_ZOOMS,
    MAX_ZOOM,
    SCALE_DENOMINATOR_Z0,
    TOP_LEFT,
    Layer,
)

NS = {
    "": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "gml": "http://www.opengis.net/gml",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def tile_limits(wgs84: tuple[float, float, float, float], z: int) -> tuple[int, int, int, int]:
    """(min_row, max_row, min_col, max_col) of the tiles at zoom z touching a lon/lat box."""
    w, s, e, n = wgs84
    ul = mercantile.tile(w, n, z)
    lr = mercantile.tile(e, s, z)
    # A box edge exactly on a tile edge does not touch the next tile.
    max_col = lr.x - 1 if lr.x > ul.x and mercantile.bounds(lr.x, lr.y, z).west >= e else lr.x
    max_row = lr.y - 1 if lr.y > ul.y and mercantile.bounds(lr.x, lr.y, z).north <= s else lr.y
    top = (1 << z) - 1
    return (min(ul.y, top), min(max_row, top), min(ul.x, top), min(max_col, top))



def _q(tag: str) -> str:
    prefix, _, local = tag.rpartition(":")
    return f"{{{NS[prefix]}}}{local}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, _q(tag), {(_q(k) if ":" in k else k): v for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


def _num(v: float) -> str:
    return repr(float(v))


def _dcp(op: ET.Element, gets: Sequence[tuple[str, str]]) -> None:
    http = _sub(_sub(op, "ows:DCP"), "ows:HTTP")
    for href, encoding in gets:
        get = _sub(http, "ows:Get", **{"xlink:href": href})
        allowed = _sub(_sub(get, "ows:Constraint", name="GetEncoding"), "ows:AllowedValues")
        _sub(allowed, "ows:Value", encoding)


def capabilities_xml(layers: Sequence[Layer], base_url: str) -> bytes:
    """The WMTS 1.0.0 capabilities document for these layers at base_url."""
    root = ET.Element(_q("Capabilities"), {"version": "1.0.0", _q("xsi:schemaLocation"):
                      "http://www.opengis.net/wmts/1.0 "
                      "http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"})
    ident = _sub(root, "ows:ServiceIdentification")
    _sub(ident, "ows:Title", "Luminescence local WMTS")
    _sub(ident, "ows:Abstract", "Local rasters served as an OGC WMTS on the loopback interface by "
         "Luminescence (pipeline/server), imitating Academia Sinica's tile services. Layers "
         "marked SYNTHETIC are derived by emulation and are not real historic photographs.")
    kws = _sub(ident, "ows:Keywords")
    for kw in ("WMTS", "orthoimagery", "aerial photography"):
        _sub(kws, "ows:Keyword", kw)
    _sub(ident, "ows:ServiceType", "OGC WMTS")
    _sub(ident, "ows:ServiceTypeVersion", "1.0.0")
    _sub(ident, "ows:Fees", "none")
    _sub(ident, "ows:AccessConstraints", "see each layer's attribution")
    provider = _sub(root, "ows:ServiceProvider")
    _sub(provider, "ows:ProviderName", "Luminescence (local)")
    _sub(_sub(provider, "ows:ServiceContact"), "ows:IndividualName", "Luminescence")

    ops = _sub(root, "ows:OperationsMetadata")
    caps_url = f"{base_url}/wmts/1.0.0/WMTSCapabilities.xml"
    _dcp(_sub(ops, "ows:Operation", name="GetCapabilities"),
         [(caps_url, "RESTful"), (f"{base_url}/wmts?", "KVP")])
    _dcp(_sub(ops, "ows:Operation", name="GetTile"),
         [(f"{base_url}/wmts/", "RESTful"), (f"{base_url}/wmts?", "KVP")])

    contents = _sub(root, "Contents")
    for layer in layers:
        src = layer.source
        el = _sub(contents, "Layer")
        _sub(el, "ows:Title", src.title)
        abstract = src.abstract + (f" Attribution: {src.attribution}" if src.attribution else "")
        _sub(el, "ows:Abstract", abstract)
        kws = _sub(el, "ows:Keywords")
        keywords = list(src.keywords) + (["synthetic"] if src.synthetic and "synthetic" not in src.keywords
                                         else [])
        for kw in keywords:
            _sub(kws, "ows:Keyword", kw)
        wgs = _sub(el, "ows:WGS84BoundingBox", crs="urn:ogc:def:crs:OGC:2:84")
        _sub(wgs, "ows:LowerCorner", f"{_num(layer.wgs84[0])} {_num(layer.wgs84[1])}")
        _sub(wgs, "ows:UpperCorner", f"{_num(layer.wgs84[2])} {_num(layer.wgs84[3])}")
        _sub(el, "ows:Identifier", src.id)
        bb = _sub(el, "ows:BoundingBox", crs=CRS_URN)
        _sub(bb, "ows:LowerCorner", f"{_num(layer.bounds_3857[0])} {_num(layer.bounds_3857[1])}")
        _sub(bb, "ows:UpperCorner", f"{_num(layer.bounds_3857[2])} {_num(layer.bounds_3857[3])}")
        style = _sub(el, "Style", isDefault="true")
        _sub(style, "ows:Title", "Default")
        _sub(style, "ows:Identifier", "default")
        for fmt in src.formats:
            _sub(el, "Format", FORMATS[fmt])
        link = _sub(el, "TileMatrixSetLink")
        _sub(link, "TileMatrixSet", MATRIX_SET)
        limits = _sub(link, "TileMatrixSetLimits")
        for z in range(0, MAX_ZOOM + 1):
            min_row, max_row, min_col, max_col = tile_limits(layer.wgs84, z)
            lim = _sub(limits, "TileMatrixLimits")
            _sub(lim, "TileMatrix", str(z))
            _sub(lim, "MinTileRow", str(min_row))
            _sub(lim, "MaxTileRow", str(max_row))
            _sub(lim, "MinTileCol", str(min_col))
            _sub(lim, "MaxTileCol", str(max_col))
        for fmt in src.formats:
            _sub(el, "ResourceURL", format=FORMATS[fmt], resourceType="tile",
                 template=f"{base_url}/wmts/{src.id}/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/"
                          f"{{TileRow}}.{EXTENSIONS[fmt]}")

    tms = _sub(contents, "TileMatrixSet")
    _sub(tms, "ows:Title", "Google Maps compatible (EPSG:3857)")
    _sub(tms, "ows:Identifier", MATRIX_SET)
    bb = _sub(tms, "ows:BoundingBox", crs=CRS_URN)
    _sub(bb, "ows:LowerCorner", f"{TOP_LEFT[0]} {-TOP_LEFT[1]}")
    _sub(bb, "ows:UpperCorner", f"{-TOP_LEFT[0]} {TOP_LEFT[1]}")
    _sub(tms, "ows:SupportedCRS", CRS_URN)
    _sub(tms, "WellKnownScaleSet", "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible")
    for z in MATRIX_ZOOMS:
        tm = _sub(tms, "TileMatrix")
        _sub(tm, "ows:Identifier", str(z))
        _sub(tm, "ScaleDenominator", _num(SCALE_DENOMINATOR_Z0 / (1 << z)))
        _sub(tm, "TopLeftCorner", f"{TOP_LEFT[0]} {TOP_LEFT[1]}")
        _sub(tm, "TileWidth", str(TILE_SIZE))
        _sub(tm, "TileHeight", str(TILE_SIZE))
        _sub(tm, "MatrixWidth", str(1 << z))
        _sub(tm, "MatrixHeight", str(1 << z))
    _sub(root, "ServiceMetadataURL", **{"xlink:href": caps_url})
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def exception_report(code: str, text: str, locator: str | None = None) -> bytes:
    """An OWS 1.1 ExceptionReport document."""
    root = ET.Element(_q("ows:ExceptionReport"),
                      {"version": "1.1.0", "{http://www.w3.org/XML/1998/namespace}lang": "en"})
    attrib = {"exceptionCode": code, **({"locator": locator} if locator else {})}
    exc = _sub(root, "ows:Exception", **attrib)
    _sub(exc, "ows:ExceptionText", text)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def service_exception(text: str) -> bytes:
    """A WMS 1.1.1-style ServiceExceptionReport (what some tile servers send with HTTP 200)."""
    root = ET.Element("ServiceExceptionReport", {"version": "1.1.1"})
    ET.SubElement(root, "ServiceException", {"code": "NoApplicableCode"}).text = text
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)
