"""The champion's trees compiled to native code (treelite + tl2cgen), scored through ``CompiledScorer``'s encoding.

``CompiledScorer`` walks the trees in numpy: a few hundred µs per 100 candidates.
Here the same tree ensemble (``CompiledScorer.head``, already in sklearn's exact
routing) is rebuilt with ``treelite.model_builder``, turned into C by ``tl2cgen`` and
compiled with gcc into a shared library that scores a batch in tens of µs. The
features are encoded by ``CompiledScorer.encode``, so both scorers read the same matrix.

The library is called through one entry point of our own (``BATCH_SOURCE``, compiled
with tl2cgen's sources): it takes the encoded float64 matrix as it is (NaN = missing)
and calls tl2cgen's generated ``predict`` row by row. Against ``tl2cgen.Predictor``
(DMatrix, output shape query, runtime dispatch) that saves about 25 µs per 100-row
batch, a third of the whole, and it fixes an input hazard of the generated code (below).

Routing kept equal to sklearn:
- numeric splits: ``x <= threshold`` with NaN sent the way the split's
  ``missing_go_to_left`` says (treelite's ``default_left``). Thresholds of +inf
  ("missing or not" splits) are capped at the largest float, as in the numpy walk,
  and +inf inputs one ulp below it (the largest float would read as missing, below);
- categorical splits: the left-child category set is the codes 0..255 the split
  (and sklearn's known-categories bitset) sends left; a missing or unseen category
  is NaN in the matrix (``CompiledScorer``'s lookups give nothing else outside the
  known codes) and follows ``default_left`` = the split's ``missing_go_to_left``;
- ``trees_plus_lr``: the logistic-regression weight of each leaf is the leaf's
  value and its intercept the base score; sklearn's DecisionTree compares float32
  inputs, so the entry point rounds each value to float32 first.
The library applies the sigmoid itself.

The hazard: tl2cgen's generated code takes each value as ``union Entry {int missing;
double fvalue;}`` and reads it as missing when ``missing == -1``, i.e. when the
double's low 32 bits are all ones: about one value in 4e9, and the largest float
itself. The entry point moves such a value one ulp toward -inf.

``logistic_regression`` has no trees: a dot product in numpy is already as fast as a
call into a library, so ``build_native`` refuses it (``NotCompilable``) and it is
served by ``CompiledScorer``.

Artifact (``NativeArtifact``): the library plus ``native.json`` (format, family,
sha256 of the skops file it was built from, model version, feature order, platform
tag and libc version, treelite / tl2cgen / compiler versions, entry point, the
library's sha256). ``load_native`` refuses (returns None, with a warning) an
artifact built for another platform, another model or another tl2cgen, or whose
library does not load, so the caller falls back to ``CompiledScorer``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tl2cgen
import treelite
from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

from ml.scorer import Coded, CompiledScorer, _TreeEnsemble

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_NAME = "native.json"
LIBRARY_NAME = "ctr-model.so"
TOOLCHAIN = "gcc"
# -Bsymbolic: the entry point calls this library's own ``predict``, whatever else a process has loaded.
LINK_OPTIONS = ("-Wl,-Bsymbolic",)
ENTRY_POINT = "adstream_predict_batch"
_CODES = 256  # category codes 0..255 (HistGradientBoosting's limit); 256 is the numpy walk's "missing"

# Compiled with tl2cgen's generated sources (header.h declares union Entry and predict).
BATCH_SOURCE = f"""/* Added by ml/native.py: scores a row-major float64 matrix, NaN = missing. */
#include "header.h"

/* The largest float below DBL_MAX: the numpy walk caps +inf inputs and thresholds at DBL_MAX;
   inputs go one ulp lower because DBL_MAX's low word is all ones (read as missing). */
#define BELOW_LARGEST 0x1.ffffffffffffep+1023

void {ENTRY_POINT}(const double* matrix, size_t rows, size_t cols, int float32_inputs, double* out) {{
  union Entry row[cols];
  for (size_t i = 0; i < rows; ++i) {{
    const double* x = matrix + i * cols;
    for (size_t j = 0; j < cols; ++j) {{
      double v = x[j];
      if (v != v) {{ row[j].missing = -1; continue; }}
      if (float32_inputs) v = (double)(float)v;  /* sklearn's DecisionTree compares float32 inputs */
      if (v > BELOW_LARGEST) v = BELOW_LARGEST;
      row[j].fvalue = v;
      if (row[j].missing == -1) {{  /* a value that reads as missing: one ulp toward -inf */
        union {{ double d; uint64_t u; }} bits;
        bits.d = v;
        bits.u = v > 0 ? bits.u - 1 : bits.u + 1;
        row[j].fvalue = bits.d;
      }}
    }}
    out[i] = 0.0;
    predict(row, 0, &out[i]);
  }}
}}
"""


class NotCompilable(ValueError):
    """The model has nothing native code would speed up (a linear head)."""


class CompilerUnavailable(RuntimeError):
    """No C compiler to build the library with (the numpy scorer serves then)."""


def platform_tag() -> str:
    """Where a compiled library runs: OS, CPU architecture and C library, e.g. ``linux-x86_64-glibc``.

    The library links only libc and libm (no Python), so the Python version is not part of it.
    """
    libc, _ = platform.libc_ver()
    return f"{sys.platform}-{platform.machine()}-{libc or 'unknown'}"


def _libc_version() -> tuple[int, ...]:
    _, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def toolchain_version(toolchain: str = TOOLCHAIN) -> str:
    """The first line of ``toolchain --version``; raises ``CompilerUnavailable`` when it is not installed."""
    try:
        done = subprocess.run([toolchain, "--version"], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerUnavailable(f"no C compiler {toolchain!r}: {type(exc).__name__}: {exc}") from exc
    return done.stdout.splitlines()[0].strip()


@dataclass(frozen=True)
class NativeArtifact:
    """A compiled library and its manifest, in memory (a few hundred kB)."""

    manifest: dict[str, Any]
    library: bytes

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.manifest["library"]).write_bytes(self.library)
        (directory / MANIFEST_NAME).write_text(json.dumps(self.manifest, indent=2))
        return directory

    @classmethod
    def read(cls, directory: Path) -> NativeArtifact:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        return cls(manifest, (directory / Path(manifest["library"]).name).read_bytes())  # .name: stays inside

    @property
    def compiler(self) -> str:
        """The versions that built the library, for a tag: ``treelite 4.8.1, tl2cgen 1.0.0, gcc (…) 12.2.0``."""
        versions = self.manifest["compiler"]
        return f"treelite {versions['treelite']}, tl2cgen {versions['tl2cgen']}, {versions['toolchain_version']}"


def _treelite_model(head: _TreeEnsemble, width: int) -> treelite.Model:
    """The numpy walk's flat ensemble (see ``_TreeEnsemble``) as a treelite model, node for node."""
    trees = head.roots.size
    builder = ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=Metadata(
            num_feature=width,
            task_type="kBinaryClf",
            average_tree_output=False,
            num_target=1,
            num_class=[1],
            leaf_vector_shape=(1, 1),
        ),
        tree_annotation=TreeAnnotation(num_tree=trees, target_id=[0] * trees, class_id=[0] * trees),
        postprocessor=PostProcessorFunc(name="sigmoid"),
        base_scores=[head.bias],
    )
    ends = [*head.roots[1:].tolist(), head.column.size]
    for root, end in zip(head.roots.tolist(), ends, strict=True):
        builder.start_tree()
        for node in range(root, end):
            builder.start_node(node)
            left = int(head.first_child[node])
            column = int(head.column[node])
            if left == node:  # a leaf is its own first child
                builder.leaf(float(head.value[node]))
            elif column >= 2 * width:  # categorical split s, decided by its row of split_right
                split = column - 2 * width
                goes_right = head.split_right[split * (_CODES + 1) : (split + 1) * (_CODES + 1)] > 0.5
                builder.categorical_test(
                    int(head.split_feature[split]),
                    default_left=not goes_right[_CODES],
                    category_list=np.flatnonzero(~goes_right[:_CODES]).tolist(),
                    category_list_right_child=False,
                    left_child_key=left,
                    right_child_key=left + 1,
                )
            else:  # columns [0, width) send NaN right, [width, 2 * width) send it left
                builder.numerical_test(
                    column % width,
                    float(head.threshold[node]),
                    default_left=column >= width,
                    opname="<=",
                    left_child_key=left,
                    right_child_key=left + 1,
                )
            builder.end_node()
        builder.end_tree()
    return builder.commit()


@contextlib.contextmanager
def _tl2cgen_log_to_debug() -> Iterator[None]:
    """tl2cgen's native log goes to the process's stdout/stderr: here it goes to this module's debug log.

    Its code generator says a model "originated from a newer Treelite version" (tl2cgen 1.0.0
    embeds treelite 4.1; the model is built with the installed 4.8): harmless here, and the
    equality tests would catch it if it were not, but alarming in a training log.
    """
    captured = io.StringIO()
    with tempfile.TemporaryFile() as native_stderr, contextlib.redirect_stdout(captured):
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(native_stderr.fileno(), 2)  # for the short call that logs; the whole process's fd 2
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        native_stderr.seek(0)
        text = (captured.getvalue() + native_stderr.read().decode(errors="replace")).strip()
    if text:
        logger.debug("tl2cgen: %s", text)


def build_native(
    compiled: CompiledScorer, model_sha256: str, model_version: str | None = None, toolchain: str | None = None
) -> NativeArtifact:
    """Compiles ``compiled``'s tree ensemble to a shared library (seconds; needs a C compiler).

    ``model_sha256`` is the sha256 of the skops file ``compiled`` was built from: the
    artifact is only ever loaded for that model. Raises ``NotCompilable`` for a linear
    head, ``CompilerUnavailable`` without a C compiler.
    """
    toolchain = toolchain or TOOLCHAIN
    head = compiled.head
    if not isinstance(head, _TreeEnsemble):
        raise NotCompilable(f"{compiled.family} has no trees; its numpy scorer is already a dot product")
    compiler_line = toolchain_version(toolchain)
    width = len(compiled.features)
    model = _treelite_model(head, width)
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ctr-native-") as scratch:
        sources = Path(scratch)
        with _tl2cgen_log_to_debug():
            # parallel_comp: the trees are split into this many C files, compiled in parallel.
            tl2cgen.generate_c_code(model, sources, params={"parallel_comp": min(cpus, 8)})
        (sources / "batch.c").write_text(BATCH_SOURCE)
        recipe = json.loads((sources / "recipe.json").read_text())
        recipe["sources"].append({"name": "batch", "length": BATCH_SOURCE.count("\n")})
        (sources / "recipe.json").write_text(json.dumps(recipe))
        library_path = tl2cgen.create_shared(toolchain, sources, nthread=cpus, options=list(LINK_OPTIONS))
        library = Path(library_path).read_bytes()
    manifest = {
        "format": FORMAT,
        "family": compiled.family,
        "model_sha256": model_sha256,
        "model_version": model_version,
        "features": list(compiled.features),
        "float32_inputs": bool(head.float32_inputs),
        "library": LIBRARY_NAME,
        "entry_point": ENTRY_POINT,
        "library_sha256": hashlib.sha256(library).hexdigest(),
        "platform": platform_tag(),
        "libc_version": platform.libc_ver()[1],
        "compiler": {
            "treelite": treelite.__version__,
            "tl2cgen": tl2cgen.__version__,
            "toolchain": toolchain,
            "toolchain_version": compiler_line,
        },
        "built_at": datetime.now(UTC).isoformat(),
    }
    return NativeArtifact(manifest, library)


def mismatch(artifact: NativeArtifact, compiled: CompiledScorer, model_sha256: str) -> str | None:
    """Why ``artifact`` must not score for this model on this machine; None when it may."""
    manifest = artifact.manifest
    if manifest.get("format") != FORMAT:
        return f"manifest format {manifest.get('format')!r}, expected {FORMAT}"
    if manifest.get("model_sha256") != model_sha256:
        return f"built from model sha256 {manifest.get('model_sha256')}, this model is {model_sha256}"
    if manifest.get("platform") != platform_tag():
        return f"built for platform {manifest.get('platform')}, this is {platform_tag()}"
    built_libc = tuple(int(part) for part in str(manifest.get("libc_version", "")).split(".") if part.isdigit())
    if built_libc > _libc_version():
        return f"built against libc {manifest.get('libc_version')}, this has {platform.libc_ver()[1]}"
    compiler = manifest.get("compiler") or {}
    if compiler.get("tl2cgen") != tl2cgen.__version__:
        return f"built by tl2cgen {compiler.get('tl2cgen')}, this runs tl2cgen {tl2cgen.__version__}"
    if tuple(manifest.get("features", ())) != compiled.features or manifest.get("family") != compiled.family:
        return "its family or feature order differs from the model's"
    if hashlib.sha256(artifact.library).hexdigest() != manifest.get("library_sha256"):
        return "the library's sha256 differs from its manifest's: corrupted"
    return None


def load_native(artifact: NativeArtifact, compiled: CompiledScorer, model_sha256: str) -> NativeScorer | None:
    """A ``NativeScorer`` for ``compiled``'s model, or None (with a warning saying why) when ``artifact``
    was built for another platform or model, or its library does not load; the caller then serves
    ``compiled``."""
    problem = mismatch(artifact, compiled, model_sha256)
    if problem is None:
        try:
            entry_point = _load_entry_point(artifact, len(compiled.features))
        except Exception as exc:  # a library that does not load is one reason among others to fall back
            problem = f"its library does not load: {type(exc).__name__}: {exc}"
    if problem is not None:
        logger.warning("native scorer not used (%s); scoring with numpy", problem)
        return None
    return NativeScorer(compiled, entry_point, artifact.manifest)


def _load_entry_point(artifact: NativeArtifact, width: int) -> Any:
    """The library's batch entry point, after checking what tl2cgen compiled into it."""
    with tempfile.TemporaryDirectory(prefix="ctr-native-") as scratch:
        path = Path(scratch) / LIBRARY_NAME
        path.write_bytes(artifact.library)
        # PyDLL keeps the GIL through the call: a batch takes tens of microseconds, and handing the GIL to the
        # service's broker and housekeeping threads for it costs more than it saves (py-spy, bench auction).
        library = ctypes.PyDLL(str(path))  # mapped before the file goes, and it outlives it
    library.get_num_feature.restype = library.get_num_target.restype = ctypes.c_int32
    library.get_threshold_type.restype = library.get_leaf_output_type.restype = ctypes.c_char_p
    compiled_for = (
        library.get_num_feature(),
        library.get_num_target(),
        library.get_threshold_type(),
        library.get_leaf_output_type(),
    )
    if compiled_for != (width, 1, b"float64", b"float64"):
        raise ValueError(f"(features, targets, threshold type, leaf type) {compiled_for}, expected {width} float64")
    entry_point = getattr(library, artifact.manifest["entry_point"])
    entry_point.restype = None
    entry_point.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    return entry_point


class NativeScorer:
    """``CompiledScorer``'s interface (``score``, ``score_records``, ``family``, ``features``), scored by the
    compiled library; equal to the pipeline's ``predict_proba(frame)[:, 1]`` within 1e-6 (tests).

    The library is pure (no state), so any thread may score; a call holds the GIL (``_load_entry_point``).
    """

    kind = "native"

    def __init__(self, compiled: CompiledScorer, entry_point: Any, manifest: Mapping[str, Any]):
        self.family = compiled.family
        self.features = compiled.features
        self.manifest = dict(manifest)
        self._encode = compiled.encode
        self._float32_inputs = int(bool(manifest["float32_inputs"]))
        self._entry_point = entry_point

    def score(self, batch: Mapping[str, Sequence[Any] | np.ndarray | Coded]) -> np.ndarray:
        """pCTRs, one per candidate (same input as ``CompiledScorer.score``)."""
        matrix = np.ascontiguousarray(self._encode(batch), dtype=np.float64)  # as the entry point reads it
        rows, cols = matrix.shape
        out = np.empty(rows)
        if rows:
            self._entry_point(matrix.ctypes.data, rows, cols, self._float32_inputs, out.ctypes.data)
        return out

    def score_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """pCTRs for a list of per-candidate dicts; an absent key counts as missing."""
        return self.score({name: [record.get(name) for record in records] for name in self.features})
