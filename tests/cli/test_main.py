"""The `adstream` root: product commands load on demand, tool commands come from entry points."""

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli import main as cli_main
from cli.main import COMMANDS, add_tool_commands, app, load_command

ADSTREAM = Path(sys.executable).with_name("adstream")


def test_every_product_command_loads_under_its_name():
    for name in COMMANDS:
        command = load_command(name)
        assert command.name == name or name == "campaigns", name
    assert set(load_command("campaigns").commands) == {"create", "stop", "show", "seed"}


def test_help_lists_every_command_without_importing_them():
    probe = """
import sys
from typer.testing import CliRunner
from cli.main import app
result = CliRunner().invoke(app, ["--help"], prog_name="adstream")
assert result.exit_code == 0, result.output
print(result.stdout)
print(sorted(name for name in sys.modules if name.startswith("cli.commands.")))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    *help_lines, loaded = result.stdout.strip().splitlines()
    assert loaded == "[]"
    listed = {line.split()[0] for line in help_lines if line.startswith("  ") and not line.startswith("   ")}
    assert set(COMMANDS) <= listed


def test_a_health_check_loads_no_tool_code_and_neither_mlflow_nor_great_expectations(tmp_path):
    probe = """
import sys
from cli.main import main
for args in (["stream", "--check"], ["ad-manager", "--check"]):
    sys.argv = ["adstream", *args]
    try:
        main()
    except SystemExit as exc:
        assert exc.code == 1, (args, exc.code)  # nothing runs here
heavy = ("mlflow", "great_expectations", "sklearn", "fastapi")
tools = ("simulator", "benchmarks", "devstack")
# a tool's command listing (its cli module) is all a product command may load of it
tool_code = [name for name in sys.modules
             if name.partition(".")[0] in tools and name.partition(".")[2] not in ("", "cli")]
print(sorted([*(name for name in heavy if name in sys.modules), *tool_code]))
"""
    env = {"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path / "local"), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def _entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=cli_main.ENTRY_POINT_GROUP)


def test_tool_commands_join_the_top_level_and_an_absent_tool_package_is_skipped(monkeypatch, tmp_path):
    tool = tmp_path / "fake_tool"
    tool.mkdir()
    (tool / "__init__.py").write_text("")
    (tool / "cli.py").write_text(
        "import typer\napp = typer.Typer()\n\n@app.command()\ndef hello() -> None:\n    print('hello from a tool')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [_entry_point("fake", "fake_tool.cli:app"), _entry_point("absent", "no_such_tool_package.cli:app")]
    monkeypatch.setattr(cli_main, "entry_points", lambda group: points)
    root = typer.Typer(cls=cli_main.AdstreamCommands, rich_markup_mode=None)
    root.callback()(lambda: None)
    assert add_tool_commands(root) == ["fake"]
    result = CliRunner().invoke(root, ["hello"])
    assert result.exit_code == 0 and result.stdout == "hello from a tool\n"
    assert "hello" in CliRunner().invoke(root, ["--help"]).stdout


def test_a_tool_that_is_installed_but_broken_raises(monkeypatch, tmp_path):
    tool = tmp_path / "broken_tool"
    tool.mkdir()
    (tool / "__init__.py").write_text("")
    (tool / "cli.py").write_text("import no_such_dependency_of_the_tool\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_main, "entry_points", lambda group: [_entry_point("broken", "broken_tool.cli:app")])
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_tool"):
        add_tool_commands(typer.Typer())


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["no-such-command"], prog_name="adstream")
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.stderr


@pytest.mark.parametrize("launcher", [[str(ADSTREAM)], [sys.executable, "-m", "cli"]], ids=["script", "python -m"])
def test_the_console_script_and_python_m_cli_run_the_same_app(launcher):
    result = subprocess.run([*launcher, "campaigns", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "create" in result.stdout and "seed" in result.stdout
