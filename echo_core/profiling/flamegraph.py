"""A small flame-graph writer: folded stacks -> a standalone SVG (no JavaScript needed to read it).

Layout: one synthetic root ("all") at the bottom, each frame stacked on its caller, width proportional
to the samples under it, siblings in alphabetical order (so the same stacks always merge to the same
picture).  Every frame node is one ``<g>`` holding a ``<title>`` (the browser's tooltip: function,
kernel or user, samples, share and, when known, CPU µs per message), one ``<rect>`` and, where the
label fits at least three characters, one ``<text>`` truncated to the rectangle's width.  Kernel
frames are drawn in warm colours, user frames in cool ones, the root in grey.
"""

import zlib
from xml.sax.saxutils import escape

from echo_core.profiling.folded import split_frame

FRAME_HEIGHT = 16
FONT_SIZE = 11
#: Average glyph width of the monospace font, as a fraction of the font size (for truncating labels).
CHAR_WIDTH = 0.6
PAD_X = 10
PAD_TOP = 46
PAD_BOTTOM = 10
ROOT_NAME = "all"


class Node:
    __slots__ = ("name", "count", "children")

    def __init__(self, name):
        self.name, self.count, self.children = name, 0, {}


def build_tree(stacks):
    """{stack tuple root first: count} -> the root Node ("all") of the merged call tree."""
    root = Node(ROOT_NAME)
    for stack, count in stacks.items():
        root.count += count
        node = root
        for frame in stack:
            node = node.children.setdefault(frame, Node(frame))
            node.count += count
    return root


def count_nodes(root):
    """Frame nodes in the tree, the root included (one <rect> each in the SVG)."""
    return 1 + sum(count_nodes(child) for child in root.children.values())


def _depth(node):
    return 1 + max((_depth(child) for child in node.children.values()), default=0)


def _colour(name, kernel, root):
    if root:
        return "rgb(190,190,190)"
    # A stable hash (not Python's salted hash()) so a function has the same shade in every graph.
    h = zlib.crc32(name.encode("utf-8"))
    a, b = h & 0xFF, (h >> 8) & 0xFF
    if kernel:  # warm: orange to red
        return f"rgb({205 + a % 50},{80 + b % 110},{40 + a % 40})"
    return f"rgb({60 + a % 60},{140 + b % 70},{200 + a % 55})"  # cool: blue-green


def _label(text, width_px):
    fits = int((width_px - 6) / (FONT_SIZE * CHAR_WIDTH))
    if fits >= len(text):
        return text
    if fits < 3:
        return ""
    return text[: fits - 2] + ".."


def render_svg(stacks, title="", subtitle="", us_per_sample=None, width=1200):
    """Folded stacks -> SVG text.  us_per_sample (CPU µs per message carried by one sample) adds
    µs/msg to every tooltip."""
    root = build_tree(stacks)
    total = root.count
    levels = _depth(root)
    height = PAD_TOP + levels * FRAME_HEIGHT + PAD_BOTTOM
    scale = (width - 2 * PAD_X) / total if total else 0.0
    out = [
        f'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">\n',
        "<style>text { font-family: monospace; font-size: %dpx; fill: rgb(0,0,0); } "
        ".title { font-size: 15px; font-family: sans-serif; } .sub { font-family: sans-serif; fill: rgb(80,80,80); } "
        "g:hover rect { stroke: rgb(0,0,0); stroke-width: 0.5; }</style>\n" % FONT_SIZE,
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="rgb(250,250,250)" class="background"/>\n',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" class="title">{escape(title)}</text>\n',
        f'<text x="{width / 2:.1f}" y="36" text-anchor="middle" class="sub">{escape(subtitle)}</text>\n',
    ]

    def emit(node, x, level, is_root):
        function, kernel = split_frame(node.name)
        w = node.count * scale
        y = height - PAD_BOTTOM - (level + 1) * FRAME_HEIGHT
        where = "" if is_root else (" (kernel)" if kernel else " (user)")
        tip = f"{function}{where}: {node.count:,} samples, {100 * node.count / total:.2f} %"
        if us_per_sample is not None:
            tip += f", {node.count * us_per_sample:.3f} µs/msg"
        out.append(f"<g><title>{escape(tip)}</title>"
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{FRAME_HEIGHT - 1}" '
                   f'fill="{_colour(function, kernel, is_root)}" rx="2" ry="2"/>')
        label = _label(function, w)
        if label:
            out.append(f'<text x="{x + 3:.2f}" y="{y + FRAME_HEIGHT - 4}">{escape(label)}</text>')
        out.append("</g>\n")
        child_x = x
        for name in sorted(node.children):
            child = node.children[name]
            emit(child, child_x, level + 1, False)
            child_x += child.count * scale

    if total:
        emit(root, PAD_X, 0, True)
    out.append("</svg>\n")
    return "".join(out)


def write_svg(stacks, path, **kwargs):
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_svg(stacks, **kwargs))
