"""Visual eval report: a static HTML page of ARC grids (PNG data URIs in the ARC palette).

PNGs are encoded here with numpy + zlib + struct (no PIL needed). ``log_wandb`` logs the
same images as a ``wandb.Table`` when a wandb run is active; wandb is imported lazily.
"""
from __future__ import annotations

import base64
import html
import logging
import struct
import zlib

import numpy as np

log = logging.getLogger(__name__)

# ARC palette, colours 0-9
PALETTE = np.array([
    [0x00, 0x00, 0x00],  # 0 black
    [0x00, 0x74, 0xD9],  # 1 blue
    [0xFF, 0x41, 0x36],  # 2 red
    [0x2E, 0xCC, 0x40],  # 3 green
    [0xFF, 0xDC, 0x00],  # 4 yellow
    [0xAA, 0xAA, 0xAA],  # 5 grey
    [0xF0, 0x12, 0xBE],  # 6 magenta
    [0xFF, 0x85, 0x1B],  # 7 orange
    [0x7F, 0xDB, 0xFF],  # 8 sky
    [0x87, 0x0C, 0x25],  # 9 maroon
], dtype=np.uint8)
LINE = np.array([0x55, 0x55, 0x55], dtype=np.uint8)


def render_grid(grid: np.ndarray, cell: int | None = None) -> np.ndarray:
    """RGB image [H, W, 3] uint8 of a grid of colours 0-9, cells separated by 1px lines."""
    grid = np.asarray(grid, dtype=np.int64)
    if grid.ndim != 2 or grid.size == 0:
        grid = np.zeros((1, 1), dtype=np.int64)
    h, w = grid.shape
    if cell is None:
        cell = int(max(4, min(16, 200 // max(h, w))))
    step = cell + 1
    rows = np.arange(h * step + 1)
    cols = np.arange(w * step + 1)
    r_in = (rows % step != 0) & (rows // step < h)
    c_in = (cols % step != 0) & (cols // step < w)
    img = np.empty((rows.size, cols.size, 3), dtype=np.uint8)
    img[:] = LINE
    colours = PALETTE[np.clip(grid, 0, 9)]
    sub = colours[(rows[r_in] // step)[:, None], (cols[c_in] // step)[None, :]]
    img[np.ix_(r_in, c_in)] = sub
    return img


def render_row(grids: list, gap: int = 6) -> np.ndarray:
    """Several grids side by side (top-aligned, white gaps) as one RGB image."""
    imgs = [render_grid(g) for g in grids] or [render_grid(np.zeros((1, 1)))]
    height = max(i.shape[0] for i in imgs)
    width = sum(i.shape[1] for i in imgs) + gap * (len(imgs) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for i in imgs:
        out[:i.shape[0], x:x + i.shape[1]] = i
        x += i.shape[1] + gap
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 image [H, W, 3] as PNG (8-bit truecolour, no filtering)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    hgt, wid, _ = rgb.shape
    raw = np.concatenate([np.zeros((hgt, 1), np.uint8), rgb.reshape(hgt, wid * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", wid, hgt, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def grid_png(grid: np.ndarray) -> bytes:
    return png_bytes(render_grid(grid))


def _img(grid, caption: str = "") -> str:
    if grid is None:
        return f'<figure><div class="none">none</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    g = np.asarray(grid)
    data = base64.b64encode(grid_png(g)).decode("ascii")
    cap = f"{caption} {g.shape[0]}x{g.shape[1]}".strip()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(cap)}">'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>")


_STYLE = """
body{font-family:sans-serif;background:#fafafa;margin:1em}
section{background:#fff;border:1px solid #ccc;margin:1em 0;padding:.5em 1em}
.row{display:flex;flex-wrap:wrap;align-items:flex-end;gap:.8em;margin:.4em 0}
figure{margin:0;text-align:center}figcaption{font-size:11px;color:#444}
.pair{display:flex;gap:.3em;border:1px dashed #ddd;padding:.2em}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#c62828;font-weight:bold}
.none{width:40px;height:40px;border:1px dashed #999;font-size:10px;line-height:40px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}
"""


def render_html(entries: list[dict], title: str = "ARC eval", metrics: dict | None = None,
                num_puzzles: int | None = None) -> str:
    """Static HTML page for report entries built by ``ARC._report_entries``; `num_puzzles` is how
    many were evaluated (the page shows a sample of them and says so)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    total = len(entries) if num_puzzles is None else int(num_puzzles)
    parts.append(f"<p>Showing {len(entries)} of {total} evaluated puzzles"
                 + (" (a fixed random sample; every puzzle's answers are in submission.json)" if len(entries) < total
                    else "")
                 + ". Answers are ranked by votes over the augmented variants, ties by the voters' mean "
                   "sigmoid(q_halt); each caption gives the votes, their share of the test input's samples and "
                   "the voters' mean q_halt logit (the Q head's halting score: above 0 means it judged the answer "
                   "right).</p>")
    if metrics:
        parts.append("<table><tr><th>metric</th><th>value</th></tr>")
        for k, v in metrics.items():
            val = f"{v:.4f}" if isinstance(v, float) else str(v)
            parts.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(val)}</td></tr>")
        parts.append("</table>")
    for e in entries:
        solved = all(t["correct"] for t in e["tests"])
        status = '<span class="ok">solved</span>' if solved else '<span class="bad">not solved</span>'
        parts.append(f"<section><h2>{html.escape(str(e['puzzle_id']))} &mdash; {status} "
                     f"(top {e.get('k', 2)})</h2><h3>demos</h3><div class='row'>")
        for j, (a, b) in enumerate(e["demos"]):
            parts.append(f"<div class='pair'>{_img(a, f'in {j}')}{_img(b, f'out {j}')}</div>")
        parts.append("</div>")
        for t in e["tests"]:
            mark = '<span class="ok">right</span>' if t["correct"] else '<span class="bad">wrong</span>'
            parts.append(f"<h3>test {t['index']}: {mark}</h3><div class='row'>")
            parts.append(_img(t["input"], "test input"))
            if not t["answers"]:
                parts.append(_img(None, "no parseable answer"))
            for a, ans in enumerate(t["answers"][:2]):
                tick = " ✓" if ans["correct"] else ""
                share = f"/{t['samples']} ({100.0 * ans['votes'] / t['samples']:.0f}%)" if t.get("samples") else ""
                q_text = f", q_halt {ans['q_halt']:+.2f}" if "q_halt" in ans else ""
                parts.append(_img(ans["grid"], f"answer {a + 1}: {ans['votes']}{share} votes{q_text}{tick}"))
            parts.append(_img(t["truth"], "truth"))
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def log_wandb(entries: list[dict], step: int) -> bool:
    """Log a wandb.Table of the report's grids when a wandb run is active. Returns whether
    a table was logged; failures (e.g. wandb.Image needing PIL) are logged, never raised."""
    try:
        import wandb
    except ImportError:
        return False
    if getattr(wandb, "run", None) is None:
        return False
    try:
        def image(grid, caption):
            return None if grid is None else wandb.Image(render_grid(grid), caption=caption)

        columns = ["puzzle", "test", "correct", "demos", "test_input", "answer_1", "votes_1",
                   "answer_2", "votes_2", "truth"]
        table = wandb.Table(columns=columns)
        for e in entries:
            flat = [g for pair in e["demos"] for g in pair]
            demos = wandb.Image(render_row(flat), caption="demos: in, out, in, out, ...")
            for t in e["tests"]:
                ans = t["answers"]
                a1 = ans[0] if len(ans) > 0 else None
                a2 = ans[1] if len(ans) > 1 else None
                table.add_data(
                    str(e["puzzle_id"]), int(t["index"]), bool(t["correct"]), demos,
                    image(t["input"], "test input"),
                    image(a1["grid"], "answer 1") if a1 else None, a1["votes"] if a1 else 0,
                    image(a2["grid"], "answer 2") if a2 else None, a2["votes"] if a2 else 0,
                    image(t["truth"], "truth"))
        wandb.log({"ARC/report": table, "trainer/step": step})  # x-axis: training/metrics_logger.py
        return True
    except Exception as exc:  # the report must never break an eval
        log.warning("could not log the ARC report to wandb: %s", exc)
        return False
