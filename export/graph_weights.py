"""Recover the torch weights of an artifact exported before weights shipped, from its ONNX graphs.

The float32 graphs hold every parameter of the ScoreNet as an initializer, but not always under its
state_dict name: a Linear weight W [out, in] is stored transposed as the constant second input of a
MatMul whose result its bias is added to (`Add(MatMul(x, W^T), b)`), and the exporter keeps one
initializer for tensors of identical values (a fresh model's LayerNorms all share one). So the
parameters are found by structure: in node order, each graph's Linear uses (that Add/MatMul pair),
LayerNormalization nodes and Gathers from a constant table (embeddings) are matched one to one with
the Linear, LayerNorm and Embedding modules the same entry point (`encode` or `denoise`) calls, in
call order. `add_weights` then rebuilds the ScoreNet, checks that it reproduces both graphs on the
export's validation inputs within REPRODUCE_TOLERANCE, and only then writes
NAME.weights.safetensors and the manifest's "weights" record (the manifest last). The graphs are
not touched, so the artifact's forecasts stay identical.

    python -m dil.export.graph_weights engines/metro-traffic.json
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from dil.runtime.manifest import GRAPHS, Manifest, load_manifest

REPRODUCE_TOLERANCE = 1e-5  # max abs error, rebuilt torch module vs each ONNX graph (standardised scale)
# The parameters of each kind of module, in the order graph_uses gives their arrays.
PARAMETERS = {"linear": ("weight", "bias"), "layer_norm": ("weight", "bias"), "embedding": ("weight",)}


class GraphWeightsError(ValueError):
    """The graphs do not yield a complete, consistent ScoreNet state_dict. One line."""


def graph_uses(path) -> dict[str, list[tuple]]:
    """The parameter uses of an ONNX graph in node order: {"linear": [(W [out, in], b)],
    "layer_norm": [(scale, bias)], "embedding": [(table,)]}, float32 arrays."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    uses: dict[str, list[tuple]] = {kind: [] for kind in PARAMETERS}
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) == 3 and all(i in inits for i in node.input[1:]):
            uses["layer_norm"].append((inits[node.input[1]], inits[node.input[2]]))
        elif node.op_type == "Gather" and node.input[0] in inits and inits[node.input[0]].ndim == 2:
            uses["embedding"].append((inits[node.input[0]],))
        elif node.op_type == "Add":
            consts = [i for i in node.input if i in inits]
            others = [producer.get(i) for i in node.input if i not in inits]
            mm = others[0] if len(consts) == 1 and len(others) == 1 else None
            if mm is not None and mm.op_type == "MatMul" and mm.input[1] in inits and inits[mm.input[1]].ndim == 2:
                uses["linear"].append((np.ascontiguousarray(inits[mm.input[1]].T), inits[consts[0]]))
    return uses


def call_order(model, graph: str) -> dict[str, list[str]]:
    """The Linear, LayerNorm and Embedding modules of `model` that entry point `graph` calls, in
    call order: {kind: [module name]}."""
    import torch
    from torch import nn

    from dil.export.onnx_export import example_inputs

    kinds = {nn.Linear: "linear", nn.LayerNorm: "layer_norm", nn.Embedding: "embedding"}
    ctx, args = example_inputs(model, G=1, N=1)
    order: dict[str, list[str]] = {kind: [] for kind in PARAMETERS}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name, kind=kinds[type(m)]: order[kind].append(name))
             for name, m in model.named_modules() if type(m) in kinds]
    try:
        with torch.no_grad():
            model.encode(ctx) if graph == "encode" else model.denoise(*args)
    finally:
        for h in hooks:
            h.remove()
    return order


def state_from_graphs(paths: dict, config) -> dict[str, np.ndarray]:
    """{state_dict key: float32 array} of a ScoreNet of `config`, from its graphs ({graph: path});
    a parameter both graphs use must be identical in both."""
    from dil.train.model import ScoreNet

    model = ScoreNet(config).eval()
    state: dict[str, np.ndarray] = {}
    for graph, path in paths.items():
        uses, order = graph_uses(path), call_order(model, graph)
        for kind, names in order.items():
            if len(uses[kind]) != len(names):
                raise GraphWeightsError(f"{Path(path).name}: {len(uses[kind])} {kind} uses in the graph, the "
                                        f"model's {graph} calls {len(names)} (not a graph of this model)")
            for name, arrays in zip(names, uses[kind]):
                for param, a in zip(PARAMETERS[kind], arrays):
                    key = f"{name}.{param}"
                    if key in state and not np.array_equal(state[key], a):
                        raise GraphWeightsError(f"parameter {key} differs between the graphs")
                    state[key] = a
    return state


def module_from_graphs(manifest: Manifest):
    """A ScoreNet (eval, float32) holding the parameters of the manifest's graphs."""
    import torch

    from dil.train.model import ScoreNet

    state = state_from_graphs({g: manifest.graph_path(g) for g in GRAPHS}, manifest.model)
    model = ScoreNet(manifest.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise GraphWeightsError(f"the graphs of {manifest.path.name} do not hold the model's parameters "
                                f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for key, a in state.items():
        if tuple(a.shape) != tuple(expected[key].shape) or a.dtype != np.float32:
            raise GraphWeightsError(f"parameter {key}: {a.dtype} {a.shape} in the graphs, the model needs "
                                    f"float32 {tuple(expected[key].shape)}")
    model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in state.items()}, strict=True)
    return model.eval()


def reproduction_errors(model, manifest: Manifest, seed: int = 0) -> dict:
    """Max abs error of the torch module vs each ONNX graph of the manifest, on the export's random
    validation inputs and real windows of its training data (dil.export.graph_check).
    Returns {"encode": err, "denoise": err, "inputs": what they were}."""
    from dil.export.graph_check import REAL_WINDOWS, validate_graphs
    from dil.export.real_data import training_windows

    cfg = manifest.model
    windows, info = training_windows(manifest.data, cfg.context_length, cfg.horizon, REAL_WINDOWS)
    report = validate_graphs(model, {g: manifest.graph_path(g) for g in GRAPHS}, manifest.schedule, windows,
                             tolerance=REPRODUCE_TOLERANCE, seed=seed, real_info=info)
    inputs = "random and real windows" if info.get("used") else f"random only ({info.get('reason')})"
    return {g: report["graphs"][g]["max_abs_err"] for g in GRAPHS} | {"inputs": inputs}


def add_weights(engine) -> Manifest:
    """Write NAME.weights.safetensors recovered from the graphs of a float32 artifact that ships no
    weights, and its manifest record (written last, atomically). Returns the updated manifest.

    Raises GraphWeightsError (one line) when the artifact already ships weights, is not float32, or
    the rebuilt module does not reproduce both graphs within REPRODUCE_TOLERANCE; nothing is written then.
    """
    from dil.export.weights import weights_file_name, weights_record
    from dil.runtime.support.files import write_text
    from dil.train.checkpoint import save_tensors

    manifest = load_manifest(engine)
    if manifest.extra.get("weights"):
        raise GraphWeightsError(f"{manifest.path} already ships its weights ({manifest.extra['weights'].get('file')})")
    if manifest.precision != "fp32":
        raise GraphWeightsError(f"{manifest.path} is a {manifest.precision} artifact: recover the weights from its "
                                "float32 source artifact")
    model = module_from_graphs(manifest)
    errors = reproduction_errors(model, manifest)
    worst = max(errors[g] for g in GRAPHS)
    if not worst <= REPRODUCE_TOLERANCE:
        raise GraphWeightsError(f"the module rebuilt from the graphs of {manifest.path.name} differs from them by "
                                f"{worst:.3g} > {REPRODUCE_TOLERANCE:g}: nothing written")
    path = manifest.path.parent / weights_file_name(manifest.name)
    save_tensors(path, model.state_dict())
    record = weights_record(path, f"extracted from {manifest.graphs['encode']['file']} and "
                                  f"{manifest.graphs['denoise']['file']} (dil.export.graph_weights)")
    record["reproduces_graphs"] = {"max_abs_err": {g: errors[g] for g in GRAPHS}, "tolerance": REPRODUCE_TOLERANCE,
                                   "inputs": errors["inputs"], "check": "dil.export.graph_check, seed 0"}
    manifest.extra["weights"] = record
    write_text(manifest.path, manifest.to_json())
    return manifest


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine", metavar="ARTIFACT")
def main(engine: str) -> None:
    """Add NAME.weights.safetensors to an artifact exported before weights shipped, recovered from
    its float32 ONNX graphs (which stay untouched) and checked to reproduce both of them within 1e-5.

    \b
    Example:
      python -m dil.export.graph_weights engines/metro-traffic.json
    """
    from dil.runtime.manifest import ManifestError

    try:
        manifest = add_weights(engine)
    except (GraphWeightsError, ManifestError) as exc:
        raise click.ClickException(str(exc)) from None
    record = manifest.extra["weights"]
    check = record["reproduces_graphs"]
    errs = check["max_abs_err"]
    click.echo(f"wrote {manifest.path.parent / record['file']} (sha256 {record['sha256']})")
    click.echo(f"torch module vs graphs: max abs error encode {errs['encode']:.2e}, denoise {errs['denoise']:.2e} "
               f"(tolerance {REPRODUCE_TOLERANCE:g}; inputs: {check['inputs']})")
    click.echo(f"updated {manifest.path}")


if __name__ == "__main__":  # pragma: no cover
    main()
