"""One fixed colour per method in every figure, the app and the static leaderboard (torch- and plot-free).

The colours come from two palettes designed to stay distinguishable under the common colour-vision
deficiencies: Okabe & Ito's eight colours and Paul Tol's "muted" and "bright" schemes. Each known method
label has its own colour (:data:`METHOD_COLOURS`); a label that is not in the table takes its base method's
colour, and an unknown method a colour from :data:`FALLBACK` chosen by a stable hash of its name, so a
method keeps its colour whatever else a figure shows. An entry searched at another length
(``<label>-len<L>``) is drawn in the colour of the curve it belongs to (its ``search_curve``). Proxies are
told apart by marker shape (:func:`proxy_markers`), not colour.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

# method label -> colour (hex). Families sit near each other (ASGA warm reds, EdMIPS blues, GMPQ greens,
# HAWQ orange/purple, controls black and greys); every label has a distinct colour.
METHOD_COLOURS: dict[str, str] = {
    "asga": "#D55E00",  # Okabe-Ito vermillion: the proposed method
    "asga-probe": "#CC79A7",  # Okabe-Ito reddish purple
    "asga-decide": "#882255",  # Tol wine
    "asga-argmax": "#EE6677",  # Tol red
    "asga-sam": "#DDCC77",  # Tol sand
    "asga-sam-align": "#999933",  # Tol olive
    "gmpq": "#009E73",  # Okabe-Ito bluish green
    "gmpq-asga": "#117733",  # Tol green
    "edmips": "#56B4E9",  # Okabe-Ito sky blue
    "edmips-target": "#0072B2",  # Okabe-Ito blue
    "edmips-argmax": "#88CCEE",  # Tol cyan
    "hawq": "#E69F00",  # Okabe-Ito orange
    "hawq-target": "#AA4499",  # Tol purple
    "haq": "#332288",  # Tol indigo
    "dq": "#44AA99",  # Tol teal
    "hmq": "#AA3377",  # Tol bright purple
    "seam": "#4477AA",  # Tol bright blue
    "limpq": "#228833",  # Tol bright green
    "ompq": "#CCBB44",  # Tol bright yellow
    "uniform": "#000000",  # controls: black and greys
    "random": "#777777",
    "uniform-p": "#BBBBBB",
}
FALLBACK: tuple[str, ...] = ("#66CCEE", "#EE7733", "#0077BB", "#33BBEE", "#EE3377", "#CC3311", "#009988",
                             "#BBBBBB")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")  # matplotlib marker per proxy
ALTAIR_SHAPES: tuple[str, ...] = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross",
                                  "wedge", "arrow")


def method_colour(method: str, base_method: str | None = None) -> str:
    """The fixed colour (hex) of a method label: its own, else its base method's, else a stable fallback."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    if base_method and base_method in METHOD_COLOURS:
        return METHOD_COLOURS[base_method]
    digest = hashlib.sha256(method.encode()).digest()
    return FALLBACK[digest[0] % len(FALLBACK)]


def colour_map(methods: Iterable[str], base_methods: Iterable[str | None] | None = None) -> dict[str, str]:
    """{method: colour} for the given labels (sorted), e.g. for a plotting library's palette argument."""
    methods = list(methods)
    bases = list(base_methods) if base_methods is not None else [None] * len(methods)
    pairs = dict(zip(methods, bases))
    return {m: method_colour(m, pairs.get(m)) for m in sorted(set(methods))}


def altair_scale(methods: Sequence[str], base_methods: Sequence[str | None] | None = None) -> dict:
    """``domain``/``range`` for ``alt.Scale`` so an Altair colour encoding of ``method`` uses the fixed colours."""
    cmap = colour_map(methods, base_methods)
    return {"domain": list(cmap), "range": list(cmap.values())}


def proxy_markers(proxies: Iterable[str], shapes: Sequence[str] = MARKERS) -> dict[str, str]:
    """One marker per proxy, in sorted order of the proxies given."""
    names = sorted(set(proxies))
    return {p: shapes[i % len(shapes)] for i, p in enumerate(names)}
