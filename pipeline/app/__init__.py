"""The web app: views of historic layers colourised live, served over HTTP (pipeline/app/serve.py)."""

# Windows of a view's area that its model's instance-norm statistics are gathered from (the
# colourise stage takes 64; fewer here, as the first tile of a new view waits for them).
AREA_WINDOWS = 32
