"""The project's own OGC WMTS 1.0.0 server over local rasters (GeoTIFF, JPEG 2000, VRT).

The default pipeline harvests the bundled sample over HTTP from this server with exactly the
client code used for Academia Sinica, so it imitates that service (docs/sinica.md): one matrix
set `GoogleMapsCompatible` (EPSG:3857, 0-21, 256 px), KVP and RESTful encodings, a REST template
with the COLUMN BEFORE THE ROW (`.../{TileMatrix}/{TileCol}/{TileRow}.png`, as in tileserver-php),
Sinica's legacy XYZ endpoint `/file-exists.php?img={LAYER}-{png|jpg}-{z}-{x}-{y}`, and HTTP 200
with a small transparent PNG for tiles outside a layer. Malformed or out-of-range requests get
HTTP 400 with an OGC `ows:ExceptionReport`. A deterministic `FaultPlan` injects errors for tests
and benchmarks.

Modules, each with one job (imports go down this list):
- `bundled`: the bundled sample's layers (NYSDOP colour + the SYNTHETIC film layer) and serving
  them for the duration of a block;
- `httpd`: `WmtsServer`, the service under uvicorn on 127.0.0.1 (what the fetch stage harvests);
- `asgi`: `WmtsAsgi`, the endpoints as an ASGI app (also mounted by the web app, pipeline.app);
- `asgi_server`: uvicorn on a socket bound first (port 0 = any free port), in a thread or not;
- `sample_identity`: the sample's stable cache identity (its config, files and this code);
- `handling`: one request (path + query) -> `Response` (status, headers, body), independent of
  any HTTP library, so another transport (e.g. an ASGI app) serves the same endpoints;
- `service`: `WmtsService`, the state every request needs (layers, renderer, faults, counters);
- `capabilities`: the capabilities XML and OWS exception documents;
- `rendering`: cached tiled GeoTIFFs and warping them into encoded EPSG:3857 tiles;
- `layers`: what is served (the matrix set, formats, `LayerSource`, the inspected `Layer`);
- `faults`: `FaultPlan` (deterministic fault injection) and its NAME=VALUE syntax;
- `errors`: `ServerError` (bad configuration) and `OwsException` (a bad request).

Out-of-range rules: a TileMatrix outside 0..MAX_ZOOM, or a row/column outside the matrix, is
`TileOutOfRange` (400); a tile inside the matrix but outside the layer is a transparent PNG (200).
"""
