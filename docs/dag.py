"""Draw the pipeline's DAG from the pipeline itself, to docs/pipeline-dag.png (the README's picture).

    .venv/bin/python docs/dag.py [--preset demo] [--out docs/pipeline-dag.png]

Boxes are the components of `pipeline.pipeline.create_components`, dashed boxes the resolvers (they pick
artifacts of earlier runs from the metadata store), arrows the channels between them, coloured by artifact type.
Rows are the depth in the graph; a resolver with no input sits just above its first consumer. Long arrows from
one producer run together until they branch off to their consumers.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_OUT = Path(__file__).resolve().parent / "pipeline-dag.png"
COMPONENT_GID, EDGE_GID = "component:", "edge:"

# Layout in inches (the figure is drawn 1:1 in data coordinates).
FONT, SMALL_FONT = 9.0, 7.5
BOX_HEIGHT, ROW_PITCH, BOX_PAD, NODE_GAP, BUNDLE_GAP = 0.52, 0.92, 0.16, 0.22, 0.3
MARGIN = 0.25
TYPE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
ORDER_COLOUR = "#555555"  # an edge that carries no artifact


@dataclass
class Node:
    id: str
    lines: list[str]  # the id, then what it is
    resolver: bool
    layer: int = 0
    x: float = 0.0
    width: float = 0.0
    bundle: bool = False  # a point on a long arrow, not a box


@dataclass
class Graph:
    nodes: dict[str, Node]
    edges: list[tuple[str, str, str]]  # (producer id, consumer id, artifact type)
    layers: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class Drawing:
    """What was drawn, read back from the figure's artists."""

    component_ids: set[str]
    edges: set[tuple[str, str]]


def _is_resolver(component) -> bool:
    from tfx.dsl.components.common.resolver import Resolver

    return isinstance(component, Resolver)


def _describe(component) -> list[str]:
    if _is_resolver(component):
        return [component.id, component.exec_properties["resolver_class"].__name__]
    kind = type(component).__name__
    return [component.id] if kind == component.id else [component.id, kind]


def pipeline_graph(components) -> Graph:
    """Nodes and edges: an edge per input channel whose producer is known, and one per upstream node (a resolver's
    inputs are resolved channels, which name no producer), labelled with the artifact type it carries."""
    nodes = {c.id: Node(c.id, _describe(c), _is_resolver(c)) for c in components}
    edges: dict[tuple[str, str], str] = {}
    for consumer in components:
        input_types = []
        for channel in consumer.inputs.values():
            input_types.append(channel.type_name)
            producer = getattr(channel, "producer_component_id", None)
            if producer in nodes:
                edges.setdefault((producer, consumer.id), channel.type_name)
        for upstream in consumer.upstream_nodes:
            output_types = {channel.type_name for channel in upstream.outputs.values()}
            carried = next((t for t in input_types if t in output_types), "")
            edges.setdefault((upstream.id, consumer.id), carried)
    return Graph(nodes, [(src, dst, kind) for (src, dst), kind in edges.items()])


def _assign_layers(graph: Graph) -> None:
    preds = {n: [s for s, d, _ in graph.edges if d == n] for n in graph.nodes}
    succs = {n: [d for s, d, _ in graph.edges if s == n] for n in graph.nodes}
    depth: dict[str, int] = {}

    def longest(n: str) -> int:
        if n not in depth:
            depth[n] = 1 + max((longest(p) for p in preds[n]), default=-1)
        return depth[n]

    for n in graph.nodes:
        longest(n)
    for n, node in graph.nodes.items():
        node.layer = depth[n]
        if not preds[n] and succs[n] and node.resolver:  # a free resolver: just above its first consumer
            node.layer = min(depth[s] for s in succs[n]) - 1


def _add_bundles(graph: Graph) -> list[tuple[str, str, str, str]]:
    """Replace every arrow that skips rows by a path through bundle points, one per row, shared by the long arrows
    of one producer and type. Returns the drawn segments (from, to, artifact type, edge key 'src->dst')."""
    segments = []
    for src, dst, kind in graph.edges:
        a, b = graph.nodes[src].layer, graph.nodes[dst].layer
        previous = src
        for layer in range(a + 1, b):
            point = f"{src}|{kind}|{layer}"
            if point not in graph.nodes:
                graph.nodes[point] = Node(point, [], False, layer=layer, bundle=True)
            segments.append((previous, point, kind, f"{src}->{dst}"))
            previous = point
        segments.append((previous, dst, kind, f"{src}->{dst}"))
    return list(dict.fromkeys(segments))


def _order_layers(graph: Graph, segments) -> None:
    count = 1 + max(node.layer for node in graph.nodes.values())
    layers = [[n for n, node in graph.nodes.items() if node.layer == i] for i in range(count)]
    up = {n: [s for s, d, *_ in segments if d == n] for n in graph.nodes}
    down = {n: [d for s, d, *_ in segments if s == n] for n in graph.nodes}

    def crossings(order) -> int:
        pos = {n: i for layer in order for i, n in enumerate(layer)}
        pairs = sorted({(pos[s], pos[d], graph.nodes[s].layer) for s, d, *_ in segments})
        return sum(1 for i, (s1, d1, l1) in enumerate(pairs) for s2, d2, l2 in pairs[i + 1:]
                   if l1 == l2 and (s1 - s2) * (d1 - d2) < 0)

    best, best_crossings = [list(layer) for layer in layers], crossings(layers)
    for sweep in range(12):
        rows = range(1, count) if sweep % 2 == 0 else range(count - 2, -1, -1)
        neighbours = up if sweep % 2 == 0 else down
        for i in rows:
            ref = {n: k for k, n in enumerate(layers[i - 1 if sweep % 2 == 0 else i + 1])}
            here = {n: k for k, n in enumerate(layers[i])}

            def barycentre(n, ref=ref, here=here, neighbours=neighbours):
                linked = [ref[m] for m in neighbours[n] if m in ref]
                return sum(linked) / len(linked) if linked else here[n]

            layers[i].sort(key=barycentre)
        if crossings(layers) < best_crossings:
            best, best_crossings = [list(layer) for layer in layers], crossings(layers)
    graph.layers = best


def _text_width(text: str, size: float, bold: bool = False) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(weight="bold" if bold else "normal")
    return TextPath((0, 0), text, size=size, prop=prop).get_extents().width / 72.0


def _place(graph: Graph, segments) -> float:
    """x positions: each node pulled towards the mean of its neighbours, rows kept in order without overlap."""
    for node in graph.nodes.values():
        if node.bundle:
            node.width = 0.0
        else:
            widths = [_text_width(node.lines[0], FONT, bold=True)]
            widths += [_text_width(line, SMALL_FONT) for line in node.lines[1:]]
            node.width = max(widths) + 2 * BOX_PAD
    up = {n: [s for s, d, *_ in segments if d == n] for n in graph.nodes}
    down = {n: [d for s, d, *_ in segments if s == n] for n in graph.nodes}

    def gap(a: Node, b: Node) -> float:
        return BUNDLE_GAP if a.bundle or b.bundle else NODE_GAP

    def pack(row: list[str], wanted: dict[str, float]) -> None:
        nodes = [graph.nodes[n] for n in row]
        for node in nodes:
            node.x = wanted[node.id]
        for _ in range(50):  # push apart overlapping neighbours symmetrically until none overlap
            moved = False
            for a, b in zip(nodes, nodes[1:], strict=False):
                overlap = (a.x + a.width / 2 + gap(a, b)) - (b.x - b.width / 2)
                if overlap > 1e-6:
                    a.x -= overlap / 2
                    b.x += overlap / 2
                    moved = True
            if not moved:
                break

    for row in graph.layers:
        x = 0.0
        for n in row:
            node = graph.nodes[n]
            node.x = x + node.width / 2
            x += node.width + NODE_GAP
    for sweep in range(40):
        for row in graph.layers if sweep % 2 == 0 else reversed(graph.layers):
            wanted = {}
            for n in row:
                linked = [graph.nodes[m].x for m in up[n] + down[n]]
                wanted[n] = sum(linked) / len(linked) if linked else graph.nodes[n].x
            pack(row, wanted)
    left = min(node.x - node.width / 2 for node in graph.nodes.values())
    for node in graph.nodes.values():
        node.x += MARGIN - left
    return max(node.x + node.width / 2 for node in graph.nodes.values()) + MARGIN


def layout(components) -> tuple[Graph, list]:
    graph = pipeline_graph(components)
    _assign_layers(graph)
    segments = _add_bundles(graph)
    _order_layers(graph, segments)
    return graph, segments


def draw(out: str | os.PathLike = DEFAULT_OUT, components=None) -> Drawing:
    """Draw the DAG of `components` (default: the demo preset's pipeline) to `out`; returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, PathPatch
    from matplotlib.path import Path as MplPath

    if components is None:
        from pipeline.configs import preset
        from pipeline.pipeline import create_components

        components = create_components(preset("demo"))
    graph, segments = layout(components)
    width = _place(graph, segments)
    legend_height = 0.95
    height = 2 * MARGIN + legend_height + (len(graph.layers) - 1) * ROW_PITCH + BOX_HEIGHT
    top = height - MARGIN - BOX_HEIGHT / 2

    def y(node: Node) -> float:
        return top - node.layer * ROW_PITCH

    kinds = sorted({kind for *_, kind, _ in segments if kind})
    colour = {kind: TYPE_COLOURS[i % len(TYPE_COLOURS)] for i, kind in enumerate(kinds)}

    fig = plt.figure(figsize=(width, height), dpi=150)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")

    # Where each arrow leaves and enters a box: spread along its bottom and top edges, in the order of the other end.
    def ports(n: str, ends: list[str], sign: int) -> dict[str, float]:
        node = graph.nodes[n]
        if node.bundle or len(ends) < 2:
            return dict.fromkeys(ends, node.x)
        span = min(node.width - 2 * BOX_PAD, 0.28 * (len(ends) - 1))
        ordered = sorted(ends, key=lambda m: graph.nodes[m].x)
        return {m: node.x - span / 2 + span * i / (len(ordered) - 1) for i, m in enumerate(ordered)}

    out_ports = {n: ports(n, list(dict.fromkeys(d for s, d, *_ in segments if s == n)), -1) for n in graph.nodes}
    in_ports = {n: ports(n, list(dict.fromkeys(s for s, d, *_ in segments if d == n)), 1) for n in graph.nodes}

    for src, dst, kind, key in segments:
        a, b = graph.nodes[src], graph.nodes[dst]
        x0, x1 = out_ports[src][dst], in_ports[dst][src]
        # Curves stay in the gaps between rows; through a row, a long arrow runs straight down past the boxes.
        y0, y1 = y(a) - BOX_HEIGHT / 2, y(b) + BOX_HEIGHT / 2 + (0 if b.bundle else 0.02)
        mid = (y0 + y1) / 2
        vertices = [(x0, y0), (x0, mid), (x1, mid), (x1, y1)]
        codes = [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4]
        if b.bundle:
            vertices.append((x1, y(b) - BOX_HEIGHT / 2))
            codes.append(MplPath.LINETO)
        path = MplPath(vertices, codes)
        style = {"color": colour.get(kind, ORDER_COLOUR), "lw": 1.3, "zorder": 1}
        if b.bundle:
            patch = PathPatch(path, fill=False, gid=EDGE_GID + key, **style)
        else:
            patch = FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=11, gid=EDGE_GID + key, **style)
        ax.add_patch(patch)

    for node in graph.nodes.values():
        if node.bundle:
            continue
        ax.add_patch(FancyBboxPatch(
            (node.x - node.width / 2, y(node) - BOX_HEIGHT / 2), node.width, BOX_HEIGHT,
            boxstyle="round,pad=0,rounding_size=0.1" if node.resolver else "square,pad=0",
            facecolor="#fff6d5" if node.resolver else "#e8f0fb", edgecolor="#8a6d00" if node.resolver else "#2b4c7e",
            linestyle=(0, (4, 2)) if node.resolver else "-", lw=1.2, zorder=2))
        first_y = y(node) + (0.09 if len(node.lines) > 1 else 0)
        ax.text(node.x, first_y, node.lines[0], ha="center", va="center", fontsize=FONT, fontweight="bold",
                zorder=3, gid=COMPONENT_GID + node.id)
        for line in node.lines[1:]:
            ax.text(node.x, y(node) - 0.11, line, ha="center", va="center", fontsize=SMALL_FONT,
                    style="italic" if node.resolver else "normal", color="#333333", zorder=3)

    boxes = ax.legend(
        [FancyBboxPatch((0, 0), 1, 1, facecolor="#e8f0fb", edgecolor="#2b4c7e", lw=1.2),
         FancyBboxPatch((0, 0), 1, 1, facecolor="#fff6d5", edgecolor="#8a6d00", linestyle=(0, (4, 2)), lw=1.2)],
        ["component", "resolver: artifacts of earlier runs, from the metadata store"],
        loc="lower center", bbox_to_anchor=(0.5, (MARGIN + 0.42) / height), ncol=2, fontsize=SMALL_FONT,
        frameon=False, handlelength=1.8, columnspacing=1.5)
    ax.add_artist(boxes)
    # An upstream node whose outputs the consumer does not read (the DataGate before the Transform): order only.
    order_only = ["runs after (no artifact)"] if any(not kind for *_, kind, _ in segments) else []
    ax.legend([Line2D([], [], color=colour.get(kind, ORDER_COLOUR), lw=2) for kind in [*kinds, *order_only]],
              [*kinds, *order_only], loc="lower center",
              bbox_to_anchor=(0.5, MARGIN / height), ncol=5, fontsize=SMALL_FONT, frameon=False, handlelength=1.8,
              columnspacing=1.5)

    fig.savefig(out, dpi=150, facecolor="white")
    drawing = Drawing(
        component_ids={t.get_gid().removeprefix(COMPONENT_GID) for t in ax.texts
                       if (t.get_gid() or "").startswith(COMPONENT_GID)},
        edges={tuple(p.get_gid().removeprefix(EDGE_GID).split("->")) for p in ax.patches
               if (p.get_gid() or "").startswith(EDGE_GID)})
    plt.close(fig)
    return drawing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="pipeline preset to draw (default demo)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"PNG to write (default {DEFAULT_OUT.name} here)")
    args = parser.parse_args()

    from pipeline.configs import preset
    from pipeline.pipeline import create_components

    drawing = draw(args.out, create_components(preset(args.preset)))
    print(f"wrote {args.out}: {len(drawing.component_ids)} components, {len(drawing.edges)} channels")


if __name__ == "__main__":
    main()
