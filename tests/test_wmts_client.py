"""Capabilities parsing (safely), request validation and tile URL building."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import LuminescenceError
from pipeline.geo.tiles import TileId
from pipeline.geo.wmts_client import (
    CapabilitiesError,
    LayerRequestError,
    ServiceUnreachableError,
    capabilities_url,
    parse_capabilities,
    read_capabilities,
    resolve_source,
    server_message,
    xyz_source,
)

URL = "http://tiles.example/wmts/1.0.0/WMTSCapabilities.xml"
NS = ('xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
      'xmlns:xlink="http://www.w3.org/1999/xlink"')


def gm_matrix_set(ident: str = "GoogleMapsCompatible", zmax: int = 21, prefix: str = "") -> str:
    matrices = "".join(
        f"<TileMatrix><ows:Identifier>{prefix}{z}</ows:Identifier>"
        f"<ScaleDenominator>{559082264.0287178 / 2 ** z}</ScaleDenominator>"
        f"<TopLeftCorner>-20037508.34278925 20037508.34278925</TopLeftCorner>"
        f"<TileWidth>256</TileWidth><TileHeight>256</TileHeight>"
        f"<MatrixWidth>{2 ** z}</MatrixWidth><MatrixHeight>{2 ** z}</MatrixHeight></TileMatrix>"
        for z in range(zmax + 1))
    return (f"<TileMatrixSet><ows:Identifier>{ident}</ows:Identifier>"
            f"<ows:SupportedCRS>urn:ogc:def:crs:EPSG:6.18.3:3857</ows:SupportedCRS>{matrices}</TileMatrixSet>")


def utm_matrix_set() -> str:
    return ("<TileMatrixSet><ows:Identifier>UTM51N</ows:Identifier>"
            "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::32651</ows:SupportedCRS>"
            "<TileMatrix><ows:Identifier>0</ows:Identifier><ScaleDenominator>1000000</ScaleDenominator>"
            "<TopLeftCorner>166021 9329005</TopLeftCorner><TileWidth>512</TileWidth>"
            "<TileHeight>512</TileHeight><MatrixWidth>3</MatrixWidth><MatrixHeight>5</MatrixHeight>"
            "</TileMatrix></TileMatrixSet>")


def layer_xml(ident: str, *, title: str | None = None, fmt: str = "image/png",
              template: str | None = "{base}/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.png",
              bbox: tuple[float, float, float, float] | None = (121.34, 24.94, 121.72, 25.23),
              sets: tuple[str, ...] = ("GoogleMapsCompatible",), limits: str = "",
              keywords: tuple[str, ...] = (), dimension: tuple[str, str] | None = None,
              base: str = "http://tiles.example/wmts") -> str:
    bbox_xml = (f'<ows:WGS84BoundingBox><ows:LowerCorner>{bbox[0]} {bbox[1]}</ows:LowerCorner>'
                f'<ows:UpperCorner>{bbox[2]} {bbox[3]}</ows:UpperCorner></ows:WGS84BoundingBox>'
                if bbox else "")
    kw = ("<ows:Keywords>" + "".join(f"<ows:Keyword>{k}</ows:Keyword>" for k in keywords)
          + "</ows:Keywords>") if keywords else ""
    links = "".join(f"<TileMatrixSetLink><TileMatrixSet>{s}</TileMatrixSet>{limits}</TileMatrixSetLink>"
                    for s in sets)
    dim = (f"<Dimension><ows:Identifier>{dimension[0]}</ows:Identifier><Default>{dimension[1]}</Default>"
           f"<Value>{dimension[1]}</Value></Dimension>") if dimension else ""
    res = ""
    if template:
        t = template.replace("{base}", base).replace("{layer}", ident)
        res = f'<ResourceURL format="{fmt}" resourceType="tile" template="{t}"/>'
    return (f"<Layer><ows:Title>{title or ident}</ows:Title><ows:Identifier>{ident}</ows:Identifier>"
            f"{kw}{bbox_xml}<Style isDefault=\"true\"><ows:Identifier>default</ows:Identifier></Style>"
            f"<Format>{fmt}</Format>{dim}{links}{res}</Layer>")


def caps_xml(layers: list[str], *, kvp: str | None = None, sets: list[str] | None = None,
             doctype: str = "") -> bytes:
    ops = ""
    if kvp:
        ops = ("<ows:OperationsMetadata><ows:Operation name=\"GetTile\"><ows:DCP><ows:HTTP>"
               f"<ows:Get xlink:href=\"{kvp}\"><ows:Constraint name=\"GetEncoding\"><ows:AllowedValues>"
               "<ows:Value>KVP</ows:Value></ows:AllowedValues></ows:Constraint></ows:Get>"
               "</ows:HTTP></ows:DCP></ows:Operation></ows:OperationsMetadata>")
    body = "".join(layers) + "".join(sets if sets is not None else [gm_matrix_set()])
    return (f'<?xml version="1.0" encoding="UTF-8"?>{doctype}<Capabilities {NS} version="1.0.0">'
            f"<ows:ServiceIdentification><ows:Title>Test WMTS</ows:Title></ows:ServiceIdentification>"
            f"{ops}<Contents>{body}</Contents></Capabilities>").encode()


SINICA_LIKE = caps_xml([layer_xml("Taipei_aerialphoto_1974"), layer_xml("sinica_1979"),
                        layer_xml("Taipei_aerialphoto_1980", fmt="image/jpeg",
                                  template="{base}/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.jpg")])


# --------------------------------------------------------------------------- parsing
def test_parse_sinica_like_capabilities() -> None:
    caps = parse_capabilities(SINICA_LIKE, URL)
    assert caps.title == "Test WMTS"
    assert set(caps.layers) == {"Taipei_aerialphoto_1974", "sinica_1979", "Taipei_aerialphoto_1980"}
    layer = caps.layers["Taipei_aerialphoto_1974"]
    assert layer.formats == ("image/png",)
    assert layer.bounds_wgs84 == (121.34, 24.94, 121.72, 25.23)
    ms = layer.matrix_sets["GoogleMapsCompatible"]
    assert ms.web_mercator and ms.zoom_range == (0, 21)
    assert ms.matrices[17].identifier == "17"


def test_missing_wgs84_bounds_is_none() -> None:
    caps = parse_capabilities(caps_xml([layer_xml("a", bbox=None)]), URL)
    assert caps.layers["a"].bounds_wgs84 is None


def test_keywords_and_synthetic_flag() -> None:
    caps = parse_capabilities(caps_xml([layer_xml("film", keywords=("synthetic", "film")),
                                        layer_xml("t", title="SYNTHETIC historic stand-in"),
                                        layer_xml("real", keywords=("orthophoto",))]), URL)
    assert caps.layers["film"].synthetic and caps.layers["t"].synthetic
    assert not caps.layers["real"].synthetic
    assert caps.layers["film"].keywords == ("synthetic", "film")


def test_tile_matrix_set_limits_define_zoom_range() -> None:
    limits = ("<TileMatrixSetLimits>" + "".join(
        f"<TileMatrixLimits><TileMatrix>{z}</TileMatrix><MinTileRow>{10 * z}</MinTileRow>"
        f"<MaxTileRow>{10 * z + 5}</MaxTileRow><MinTileCol>{20 * z}</MinTileCol>"
        f"<MaxTileCol>{20 * z + 5}</MaxTileCol></TileMatrixLimits>" for z in (11, 12, 13))
        + "</TileMatrixSetLimits>")
    caps = parse_capabilities(caps_xml([layer_xml("a", limits=limits)]), URL)
    ms = caps.layers["a"].matrix_sets["GoogleMapsCompatible"]
    assert ms.zoom_range == (11, 13)
    lim = ms.limits[12]
    assert (lim.min_col, lim.max_col, lim.min_row, lim.max_row) == (240, 245, 120, 125)
    assert lim.contains(TileId(12, 240, 125)) and not lim.contains(TileId(12, 246, 125))
    with pytest.raises(LayerRequestError, match="available zooms are 11-13"):
        resolve_source(caps, "a", zoom=14)


def test_xxe_is_refused_and_file_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doctype = f'<!DOCTYPE Capabilities [<!ENTITY xxe SYSTEM "file://{secret}">]>'
    layer = layer_xml("a", title="&xxe;")
    data = caps_xml([layer], doctype=doctype)
    with pytest.raises(CapabilitiesError) as err:
        parse_capabilities(data, URL)
    assert "TOP-SECRET" not in str(err.value)
    assert "unsafe" in str(err.value)


def test_billion_laughs_is_refused() -> None:
    doctype = ('<!DOCTYPE Capabilities [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
               '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>')
    with pytest.raises(CapabilitiesError, match="unsafe"):
        parse_capabilities(caps_xml([layer_xml("a", title="&c;")], doctype=doctype), URL)


def test_exception_report_is_quoted() -> None:
    data = (b'<?xml version="1.0"?><ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/1.1">'
            b'<ows:Exception exceptionCode="MissingParameterValue"><ows:ExceptionText>LAYER is required'
            b'</ows:ExceptionText></ows:Exception></ows:ExceptionReport>')
    with pytest.raises(CapabilitiesError, match="MissingParameterValue: LAYER is required"):
        parse_capabilities(data, URL)


def test_not_capabilities_and_not_xml() -> None:
    with pytest.raises(CapabilitiesError, match="not a WMTS capabilities"):
        parse_capabilities(b"<html><body>hi</body></html>", URL)
    with pytest.raises(CapabilitiesError, match="not well-formed"):
        parse_capabilities(b"\x89PNG garbage", URL)


def test_resource_url_without_template_is_one_line_error() -> None:
    bad = caps_xml([layer_xml("a", template=None).replace(
        "</Layer>", '<ResourceURL format="image/png" resourceType="tile"/></Layer>')])
    with pytest.raises(CapabilitiesError, match="template"):
        parse_capabilities(bad, URL)


# --------------------------------------------------------------------------- validation
def test_unknown_layer_suggests_close_match() -> None:
    caps = parse_capabilities(SINICA_LIKE, URL)
    with pytest.raises(LayerRequestError) as err:
        caps.layer("Taipei_aerialphoto_1975")
    msg = str(err.value)
    assert "did you mean 'Taipei_aerialphoto_1974'" in msg and "list-layers" in msg
    assert "\n" not in msg and isinstance(err.value, LuminescenceError)


def test_zoom_out_of_range_prints_range() -> None:
    caps = parse_capabilities(caps_xml([layer_xml("a")], sets=[gm_matrix_set(zmax=19)]), URL)
    with pytest.raises(LayerRequestError, match="available zooms are 0-19"):
        resolve_source(caps, "a", zoom=20)


def test_matrix_set_defaults_and_errors() -> None:
    caps = parse_capabilities(
        caps_xml([layer_xml("a", sets=("UTM51N", "GoogleMapsCompatible")),
                  layer_xml("b", sets=("UTM51N",)),
                  layer_xml("c", sets=("UTM51N", "EPSG:3857"))],
                 sets=[gm_matrix_set(), gm_matrix_set("EPSG:3857", prefix="EPSG:3857:"), utm_matrix_set()]),
        URL)
    assert resolve_source(caps, "a", zoom=5).matrix_set == "GoogleMapsCompatible"
    with pytest.raises(LayerRequestError, match="offered: UTM51N"):
        resolve_source(caps, "b", zoom=5)
    with pytest.raises(LayerRequestError, match="not the web-mercator"):
        resolve_source(caps, "a", zoom=0, matrix_set="UTM51N")
    with pytest.raises(LayerRequestError, match="did you mean 'GoogleMapsCompatible'"):
        resolve_source(caps, "a", zoom=5, matrix_set="GoogleMapsCompatibel")
    # The only web-mercator set is chosen when GoogleMapsCompatible is absent; its matrix ids are used.
    src = resolve_source(caps, "c", zoom=7)
    assert src.matrix_set == "EPSG:3857"
    assert "/EPSG:3857/EPSG:3857:7/3/5.png" in src.url(TileId(7, 3, 5))


def test_format_default_and_choice() -> None:
    caps = parse_capabilities(SINICA_LIKE, URL)
    assert resolve_source(caps, "Taipei_aerialphoto_1980", zoom=17).format == "image/jpeg"
    assert resolve_source(caps, "Taipei_aerialphoto_1980", zoom=17, fmt="jpg").format == "image/jpeg"
    with pytest.raises(LayerRequestError, match="does not offer format 'png'"):
        resolve_source(caps, "Taipei_aerialphoto_1980", zoom=17, fmt="png")


# --------------------------------------------------------------------------- URLs
@pytest.mark.parametrize("template, expected", [
    ("{base}/{layer}/{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.png",
     "http://tiles.example/wmts/a/GoogleMapsCompatible/17/111/222.png"),  # Sinica: column first
    ("{base}/{layer}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.png",
     "http://tiles.example/wmts/a/GoogleMapsCompatible/17/222/111.png"),  # most servers: row first
    ("{base}/{layer}/{Style}/{TileMatrixSet}/{tilematrix}/{tilerow}/{tilecol}.png",
     "http://tiles.example/wmts/a/default/GoogleMapsCompatible/17/222/111.png"),  # lower-case names
])
def test_rest_template_either_order(template: str, expected: str) -> None:
    caps = parse_capabilities(caps_xml([layer_xml("a", template=template)]), URL)
    src = resolve_source(caps, "a", zoom=17)
    assert src.encoding == "REST"
    assert src.url(TileId(17, 111, 222)) == expected


def test_rest_template_with_dimension() -> None:
    caps = parse_capabilities(caps_xml([layer_xml(
        "a", template="{base}/{layer}/{Time}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.png",
        dimension=("Time", "1974-06-01"))]), URL)
    url = resolve_source(caps, "a", zoom=3).url(TileId(3, 1, 2))
    assert url.endswith("/a/1974-06-01/GoogleMapsCompatible/3/2/1.png")


def test_rest_template_unknown_placeholder_is_error() -> None:
    caps = parse_capabilities(caps_xml([layer_xml(
        "a", template="{base}/{layer}/{Elevation}/{TileMatrix}/{TileRow}/{TileCol}.png")]), URL)
    with pytest.raises(LayerRequestError, match="Elevation"):
        resolve_source(caps, "a", zoom=3)


def test_kvp_fallback_when_no_resource_url() -> None:
    xml = caps_xml([layer_xml("a b", template=None)], kvp="http://kvp.example/wmts?")
    caps = parse_capabilities(xml, URL)
    src = resolve_source(caps, "a b", zoom=4)
    assert src.encoding == "KVP"
    url = src.url(TileId(4, 3, 9))
    assert url.startswith("http://kvp.example/wmts?SERVICE=WMTS&REQUEST=GetTile&VERSION=1.0.0&LAYER=a+b")
    assert "FORMAT=image%2Fpng" in url and "TILEMATRIXSET=GoogleMapsCompatible" in url
    assert url.endswith("&TILEMATRIX=4&TILEROW=9&TILECOL=3")


def test_no_way_to_request_tiles() -> None:
    caps = parse_capabilities(caps_xml([layer_xml("a", template=None)]), URL)
    with pytest.raises(LayerRequestError, match="no way to request"):
        resolve_source(caps, "a", zoom=4)


def test_xyz_templates() -> None:
    sinica = xyz_source("https://gis.sinica.edu.tw/taipei/file-exists.php?img={layer}-{ext}-{z}-{x}-{y}",
                        "Taipei_aerialphoto_1974", "png")
    assert sinica.url(TileId(17, 109782, 56011)) == (
        "https://gis.sinica.edu.tw/taipei/file-exists.php?img=Taipei_aerialphoto_1974-png-17-109782-56011")
    jpg = xyz_source("http://h/{layer}/{z}/{x}/{y}.{ext}", "L", "jpeg")
    assert jpg.url(TileId(2, 1, 3)) == "http://h/L/2/1/3.jpg" and jpg.format == "image/jpeg"
    with pytest.raises(LayerRequestError, match="layer"):
        xyz_source("http://h/{layer}/{z}/{x}/{y}.png")
    with pytest.raises(LayerRequestError, match=r"lacks \{y\}"):
        xyz_source("http://h/{z}/{x}.png")
    with pytest.raises(LayerRequestError, match="placeholder"):
        xyz_source("http://h/{s}/{z}/{x}/{y}.png")


def test_capabilities_url_forms() -> None:
    assert capabilities_url(URL) == URL
    assert capabilities_url("http://h/wmts") == "http://h/wmts?SERVICE=WMTS&REQUEST=GetCapabilities&VERSION=1.0.0"
    kvp = "http://h/wmts?request=GetCapabilities&service=WMTS"
    assert capabilities_url(kvp) == kvp


def test_server_message_quotes_html_and_xml() -> None:
    assert server_message(b"<html><head><title>502 Bad Gateway</title></head></html>", "text/html") == \
        "502 Bad Gateway"
    xml = (b'<?xml version="1.0"?><ExceptionReport xmlns="http://www.opengis.net/ows/1.1"><Exception '
           b'exceptionCode="TileOutOfRange"><ExceptionText>row 9 out of range</ExceptionText></Exception>'
           b'</ExceptionReport>')
    assert server_message(xml, "application/xml") == "TileOutOfRange: row 9 out of range"


def test_unreachable_server_is_one_line(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}/wmts/1.0.0/WMTSCapabilities.xml"
    with pytest.raises(ServiceUnreachableError) as err:
        read_capabilities(url, user_agent="test", timeout=(2, 2))
    assert "connection refused" in str(err.value) and url in str(err.value)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_capabilities_fetch_retries_transient_errors() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = [(503, b"<html><title>warming up</title></html>"), (200, SINICA_LIKE)]
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("User-Agent"))
            status, body = answers.pop(0) if answers else (404, b"<html><title>gone</title></html>")
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if status != 200 else "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}/wmts/1.0.0/WMTSCapabilities.xml"
        from pipeline.geo.wmts_client import fetch_capabilities

        assert fetch_capabilities(url, user_agent="LuminescenceTest/1", backoff_s=0.01) == SINICA_LIKE
        assert seen == ["LuminescenceTest/1"] * 2
        with pytest.raises(CapabilitiesError, match="HTTP 404: 'gone'"):
            fetch_capabilities(url, user_agent="t", backoff_s=0.01)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_dns_failure_message_names_host_and_what_to_check() -> None:
    import requests

    from pipeline.geo.wmts_client import describe_connection_error

    exc = requests.ConnectionError("HTTPSConnectionPool(host='gis.sinica.example', port=443): Max retries "
                                   "exceeded (Caused by NameResolutionError(\"Failed to resolve "
                                   "'gis.sinica.example' ([Errno -2] Name or service not known)\"))")
    msg = describe_connection_error("https://gis.sinica.example/taipei/wmts", exc)
    assert msg.startswith("cannot reach https://gis.sinica.example/taipei/wmts")
    assert "'gis.sinica.example' does not resolve" in msg and "internet connection" in msg
