"""Where each incarnation of a lineage goes in the drawn family tree: roots at the top, a
child one row below its parent, leaves side by side, a parent centred over its children."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..model import Origin
from ..reading import LineageNode
from .links import lineage_path, run_path

BOX_W, BOX_H = 230, 74
GAP_X, GAP_Y = 26, 58
MARGIN = 12


@dataclass(frozen=True)
class Box:
    node: LineageNode
    x: float
    y: float
    href: str  # its charts
    lineage_href: str


@dataclass(frozen=True)
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str  # "fork @ 40", "rewind @ 50"
    kind: str  # "forked", "rewound"


@dataclass(frozen=True)
class Graph:
    boxes: list[Box]
    edges: list[Edge]
    width: float
    height: float


def step_text(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def layout(nodes: Sequence[LineageNode]) -> Graph:
    ids = {n.inc.incarnation_id: n for n in nodes}
    kids: dict[str, list[LineageNode]] = {}
    roots = []
    for n in sorted(nodes, key=lambda n: (n.inc.created_at, n.inc.incarnation_id)):
        parent = n.inc.parent_incarnation_id
        if parent in ids:
            kids.setdefault(parent, []).append(n)
        else:
            roots.append(n)
    column: dict[str, float] = {}
    depth: dict[str, int] = {}
    leaves = 0
    # Post-order without recursion (a run may have been rewound many times).
    stack: list[tuple[LineageNode, int, bool]] = [(r, 0, False) for r in reversed(roots)]
    while stack:
        n, d, done = stack.pop()
        iid = n.inc.incarnation_id
        children = kids.get(iid, [])
        if done or not children:
            depth[iid] = d
            if children:
                column[iid] = sum(column[c.inc.incarnation_id] for c in children) / len(children)
            else:
                column[iid] = leaves
                leaves += 1
            continue
        stack.append((n, d, True))
        stack.extend((c, d + 1, False) for c in reversed(children))
    boxes = {
        iid: Box(
            n,
            MARGIN + column[iid] * (BOX_W + GAP_X),
            MARGIN + depth[iid] * (BOX_H + GAP_Y),
            run_path(n.inc.project, n.inc.run_id, "" if n.run_current else iid),
            lineage_path(n.inc.project, n.inc.run_id),
        )
        for iid, n in ids.items()
    }
    edges = []
    for iid, children in kids.items():
        p = boxes[iid]
        for c in children:
            b = boxes[c.inc.incarnation_id]
            rewound = c.inc.origin is Origin.REWOUND
            edges.append(
                Edge(
                    p.x + BOX_W / 2,
                    p.y + BOX_H,
                    b.x + BOX_W / 2,
                    b.y,
                    f"{'rewind' if rewound else 'fork'} @ {step_text(c.inc.fork_step)}",
                    c.inc.origin.name.lower(),
                )
            )
    width = MARGIN * 2 + max(leaves, 1) * (BOX_W + GAP_X) - GAP_X
    height = MARGIN * 2 + (max(depth.values(), default=0) + 1) * (BOX_H + GAP_Y) - GAP_Y
    return Graph(list(boxes.values()), edges, width, height)
