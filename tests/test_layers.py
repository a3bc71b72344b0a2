"""The package keeps its layer order: every import (module level and inside functions) points down the data
flow, never up. Layers, from the bottom (DESIGN.md, README "Architecture"):

    0  errors, constants, files, checkpoint          shared by all
    1  audio, head, render, kernels, models,          leaves: pure functions and Flax modules
       watermark, image_metrics, media
    2  data                                           prepared-dataset format, ingest, tracking, loader
    3  avatar, priors, workdir                        one identity's parts; prior and workdir formats
    4  train                                          the training core and its configurations
    5  infer, eval                                    use an adapted workdir through `workdir`
    6  cli, demo                                      the `ggtalker` command; nothing below imports it
"""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
LAYERS = {
    0: ("errors", "constants", "files", "checkpoint", ""),
    1: ("audio", "head", "render", "kernels", "models", "watermark", "image_metrics", "media"),
    2: ("data",),
    3: ("avatar", "priors", "workdir"),
    4: ("train",),
    5: ("infer", "eval"),
    6: ("cli", "demo"),
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def _modules():
    """(dotted module name, path) of every module of the installed package (kernels/ is ggtalker_jax.kernels)."""
    for root, prefix in ((REPO / "ggtalker_jax", "ggtalker_jax"), (REPO / "kernels", "ggtalker_jax.kernels")):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([prefix, *parts]), path


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") >= 1 else ""
    assert top in LAYER_OF, f"{module}: package {top!r} has no layer in tests/test_layers.py; add it"
    return LAYER_OF[top]


def _imports(module: str, path: pathlib.Path):
    """Every ggtalker_jax module `module` imports (absolute and relative, at any depth of the code)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ggtalker_jax"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("ggtalker_jax"):
                # `from ggtalker_jax import data` imports the subpackage `ggtalker_jax.data`
                if name == "ggtalker_jax":
                    for alias in node.names:
                        yield f"ggtalker_jax.{alias.name}", node.lineno
                else:
                    yield name, node.lineno


def test_every_module_has_a_layer():
    for module, _ in _modules():
        _layer(module)


def test_imports_point_down_the_layers():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        for target, line in _imports(module, path):
            if target == "ggtalker_jax":
                continue
            if _layer(target) > own:
                upward.append(f"{path.relative_to(REPO)}:{line} ({module}, layer {own}) imports {target} "
                              f"(layer {_layer(target)})")
    assert not upward, "imports that point up the layer order:\n" + "\n".join(upward)


def test_the_walker_sees_function_level_imports(tmp_path):
    """The checker itself: an import inside a function body is found (so a hidden upward edge cannot pass)."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from ggtalker_jax.cli import main\n    return main\n")
    assert list(_imports("ggtalker_jax.head.probe", path)) == [("ggtalker_jax.cli", 2)]
