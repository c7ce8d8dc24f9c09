"""The layering of DESIGN.md's architecture section: ground floor, methods, top. A module imports only
from its own layer or below (module level and inside functions), and method packages import each other
without cycles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rewardlab"

GROUND = {"io", "errors", "stats", "config", "schema", "models", "sites", "runs", "text", "convert", "review_words",
          "distributed", "heap", "processes"}
METHODS = {"world", "rewards", "sampling", "rl", "dialogue", "diff", "audit", "acts", "probes", "steer", "sae",
           "interp", "value", "organisms"}
TOP = {"stages", "pipeline", "answers", "report", "cli", "__main__"}
LEVEL = {**dict.fromkeys(GROUND, 0), **dict.fromkeys(METHODS, 1), **dict.fromkeys(TOP, 2)}
LAYER_NAMES = ("ground floor", "methods", "top")


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name):
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imported_modules(path):
    """Every rewardlab module `path` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from rewardlab import acts` imports the module rewardlab.acts
            submodules = {f"{module}.{alias.name}" for alias in node.names} if module else set()
            found |= {m for m in submodules if _is_module(m)} or {module}
    return {m for m in found if m.startswith("rewardlab.")}


def _unit(module):
    """The top-level unit under rewardlab (a module or a subpackage), e.g. 'probes'."""
    return module.split(".")[1]


def _imports():
    return {_module_name(p): {m for m in _imported_modules(p) if _unit(m) in LEVEL}
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {_unit(module) for module in _imports() if module != "rewardlab"}
    assert units <= set(LEVEL), f"modules without a layer: {sorted(units - set(LEVEL))}"


def test_no_module_imports_from_a_layer_above_it():
    upward = [f"{module} ({LAYER_NAMES[LEVEL[_unit(module)]]}) imports {target} "
              f"({LAYER_NAMES[LEVEL[_unit(target)]]})"
              for module, targets in _imports().items() if module != "rewardlab"
              for target in sorted(targets) if LEVEL[_unit(target)] > LEVEL[_unit(module)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_method_packages():
    graph = {unit: set() for unit in METHODS}
    for module, targets in _imports().items():
        if module != "rewardlab" and _unit(module) in METHODS:
            graph[_unit(module)].update(_unit(t) for t in targets
                                        if _unit(t) in METHODS and _unit(t) != _unit(module))

    def path_back(start, goal, seen):
        """A path start -> ... -> goal in `graph`, or None."""
        for nxt in sorted(graph[start]):
            if nxt == goal:
                return [start, goal]
            if nxt not in seen:
                rest = path_back(nxt, goal, seen | {nxt})
                if rest:
                    return [start] + rest
        return None

    cycles = {}
    for unit in sorted(graph):
        cycle = path_back(unit, unit, {unit})
        if cycle:
            cycles.setdefault(frozenset(cycle), " -> ".join(cycle))
    assert not cycles, "\n".join(cycles.values())
