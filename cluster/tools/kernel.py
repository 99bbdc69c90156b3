"""The python tool's kernel: the program that runs inside the sandbox (standard library only; its source is handed
to the sandbox's interpreter with -c, so nothing of the server's files needs to be visible in there).

Flow: argv = [limits as JSON, marker] -> the resource limits are set from inside the sandbox's own user namespace
(RLIMIT_NPROC then counts only the sandbox's processes) -> cells arrive on stdin as JSON lines -> each runs in one
namespace kept across cells, as a notebook does (the last expression's value is printed) -> stdout and stderr are the
same pipe; after a cell the kernel flushes them and writes `\\0MARKER:ok|error\\n`, which ends the cell's output.
"""

import ast
import json
import os
import resource
import sys
import traceback


def apply_limits(limits: dict) -> None:
    for name, value in limits.items():
        what = getattr(resource, name)
        soft = value
        hard = value + 5 if name == "RLIMIT_CPU" else value  # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(what, (soft, hard))


def run_cell(code: str, namespace: dict) -> None:
    tree = ast.parse(code, "<cell>", "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)  # noqa: S102 - running the model's code is this tool's job
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)  # noqa: S307
        if value is not None:
            print(repr(value))


def report(err: BaseException) -> None:
    """The traceback from the cell's own frames on (the kernel's are left out)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
        tb = tb.tb_next
    traceback.print_exception(type(err), err, tb)


def main() -> None:
    limits, marker = json.loads(sys.argv[1]), sys.argv[2]
    cells = os.fdopen(os.dup(0), "r")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the cell's input() reads nothing; cells come on the kernel's own descriptor
    sys.stdin = open(os.devnull)  # noqa: SIM115
    apply_limits(limits)
    namespace = {"__name__": "__main__"}
    del limits
    for line in cells:
        ok = True
        try:
            run_cell(json.loads(line)["code"], namespace)
        except BaseException as err:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, MemoryError: all reported
            ok = False
            report(err)
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(1, f"\0{marker}:{'ok' if ok else 'error'}\n".encode())


if __name__ == "__main__":
    main()
