"""`make setup` stops with a clear message when a required tool is missing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASICS = ("bash", "env", "dirname", "mkdir", "cat", "sha256sum", "cut", "grep", "head")


def _path_with(tmp_path: Path, *tools: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # The interpreter itself, not a version-manager shim that needs its own PATH.
    (bin_dir / "python3.11").symlink_to(Path(sys.base_prefix) / "bin" / "python3.11")
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _setup(tmp_path: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(ROOT / "infra/setup.sh")],
        env={"PATH": path, "LOCAL_DIR": str(tmp_path / "local"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("present", "message"),
    [
        (BASICS, "java was not found. Install OpenJDK 17"),
        ((*BASICS, "java"), "mvn (Apache Maven) was not found"),
    ],
)
def test_setup_names_the_missing_tool_and_how_to_install_it(tmp_path, present, message):
    result = _setup(tmp_path, _path_with(tmp_path, *present))
    assert result.returncode == 1
    assert message in result.stderr
    assert not (tmp_path / "local" / "jars").exists()
