"""Which PyTorch module produced which ONNX tensor.

The exporters record it per node: the dynamo exporter as ``metadata_props["pkg.torch.onnx.name_scopes"]``
(``['', 'encoder.blocks.0', 'encoder.blocks.0.norm1', 'layer_norm']``: the module qualified names entered,
then the op), the TorchScript exporter in the node name (``/encoder/blocks.0/norm1/LayerNormalization``).
Neither survives simplification (onnxsim rebuilds the nodes without metadata), so :func:`carry_scopes`
copies each node's scopes onto the simplified (or FP16) graph's node that produces the same tensor, as
``metadata_props["deploykit.scopes"]`` (a JSON list of qualified names, outermost first).

:func:`module_outputs` then finds, for every module scope, the one tensor that leaves it (produced inside,
consumed outside or a graph output): that is the module's output in the graph, comparable with the output
a forward hook sees in PyTorch.
"""

from __future__ import annotations

import ast
import json
from collections import defaultdict
from dataclasses import dataclass

import onnx

from deploykit.core.record import KEY_NODE_SCOPES

SCOPES_KEY = KEY_NODE_SCOPES
DYNAMO_KEY = "pkg.torch.onnx.name_scopes"


def node_scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module qualified names a node was traced in, outermost first (empty when unknown)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            return tuple(json.loads(prop.value))
    for prop in node.metadata_props:
        if prop.key == DYNAMO_KEY:
            names = ast.literal_eval(prop.value)
            return tuple(n for n in names[1:-1] if n)  # drop the root '' and the op's own name
    if node.name.startswith("/"):  # TorchScript: /encoder/blocks.0/norm1/LayerNormalization
        parts = node.name.strip("/").split("/")[:-1]
        return tuple(".".join(parts[: i + 1]) for i in range(len(parts)))
    return ()


def carry_scopes(source: onnx.ModelProto, target: onnx.ModelProto) -> int:
    """Give every ``target`` node the scopes of the ``source`` node that produced the same tensor;
    returns how many nodes got scopes. Nodes are matched by output names, which graph transforms keep."""
    by_output: dict[str, tuple[str, ...]] = {}
    for node in source.graph.node:
        scopes = node_scopes(node)
        if scopes:
            for name in node.output:
                by_output[name] = scopes
    carried = 0
    for node in target.graph.node:
        scopes = next((by_output[o] for o in node.output if o in by_output), None)
        if scopes is None:
            continue
        kept = [p for p in node.metadata_props if p.key not in (SCOPES_KEY, DYNAMO_KEY)]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        node.metadata_props.add(key=SCOPES_KEY, value=json.dumps(list(scopes)))
        carried += 1
    return carried


@dataclass(frozen=True, kw_only=True)
class ModuleOutput:
    """A module's output in the graph: the tensor, where it is produced and the nodes of the module."""

    module: str
    tensor: str
    position: int  # index of the producing node (topological order)
    nodes: tuple[str, ...]

    @property
    def depth(self) -> int:
        return self.module.count(".") + 1


def module_outputs(proto: onnx.ModelProto, tensors: set[str] | None = None) -> list[ModuleOutput]:
    """Every module scope with exactly one tensor leaving it, in execution order (producer position; a
    module and its last child that share the output tensor: the deeper one first). ``tensors`` limits
    the leaving tensors considered (e.g. to the floating-point ones, so that a shape computation shared
    with the next module does not hide a module's output)."""
    nodes = list(proto.graph.node)
    members: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for scope in node_scopes(node):
            members[scope].append(i)
    if not members:
        return []
    consumers: dict[str, set[int]] = defaultdict(set)
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers[name].add(i)
    graph_outputs = {o.name for o in proto.graph.output}
    found = []
    for scope, indices in members.items():
        inside = set(indices)
        leaving = [
            (i, name)
            for i in indices
            for name in nodes[i].output
            if name
            and (tensors is None or name in tensors)
            and (name in graph_outputs or consumers[name] - inside)
        ]
        if len(leaving) == 1:
            i, name = leaving[0]
            found.append(
                ModuleOutput(
                    module=scope, tensor=name, position=i, nodes=tuple(nodes[j].name for j in indices)
                )
            )
    return sorted(found, key=lambda m: (m.position, -m.depth))


def module_nodes(proto: onnx.ModelProto, module: str) -> set[str]:
    """Names of the nodes traced inside ``module`` (at any depth)."""
    return {n.name for n in proto.graph.node if module in node_scopes(n)}


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    values = [*graph.value_info, *graph.input, *graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}


def types_declared(proto: onnx.ModelProto) -> bool:
    """Whether the graph's ``value_info`` (with its I/O) types every node output — the simplifiers and the
    FP16 converter leave it complete, so ONNX shape inference has nothing to add."""
    known = _declared_types(proto.graph)
    return all(name in known for node in proto.graph.node for name in node.output if name)


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can type (graph I/O included). Shape inference,
    which copies the whole model with its weights, runs only when :func:`types_declared` is false."""
    graph = proto.graph if types_declared(proto) else onnx.shape_inference.infer_shapes(proto).graph
    return _declared_types(graph)


def expose_tensors(proto: onnx.ModelProto, names: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``proto`` whose graph outputs also include ``names``, typed from ONNX shape inference;
    returns it and the names exposed (tensors whose type inference cannot tell are left out)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    types = tensor_types(probe)
    existing = {o.name for o in probe.graph.output}
    exposed = []
    for name in names:
        if name in existing:
            exposed.append(name)
        elif types.get(name):
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
            exposed.append(name)
    return probe, exposed
