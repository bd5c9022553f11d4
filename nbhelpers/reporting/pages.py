"""The report's HTML: executed notebooks rendered for reading offline (local MathJax, plumbing input
hidden, wide tables that wrap) and the index page of every run."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nbhelpers.measure.leaderboard import headline

#: Cells whose input the HTML report hides (validation, recording, plot styling); their output
#: stays.
HIDE_INPUT_TAG = "hide-input"
#: MathJax configuration shipped by jupyter-server-mathjax (MathJax 2.7), for formulas offline.
MATHJAX_QUERY = "?config=TeX-AMS-MML_HTMLorMML-full,Safe"
#: The only web font jupyter-server-mathjax ships is STIX-Web; MathJax 2 otherwise asks for its TeX
#: fonts and fails on glyphs it must then load (a prime, W', shows "[Math Processing Error]").
MATHJAX_FONTS = '"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web"},'
#: Where the font setting goes in nbconvert's MathJax configuration block.
MATHJAX_ANCHOR = "displayAlign: 'center',"
#: Header cells of output tables: DataFrame column names such as ``accuracy_delta_points`` have no
#: spaces, so a wide table cannot wrap its headers and runs off the page; a break opportunity after
#: each underscore lets it fit.
_HEADER_CELL = re.compile(r"(<th[^>]*>)([^<]*_[^<]*)(</th>)")
#: Output tables a little denser than JupyterLab's default, so more columns fit the page.
TABLE_CSS = (
    "<style>.jp-OutputArea-output table.dataframe th,"
    ".jp-OutputArea-output table.dataframe td{padding:0.3em 0.4em;font-size:12px}</style>"
)


def install_mathjax(out_dir: Path) -> Path:
    """Copy the MathJax that ``jupyter-server-mathjax`` ships into ``out_dir/mathjax`` (once).

    The HTML reports load it by a relative URL, so their formulas render with no network.

    Args:
        out_dir: the reports folder.

    Returns:
        The folder holding ``MathJax.js``.
    """
    import shutil
    from importlib import resources

    dst = Path(out_dir) / "mathjax"
    if not (dst / "MathJax.js").exists():
        src = resources.files("jupyter_server_mathjax") / "static"
        with resources.as_file(src) as folder:
            shutil.copytree(folder, dst, dirs_exist_ok=True)
    return dst


def render_html(nb_path: Path, html_path: Path) -> None:
    """Render an executed notebook to HTML that needs no network: local MathJax, plumbing input
    hidden.

    Args:
        nb_path: the executed ``.ipynb``.
        html_path: where to write the HTML (MathJax is copied beside it).
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    install_mathjax(html_path.parent)
    exporter = HTMLExporter(template_name="lab", mathjax_url="mathjax/MathJax.js" + MATHJAX_QUERY)
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_input_tags={HIDE_INPUT_TAG}), enabled=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(str(nb_path), as_version=4))
    # require.js (from a CDN) only serves widget state, which reports do not carry: offline, drop it
    body = body.replace(f'<script src="{exporter.require_js_url}"></script>', "")
    if MATHJAX_ANCHOR not in body:
        raise RuntimeError(f"nbconvert's MathJax configuration has no {MATHJAX_ANCHOR!r} to extend")
    body = body.replace(MATHJAX_ANCHOR, f"{MATHJAX_ANCHOR} {MATHJAX_FONTS}", 1)
    body = wrappable_headers(body).replace("</head>", f"{TABLE_CSS}</head>", 1)
    html_path.write_text(body, encoding="utf-8")


def wrappable_headers(html_text: str) -> str:
    """Let table header cells wrap after underscores (``<wbr>``), so wide tables fit the page.

    Args:
        html_text: an HTML page.

    Returns:
        The page with ``<wbr>`` after every underscore inside ``<th>`` cells that hold plain text.
    """
    return _HEADER_CELL.sub(
        lambda m: m.group(1) + m.group(2).replace("_", "_<wbr>") + m.group(3), html_text
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def index_html(runs: dict[str, dict], extra_sections: list[str] | None = None) -> str:
    """The HTML of the index page: one row per notebook with status, time, values and links.

    Args:
        runs: the run log (see ``save_run``).
        extra_sections: HTML fragments appended after the table (e.g. a leaderboard).

    Returns:
        A standalone HTML document.
    """
    rows = []
    for stem in sorted(runs):
        latest = runs[stem].get("latest", {})
        good = runs[stem].get("last_good")
        status = latest.get("status", "?")
        links = []
        if good:
            links.append(f'<a href="{html.escape(stem)}.html">report</a>')
        if status == "failed":
            links.append(f'<a href="{html.escape(stem)}.failed.html">failed run</a>')
        shown = good if status == "failed" and good else latest
        values = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in sorted((shown.get("records") or {}).items())
        )
        note = ""
        if status == "failed":
            note = f'<div class="err">{html.escape(latest.get("error", ""))}</div>'
            if good:
                when = html.escape(good["finished_at"])
                note += f'<div class="old">values below are from the last good run ({when})</div>'
        recorded = shown.get("records") or {}
        head = html.escape(headline(recorded))
        finished = html.escape(latest.get("finished_at", ""))
        rows.append(
            f'<tr class="{status}"><td><b>{html.escape(stem)}</b>'
            f'<div class="head">{head}</div></td><td class="st">{status}</td>'
            f"<td>{latest.get('seconds', 0):.1f} s</td><td>{finished}</td>"
            f"<td>{' · '.join(links)}</td><td>{note}<details>"
            f"<summary>{len(recorded)} recorded values"
            f'</summary><table class="vals">{values}</table></details></td></tr>'
        )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Model Optimization Lab report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}}
tr.failed .st{{color:#b00;font-weight:bold}} tr.ok .st{{color:#070;font-weight:bold}}
.err{{color:#b00;font-family:monospace;white-space:pre-wrap}} .old{{color:#666;font-size:90%}}
table.vals td{{font-family:monospace;font-size:85%;border:none;padding:1px 6px}}
.head{{font-size:90%;color:#333;max-width:40em}} table.board{{font-size:85%}}</style></head><body>
<h1>Model Optimization Lab report</h1><p>Generated {generated}.</p>
<table><tr><th>notebook</th><th>status</th><th>run time</th><th>finished</th><th>links</th>
<th>recorded values</th></tr>
{"".join(rows)}</table>{"".join(extra_sections or [])}</body></html>"""
