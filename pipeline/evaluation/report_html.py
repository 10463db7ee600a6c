"""``report.html``: the run's ``report.md`` as one self-contained page, every plot of the run inline.

The Markdown is rendered by ``markdown-it-py`` (CommonMark with tables). Plots that the report
does not show are added under "All plots", so the page holds every PNG of the run folder
(:meth:`pipeline.artifacts.RunDir.plots`); each image is embedded as a base64 ``data:image/png``
URI, so the file can be mailed or opened anywhere without the run folder.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from markdown_it import MarkdownIt

from pipeline.artifacts import RunDir

STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
         "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem}"
         "img{max-width:100%}")


def render_html(markdown: str, run_dir: RunDir, title: str) -> str:
    """The HTML page of ``markdown`` (the run's report), every plot of ``run_dir`` inline.

    Args:
        markdown: the report's Markdown; its image paths are relative to the run folder.
        run_dir: the run folder, whose PNG files are embedded.
        title: the page title.

    Returns:
        A complete HTML document with no external reference for its images: each ``<img>`` whose
        file exists in the run folder gets a ``data:image/png;base64`` source.
    """
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown + _missing_plots(markdown, run_dir))
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                file = run_dir.root / str(child.attrGet("src"))
                if file.is_file():
                    child.attrSet("src", "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode())
    body = md.renderer.render(tokens, md.options, {})
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def _missing_plots(markdown: str, run_dir: RunDir) -> str:
    """Markdown of an "All plots" section showing each PNG of the run that ``markdown`` does not, or ""."""
    missing = [p.relative_to(run_dir.root).as_posix() for p in run_dir.plots()]
    missing = [path for path in missing if f"]({path})" not in markdown]
    if not missing:
        return ""
    return "\n## All plots\n\n" + "\n\n".join(f"![{Path(path).stem}]({path})" for path in missing) + "\n"
