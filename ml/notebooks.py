"""Executing the repository's notebooks headless (make targets and tests), in a fresh kernel on this venv.

The kernel is ipykernel's own ``python3``, i.e. ``sys.executable``: a python3 kernelspec
installed for the user (``~/.local/share/jupyter``) may point at another interpreter
without AdStream's packages. It starts in the repository root, so ``import ml`` works.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300
PARAMETERS_TAG = "parameters"  # papermill's convention: the cell whose values a run may override


class VenvKernelManager(AsyncKernelManager):
    """Resolves ``python3`` to ipykernel's built-in spec only, which runs this interpreter."""

    @default("kernel_spec_manager")
    def _builtin_specs_only(self) -> KernelSpecManager:
        return KernelSpecManager(kernel_dirs=[])


def with_parameters(notebook: nbformat.NotebookNode, parameters: Mapping[str, Any]) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with a cell assigning ``parameters`` right after the cell tagged ``parameters``."""
    notebook = nbformat.from_dict(notebook)
    if not parameters:
        return notebook
    cell = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    tagged = [i for i, c in enumerate(notebook.cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    notebook.cells.insert(tagged[0] + 1 if tagged else 0, cell)
    return notebook


def execute_notebook(
    source: Path,
    target: Path,
    *,
    timeout_s: int = CELL_TIMEOUT_S,
    parameters: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> Path:
    """Executes ``source`` top to bottom and writes the executed copy to ``target``.

    ``env`` is the kernel's whole environment (default: this process's). The copy is
    written even when a cell fails, so the error can be read in context; the
    ``nbclient.exceptions.CellExecutionError`` is then re-raised.
    """
    notebook = with_parameters(nbformat.read(source, as_version=4), parameters or {})
    client = NotebookClient(
        notebook,
        timeout=timeout_s,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=VenvKernelManager,
        resources={"metadata": {"path": str(cwd)}},
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.execute(**({"env": dict(env)} if env is not None else {}))
    finally:
        nbformat.write(notebook, target)
    return target
