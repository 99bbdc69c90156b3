"""`gptoss audit verify` and `gptoss keys`: the operator's commands for the safety layer.

    gptoss audit verify PATH [PATH ...]     # audit segments (files or directories): hashes, links, sequence numbers
    gptoss audit verify --dsn-env VAR       # the gptoss_audit table of the PostgreSQL in $VAR (or --dsn DSN)
    gptoss keys new NAME                    # a random key: its secret once on stderr, its `keys` entry on stdout
    gptoss keys hash < FILE                 # the sha256 entry of the key on stdin (the key never leaves this machine)

`audit verify` exits 0 when every chain holds (printing each chain's head: its last seq and hash, to keep elsewhere)
and 1 with one line per problem otherwise.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import yaml


def add_commands(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chains of audit records (files or PostgreSQL)")
    verify.add_argument("paths", nargs="*", type=Path, help="audit-*.jsonl files or directories holding them")
    verify.add_argument("--dsn", help="PostgreSQL connection string (its gptoss_audit table)")
    verify.add_argument("--dsn-env", help="environment variable holding the connection string")
    verify.set_defaults(run=run_verify)
    keys = commands.add_parser("keys", help="named API keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="make a random key: the secret once on stderr, the entry on stdout")
    new.add_argument("name", help="the key's name (letters, digits, _ . -)")
    new.set_defaults(run=run_new_key)
    digest = keys.add_parser("hash", help="the sha256 of the key read from stdin, as a `secrets` entry")
    digest.set_defaults(run=run_hash_key)


def run_verify(args: argparse.Namespace) -> int:
    from cluster.audit import read_database, read_files, verify_records  # noqa: PLC0415

    dsn = args.dsn or (os.environ.get(args.dsn_env, "") if args.dsn_env else None)
    if bool(dsn) == bool(args.paths) or (args.dsn_env and not dsn):
        print("give audit files/directories, or one PostgreSQL DSN (--dsn, or --dsn-env naming a set variable)",
              file=sys.stderr)
        return 2
    try:
        lines = read_database(dsn) if dsn else read_files(args.paths)
    except OSError as err:
        print(f"cannot read the audit log: {err}", file=sys.stderr)
        return 2
    report = verify_records(lines)
    for problem in report.problems:
        print(f"FAIL {problem}")
    for chain, (seq, head) in sorted(report.chains.items()):
        print(f"chain {chain}: last seq {seq}, head {head}")
    print(f"{'ok' if report.ok else 'FAILED'}: {report.records} records in {len(report.chains)} chains, "
          f"{len(report.problems)} problems")
    return 0 if report.ok else 1


def run_new_key(args: argparse.Namespace) -> int:
    from cluster.keys import new_key_entry  # noqa: PLC0415

    secret, entry = new_key_entry(args.name)
    print(f"the key (shown once; give it to its holder, it is not stored anywhere): {secret}", file=sys.stderr)
    print(yaml.safe_dump([entry], sort_keys=False), end="")
    return 0


def run_hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.read().strip()
    if len(key) < 8:
        print("give the key (at least 8 characters) on stdin", file=sys.stderr)
        return 2
    print(json.dumps({"sha256": hashlib.sha256(key.encode()).hexdigest()}))
    return 0
