"""`model-registry auth …`: manages a registry's credentials file
(COGMENT_MODEL_REGISTRY_AUTH_FILE) locally, without a server.

    model-registry auth add-token --file F --name NAME --role ROLE   # prints the token, alone
    model-registry auth add-user  --file F --name USER --role ROLE --password-stdin
    model-registry auth add-cert  --file F --name CN   --role ROLE
    model-registry auth remove    --file F --name NAME
    model-registry auth ls        --file F                           # names, kinds, roles

Every command creates the file if it is missing and writes it atomically
with mode 0600 (`model_registry_credentials.save`); a running registry
picks the change up within seconds.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import model_registry_credentials as cf


def add_auth_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `auth` command and its actions, on the CLI's subcommands."""
    auth = commands.add_parser(
        "auth",
        help="manage a registry's credentials file (tokens, users, certificates)",
        description="Manages the file COGMENT_MODEL_REGISTRY_AUTH_FILE names, locally (no registry is called). "
        "The file is created if missing and written atomically, mode 0600. Roles: read, write, admin.",
    )
    actions = auth.add_subparsers(dest="action", required=True, metavar="ACTION")
    file_option = argparse.ArgumentParser(add_help=False)
    file_option.add_argument("--file", required=True, metavar="F", help="the credentials file")
    role_option = argparse.ArgumentParser(add_help=False)
    role_option.add_argument("--role", required=True, choices=cf.ROLES, help="what the identity may do")

    token = actions.add_parser(
        "add-token", parents=[file_option, role_option], help="create a random token; prints it (only once: it is stored hashed)"
    )
    token.add_argument("--name", required=True, help="who holds it (shown in audit lines)")
    user = actions.add_parser("add-user", parents=[file_option, role_option], help="add a user for HTTP Basic")
    user.add_argument("--name", required=True, metavar="USER", help="the user name")
    user.add_argument(
        "--password-stdin", action="store_true", required=True, help="read the password from standard input (first line)"
    )
    cert = actions.add_parser(
        "add-cert", parents=[file_option, role_option], help="give a client certificate's subject CN a role (mTLS)"
    )
    cert.add_argument("--name", required=True, metavar="CN", help="the certificate's subject common name")
    remove = actions.add_parser("remove", parents=[file_option], help="remove an entry by name")
    remove.add_argument("--name", required=True)
    actions.add_parser("ls", parents=[file_option], help="list names, kinds and roles (never secrets)")


def _read_password(stdin: TextIO) -> str:
    line = stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise cf.CredentialsFileError("no password on standard input")
    return password


def run_auth(args: argparse.Namespace, out: TextIO, stdin: TextIO = sys.stdin) -> None:
    """Carries out one `auth` action; CredentialsFileError/OSError on failure."""
    entries = cf.load_or_empty(args.file)
    if args.action == "ls":
        for entry in entries:
            out.write(f"{entry.name}\t{entry.kind}\t{entry.role}\n")
        return
    if args.action == "add-token":
        token = cf.new_token()
        cf.save(args.file, cf.added(entries, cf.Entry(args.name, "token", args.role, cf.token_digest(token))))
        out.write(token + "\n")  # the only line on stdout: `TOKEN=$(model-registry auth add-token …)`
    elif args.action == "add-user":
        password = _read_password(stdin)
        # Checked before scrypt runs: a taken name fails at once.
        cf.added(entries, cf.Entry(args.name, "user", args.role))
        cf.save(args.file, cf.added(entries, cf.Entry(args.name, "user", args.role, cf.hash_password(password))))
    elif args.action == "add-cert":
        cf.save(args.file, cf.added(entries, cf.Entry(args.name, "cert", args.role)))
    elif args.action == "remove":
        cf.save(args.file, cf.removed(entries, args.name))
    else:  # pragma: no cover - argparse only lets known actions through
        raise AssertionError(args.action)
    out.flush()
