"""Run the sample WMTS standalone: `luminescence serve [--port 8080] [--faults ...]`.

Serves the bundled NYSDOP sample and the SYNTHETIC film layer (params.yaml `sample`) on
127.0.0.1 until Ctrl-C, and prints the capabilities URL to paste into QGIS
(Layer > Add Layer > Add WMS/WMTS Layer) or a browser.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.config import PARAMS_FILE, load_params
from pipeline.core.errors import LuminescenceError, cli_entry
from pipeline.server.bundled import serve_sample
from pipeline.server.faults import parse_faults
from pipeline.server.layers import MATRIX_SET


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="luminescence serve",
        description="Serve the bundled sample imagery as an OGC WMTS on 127.0.0.1 until Ctrl-C. "
        "Paste the printed capabilities URL into QGIS (Layer > Add Layer > Add WMS/WMTS Layer) "
        "or a browser. The erie_2011_film layer is SYNTHETIC (a film emulation), not a real "
        "historic photograph.")
    parser.add_argument("--port", type=int, default=8080,
                        help="TCP port (0 = any free port; default %(default)s)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default: %(default)s)")
    parser.add_argument("--faults", default="", metavar="NAME=VALUE,...",
                        help="inject faults for testing clients, e.g. 'error=0.1,throttle=0.05,truncate=0.05,"
                        "slow=0.02,slow_s=5,latency_s=0.05,faults_per_tile=2,seed=0'")
    parser.add_argument("--lazy", action="store_true",
                        help="convert each layer's sources on its first tile instead of at start-up")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise LuminescenceError(f"--port {args.port} is not a TCP port (0-65535)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    faults = parse_faults(args.faults) if args.faults else None
    sample = load_params(args.params).sample
    with serve_sample(sample, faults, port=args.port, verbose=args.verbose, prepare=not args.lazy) as server:
        print(f"WMTS capabilities: {server.capabilities_url}")
        print(f"  KVP:  {server.base_url}/wmts?SERVICE=WMTS&REQUEST=GetCapabilities")
        print(f"  XYZ:  {server.base_url}/wmts/{{layer}}/{MATRIX_SET}/{{z}}/{{x}}/{{y}}.png")
        for layer in server.layers.values():
            flag = "  (SYNTHETIC)" if layer.source.synthetic else ""
            print(f"  layer {layer.source.id}: {layer.source.title}{flag}")
        if faults is not None:
            print(f"  injecting faults: {faults}")
        print("Ctrl-C to stop.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
