"""The chart tests run the real helm and promtool (fetched by tests/helm/tools.py); a run ends with their versions."""

from tests.helm import tools


def pytest_terminal_summary(terminalreporter):
    try:
        line = ", ".join(f"{name} {version}" for name, version in tools.versions().items())
    except tools.ToolError as err:  # the tests that need the tool fail with this message too
        line = str(err)
    terminalreporter.write_line(f"chart tools: {line}")
