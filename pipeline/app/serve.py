"""Start the web app: views, model, the sample's WMTS and the HTTP server, in one ASGI app."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from pipeline.app.routes import create_app
from pipeline.app.views import AppState
from pipeline.core.config import Params, SampleConfig
from pipeline.server.asgi import WmtsAsgi
from pipeline.server.asgi_server import AsgiServer, bind
from pipeline.server.service import WmtsService

log = logging.getLogger("luminescence.app")


class WebApp:
    """The app bound to host:port. `start()` serves in a thread (tests), `run()` in the foreground."""

    def __init__(self, params: Params, *, host: str | None = None, port: int | None = None,
                 model: str | None = None, data_dir: str | None = None, access_log: bool = False,
                 sample_derived_dir: str | None = None, model_workers: int | None = None,
                 area_windows: int | None = None) -> None:
        """`sample_derived_dir`: where the sample's film layer and cached mosaics go (default:
        <data_dir>/derived, so the app writes nowhere else). `model_workers`: forward passes
        side by side (None: chosen for the machine). `area_windows`: windows of a view's area
        its model's instance-norm statistics come from (None: the app's default; 0: each
        window's own)."""
        assert params.app is not None
        # Claim the port first: a port in use is one clear error before the slow start-up.
        host = host or params.app.host
        sock = bind(host, params.app.port if port is None else port)
        try:
            extra = {} if area_windows is None else {"area_windows": area_windows}
            self.state = AppState(params, model=model, data_dir=data_dir, model_workers=model_workers,
                                  **extra)
        except BaseException:
            sock.close()
            raise
        self.wmts: WmtsAsgi | None = None
        try:
            derived = sample_derived_dir or str(self.state.data_dir / "derived")
            sample = params.sample.model_copy(update={"derived_dir": derived})
            self.sample = sample_service(sample, self.state)
            self.wmts = WmtsAsgi(self.sample)
            # The sample's WMTS is part of this app: its layers come from this very server, through
            # the same harvester code as any remote WMTS.
            wmts = cast(ASGIApp, self.wmts)
            routes = [Mount("/wmts", app=wmts), Route("/file-exists.php", wmts)]
            self.app = create_app(self.state, extra_routes=routes)
            self.server = AsgiServer(self.app, host=host, access_log=access_log, sock=sock)
        except BaseException:
            sock.close()
            self._close()
            raise
        self.sample.bind(self.server.base_url)
        self.sample.open()
        self.state.set_sample_caps_url(lambda: self.sample.capabilities_url)
        self.url = self.server.base_url + "/"

    def _close(self) -> None:
        if self.wmts is not None:
            self.wmts.close()
        if hasattr(self, "sample"):
            self.sample.close()
        self.state.close()

    def start(self) -> WebApp:
        self.server.start()
        return self

    def run(self) -> None:
        try:
            self.server.run()
        finally:
            self._close()

    def stop(self) -> None:
        self.server.stop()
        self._close()

    def __enter__(self) -> WebApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sample_service(sample: SampleConfig, state: AppState) -> WmtsService:
    """The bundled sample's WMTS; the layers the views use are cached (converted) before serving."""
    from pipeline.server.bundled import sample_layers

    Path(sample.derived_dir).mkdir(parents=True, exist_ok=True)
    service = WmtsService(sample_layers(sample), cache_dir=Path(sample.derived_dir) / "cache")
    used = sorted({layer.cfg.layer for v in state.views.values() for layer in (v.historic, v.modern)
                   if layer.source_cfg.kind == "sample"})
    service.prepare(used)
    return service
