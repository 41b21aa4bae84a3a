"""Start the web app: views, model, the sample's WMTS and the HTTP server, in one process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.app.routes import create_app
from pipeline.app.views import AppState
from pipeline.core.config import Params
from pipeline.server.asgi_server import AsgiServer

log = logging.getLogger("luminescence.app")


class WebApp:
    """The app bound to host:port. `start()` serves in a thread (tests), `run()` in the foreground."""

    def __init__(self, params: Params, *, host: str | None = None, port: int | None = None,
                 model: str | None = None, data_dir: str | None = None, access_log: bool = False,
                 sample_derived_dir: str | None = None) -> None:
        """`sample_derived_dir`: where the sample's film layer and cached mosaics go (default:
        <data_dir>/derived, so the app writes nowhere else)."""
        assert params.app is not None
        self._stack = ExitStack()
        self.state = AppState(params, model=model, data_dir=data_dir)
        try:
            derived = sample_derived_dir or str(self.state.data_dir / "derived")
            sample = params.sample.model_copy(update={"derived_dir": derived})
            self.sample_server = self._stack.enter_context(_sample_wmts(sample, self.state))
            self.state.set_sample_caps_url(lambda: self.sample_server.capabilities_url)
            self.app = create_app(self.state)
            self.server = AsgiServer(self.app, host=host or params.app.host,
                                     port=params.app.port if port is None else port, access_log=access_log)
        except BaseException:
            self._stack.close()
            self.state.close()
            raise
        self.url = self.server.base_url + "/"

    def start(self) -> WebApp:
        self.server.start()
        return self

    def run(self) -> None:
        try:
            self.server.run()
        finally:
            self._stack.close()

    def stop(self) -> None:
        self.server.stop()
        self._stack.close()

    def __enter__(self) -> WebApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def _sample_wmts(sample, state: AppState) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """The bundled sample's WMTS (only the layers the views use are prepared)."""
    from pipeline.server.bundled import serve_sample

    used = sorted({layer.cfg.layer for v in state.views.values() for layer in (v.historic, v.modern)
                   if layer.source_cfg.kind == "sample"})
    Path(sample.derived_dir).mkdir(parents=True, exist_ok=True)
    with serve_sample(sample, prepare=used) as server:
        yield server
