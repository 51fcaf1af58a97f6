"""A self-contained HTML page of search hits: thumbnails with the mask drawn, score, path."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from hybridgl.search.files import IndexedFileChanged, IndexedFileGone

THUMB_SIDE = 360


def thumbnail_jpeg(
    image_file: str | bytes, mask: np.ndarray, box: Sequence[float], side: int = THUMB_SIDE
) -> bytes | None:
    """The image with its mask and box drawn, scaled to at most ``side`` px, as JPEG.

    Returns None when the image cannot be read or its size no longer matches the mask.
    """
    from PIL import Image

    from hybridgl.errors import ImageError
    from hybridgl.images import load_image
    from hybridgl.viz import overlay

    try:
        image = load_image(image_file)
    except ImageError:
        return None
    if image.shape[:2] != mask.shape:
        return None
    drawn = overlay(image, mask, box=box if any(box) else None)
    pil = Image.fromarray(drawn)
    pil.thumbnail((side, side))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem} .meta{color:#555;margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:.85rem;margin-top:.4rem;word-break:break-all}
.score{font-weight:600} .missing{padding:2rem;text-align:center;color:#a00;background:#fee}
"""


def render_gallery(query: str, hits: Sequence[Any], info: dict[str, Any] | None = None) -> str:
    """The HTML page for ``hits`` (:class:`~hybridgl.search.index.SearchHit`)."""
    info = info or {}
    cards = []
    for h in hits:
        pred = h.prediction
        jpeg, why = None, "image not readable"
        try:
            # only the bytes that were indexed: not a file swapped in since (files.py)
            jpeg = thumbnail_jpeg(h.read_file(), pred.mask, pred.box)
        except IndexedFileChanged:
            why = "image changed since it was indexed"
        except IndexedFileGone:
            why = "image gone (or now outside the indexed folders)"
        if jpeg is None:
            pic = f'<div class="missing">{why}</div>'
        else:
            data = base64.b64encode(jpeg).decode("ascii")
            pic = f'<img alt="hit {h.rank}" src="data:image/jpeg;base64,{data}">'
        box = ", ".join(f"{v:.0f}" for v in pred.box)
        cards.append(
            f"<figure>{pic}<figcaption><span class='score'>#{h.rank} similarity {h.similarity:.4f}</span>"
            f" (stage 1 {h.stage1_similarity:.4f})<br>{html.escape(h.path)}<br>"
            f"proposal {pred.index} of {pred.num_proposals}, box [{box}]</figcaption></figure>"
        )
    body = "\n".join(cards) if cards else "<p>Nothing found.</p>"
    meta = html.escape(
        f"{len(hits)} hit(s); similarity = cosine of the phrase with the chosen region"
        + (f"; index {info['db']}" if info.get("db") else "")
    )
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>hybridgl search: {html.escape(query)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(query)}</h1><div class='meta'>{meta}</div>"
        f"<div class='grid'>\n{body}\n</div></body></html>\n"
    )
