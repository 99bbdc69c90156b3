"""The python sandbox against escape attempts, each of which must fail with a clear error while the session (or a
fresh one) keeps working: the network, writing outside the scratch directory, reading the server's files and
environment, a fork bomb, an endless loop, 10 GB of memory, 100 MB of output, a CPU hog past its time."""

import asyncio
import os
import shutil

import pytest

from cluster.tools.config import PythonToolConfig
from cluster.tools.python import PythonTool

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (apt-get install bubblewrap; .ci/run does)")
pytestmark = needs_bwrap
SECRET = "gptoss-test-secret-4711"


class Harness:
    """A PythonTool and the one event loop its sessions live on."""

    def __init__(self, config):
        self.loop, self.tool = asyncio.new_event_loop(), PythonTool(config)

    def __call__(self, coro):
        return self.loop.run_until_complete(coro)

    async def run(self, conversation: str, code: str, earlier: bool):
        return await self.tool.run(conversation, code, earlier)


@pytest.fixture
def tool():
    os.environ["GPTOSS_TEST_SECRET"] = SECRET  # in the server's environment, never in the sandbox's
    config = PythonToolConfig(enabled=True, timeout_s=5, cpu_s=3, max_processes=8, max_output_bytes=4096,
                              memory_bytes=512 << 20, scratch_bytes=8 << 20)
    h = Harness(config)
    yield h
    h(h.tool.close())
    h.loop.close()
    os.environ.pop("GPTOSS_TEST_SECRET", None)


def run(tool, *cells, conversation="c1"):
    async def go():
        assert await tool.tool.unavailable() is None
        return [await tool.run(conversation, cell, False) for cell in cells]
    return tool(go())


def test_state_persists_and_the_last_value_shows(tool):
    a, b, c = run(tool, "x = 40", "x + 2", "print(open('/mnt/data/f', 'w').write('hi'), sorted(__import__('os')"
                                           ".listdir('/mnt/data')))")
    assert (a.text, b.text, c.text) == ("", "42\n", "2 ['f']\n") and not any(r.failed for r in (a, b, c))


def test_no_network(tool):
    port = os.environ.get("GPTOSS_TEST_PORT", "8000")
    local, remote = run(tool, f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                        "import urllib.request; urllib.request.urlopen('http://example.com', timeout=2)")
    assert "ConnectionRefusedError" in local.text or "Network is unreachable" in local.text
    assert "URLError" in remote.text


def test_no_writing_outside_scratch(tool):
    for path in ("/usr/evil", "/evil", "/proc/evil", os.getcwd() + "/evil"):
        (result,) = run(tool, f"open({path!r}, 'w').write('x')")
        assert "Error" in result.text, (path, result.text)
        assert not os.path.exists(path)


def test_no_reading_the_servers_files_or_environment(tool):
    here = os.path.abspath(__file__)
    files, env, proc = run(tool, f"open({here!r}).read()", "import os; print(dict(os.environ))",
                           "import os; print(sorted(os.listdir('/')), [p for p in os.listdir('/proc') "
                           "if p.isdigit()])")
    assert "FileNotFoundError" in files.text
    assert SECRET not in env.text and "GPTOSS" not in env.text and "RAY" not in env.text
    assert "work" not in proc.text and "root" not in proc.text and "home" not in proc.text


def test_fork_bomb_hits_the_process_limit(tool):
    bomb, after = run(tool, "import os\nfor _ in range(200):\n    os.fork() or __import__('time').sleep(60)",
                      "print('alive')")
    assert "Resource temporarily unavailable" in bomb.text or bomb.failed
    assert after.text.endswith("alive\n") or "new python session" in after.text or after.text == "alive\n"


def test_endless_loop_is_stopped_and_a_fresh_session_follows(tool):
    loop, after = run(tool, "x = 1\nwhile True: pass", "print('again')")
    assert loop.failed and ("ran past the 5 s limit" in loop.text or "CPU time limit is 3 s" in loop.text)
    assert after.text == "again\n" and not after.failed


def test_ten_gigabytes_of_memory_fail(tool):
    (big,) = run(tool, "b = bytearray(10 * 2**30)")
    assert "MemoryError" in big.text


def test_a_hundred_megabytes_of_output_are_cut(tool):
    (out,) = run(tool, "print('y' * 100_000_000)")
    assert len(out.text.encode()) < 4096 + 200 and "more bytes of output dropped" in out.text


def test_cpu_hog_in_a_child_is_stopped_by_its_time_limit(tool):
    (hog,) = run(tool, "import os, time\nif os.fork() == 0:\n    while True: pass\ntime.sleep(8)")
    assert hog.failed  # the 5 s wall clock (or the child's 3 s CPU limit) ends it


def test_sessions_are_per_conversation(tool):
    async def go():
        await tool.run("a", "v = 'a'", False)
        await tool.run("b", "v = 'b'", False)
        return (await tool.run("a", "v", False)).text, (await tool.run("b", "v", True)).text
    assert tool(go()) == ("'a'\n", "'b'\n")


def test_a_lost_session_is_announced(tool):
    (fresh,) = run(tool, "print(1)", conversation="earlier")
    assert fresh.text == "1\n"
    again = tool(tool.run("never-seen", "print(2)", True))
    assert again.text.startswith("[a new python session was started") and again.text.endswith("2\n")
