"""The package's shape: one-way imports, small modules, methods only in ssl_jax/methods/,
no hand-made plumbing a maintained library provides, every package declared."""

import ast
import pathlib
import re
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ssl_jax"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
MAX_LINES = 450
METHOD_NAMES = ("ours", "npid", "simclr", "byol", "supervised")
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"absl": "absl-py", "orbax": "orbax-checkpoint", "ml_collections": "ml-collections",
                 "PIL": "pillow", "tensorflow": "tensorflow-cpu",
                 "tensorflow_datasets": "tensorflow-datasets"}


def _modules():
  return {(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
           .removesuffix(".__init__")): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, at any depth: inside functions and under
  `if __name__ == "__main__"` too (a function-level import is still an edge)."""
  found = set()

  def visit(node):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        found.update(a.name for a in child.names)
      elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
        found.add(child.module)
        found.update(f"{child.module}.{a.name}" for a in child.names)
      visit(child)
  visit(ast.parse(path.read_text()))
  return found


def _graph():
  modules = _modules()
  return {m: sorted(i for i in _imports(p) if i in modules and i != m)
          for m, p in modules.items()}


def test_imports_inside_the_package_form_no_cycle():
  graph = _graph()
  state = {}

  def visit(m, stack):
    state[m] = "open"
    for n in graph[m]:
      if n == "ssl_jax" or (m.startswith(n + ".") and n != "ssl_jax"):
        continue   # a module's own package __init__ runs first anyway
      if state.get(n) == "open":
        raise AssertionError(f"import cycle: {' -> '.join(stack + [m, n])}")
      if n not in state:
        visit(n, stack + [m])
    state[m] = "done"
  for m in graph:
    if m not in state:
      visit(m, [])
  # The layers the README describes: the loop and the command lines on top.
  assert "ssl_jax.train" not in {i for m, deps in graph.items() for i in deps
                                 if m not in ("ssl_jax.cli", "ssl_jax.main")}
  evaluation = {m: deps for m, deps in graph.items()
                if m.startswith("ssl_jax.evaluate") and not m.endswith("__main__")}
  assert len(evaluation) >= 5, sorted(evaluation)  # the package's library modules
  for m, deps in evaluation.items():
    # A library: the command line's entry is ssl_jax/evaluate/__main__.py.
    assert not {"ssl_jax.builders", "ssl_jax.cli", "ssl_jax.train"} & set(deps), (m, deps)
  assert "ssl_jax.steps" not in graph["ssl_jax.bank_objective"]


def test_no_module_is_over_the_size_bar():
  experiments = PACKAGE.parent / "experiments"
  sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
  sizes.update({str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines())
                for p in experiments.rglob("*.py")})
  assert max(sizes.values()) <= MAX_LINES, {m: n for m, n in sizes.items() if n > MAX_LINES}


def test_no_method_is_named_outside_the_methods_package():
  offenders = []
  for m, p in _modules().items():
    if m.startswith("ssl_jax.methods"):
      continue
    for node in ast.walk(ast.parse(p.read_text())):
      if isinstance(node, ast.Constant) and node.value in METHOD_NAMES:
        offenders.append(f"{m}:{node.lineno} {node.value!r}")
  assert not offenders, offenders


def test_the_registry_knows_every_built_in_method():
  from ssl_jax import methods
  assert methods.names() == METHOD_NAMES
  assert [methods.get(n).uses_bank for n in METHOD_NAMES] == [True, True, False, False, False]


def test_no_hand_written_event_encoding():
  for m, p in _modules().items():
    text = p.read_text()
    assert "struct" not in _imports(p), m
    assert not re.search(r"crc32|varint", text, re.I), m


def _declared():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  project = tomllib.loads(PYPROJECT.read_text())["project"]
  names = lambda specs: {re.split(r"[<>=\[ ;]", s.strip())[0].lower() for s in specs}
  extras = [s for group in project.get("optional-dependencies", {}).values() for s in group]
  return names(project["dependencies"]), names(extras)


def test_every_imported_package_is_declared_and_every_core_dependency_used():
  core, extras = _declared()
  stdlib = set(sys.stdlib_module_names) | {"__future__"}
  used = set()
  for p in _modules().values():
    for name in _imports(p):
      top = name.split(".")[0]
      if top not in stdlib and top != "ssl_jax":
        used.add(DISTRIBUTIONS.get(top, top).lower())
  assert used <= core | extras, used - core - extras
  assert core <= used, core - used
