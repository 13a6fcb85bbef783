"""An HTML template for ``dvc plots show`` that renders with no network.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on an offline machine (a
cluster node, CI) ``dvc plots show`` writes a blank page. This template carries those libraries
inline instead; ``.dvc/config`` names it (``plots.html_template``) and ``scripts/setup.sh`` writes
it, from the bundle that ``vl-convert-python`` ships (no download at run time).
"""

from __future__ import annotations

from pathlib import Path

from sekd.io import write_text

# DVC's plots are Vega-Lite v5 specs ($schema .../vega-lite/v5.json): bundle the v5 compiler.
VEGA_LITE = "v5.21"
# No {scripts} placeholder: DVC would put its CDN <script> tags there.
PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>DVC plots (sekd, offline)</title>
  <script type="text/javascript">
{bundle}
  </script>
  <style>
    table {{ border-spacing: 15px; }}
  </style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


def write_template(path: str | Path) -> Path:
    """Write the offline template to ``path`` (the bundle defines ``vegaEmbed`` globally, as the
    CDN scripts do, so DVC's plot snippets run unchanged)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")
    write_text(path, PAGE.format(bundle=bundle))
    return Path(path)
