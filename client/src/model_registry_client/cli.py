"""`model-registry`: the registry from the command line.

Exit codes: 0 ok, 1 other error (and `import-cogment-archive` skipped
something), 2 usage, 3 not found, 4 invalid argument, 5 data integrity,
6 no or refused credential, or a role that does not allow the call.
Errors are one line on stderr: ``error: CODE: message``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import model_registry_credentials

from . import errors
from ._common import ADDRESS_ENV, DEFAULT_ADDRESS, PASSWORD_ENV, TOKEN_ENV
from .auth_commands import add_auth_parser, run_auth
from .client import RegistryClient
from .cogment_archive import ArchiveError, ArchiveImporter, summary_dict, summary_lines
from .progress import ProgressBar, format_bytes
from .records import ModelInfo, VersionInfo
from .tls import CA_CERT_ENV, CERT_ENV, KEY_ENV

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID, EXIT_INTEGRITY = 0, 1, 2, 3, 4, 5
EXIT_NOT_ALLOWED = 6
EXIT_INTERRUPTED = 130


def exit_code(error: BaseException) -> int:
    """The exit code for an error."""
    if isinstance(error, errors.NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, errors.InvalidArgumentError):
        return EXIT_INVALID
    if isinstance(error, errors.DataIntegrityError):
        return EXIT_INTEGRITY
    if isinstance(error, (errors.UnauthenticatedError, errors.PermissionDeniedError)):
        return EXIT_NOT_ALLOWED
    return EXIT_ERROR


def error_line(error: BaseException) -> str:
    """``error: NOT_FOUND: model 'x' not found``, on one line."""
    if isinstance(error, OSError) and error.strerror:
        message = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        message = str(error) or type(error).__name__
    message += credential_hint(error)
    return "error: " + " ".join(message.splitlines())


def credential_hint(error: BaseException) -> str:
    """What to do about a refused call, appended to its error line."""
    if isinstance(error, errors.UnauthenticatedError):
        return " (the registry wants a credential: pass --token or --user)"
    if isinstance(error, errors.PermissionDeniedError):
        return " (ask the registry's admin for a credential with that role)"
    return ""


def add_credential_options(parser: argparse.ArgumentParser) -> None:
    """--token / --user, accepted before or after the subcommand."""
    parser.add_argument(
        "--token", default=argparse.SUPPRESS, help=f"bearer token (default: ${TOKEN_ENV})"
    )
    parser.add_argument(
        "--user",
        default=argparse.SUPPRESS,
        help=f"user for HTTP Basic; the password comes from ${PASSWORD_ENV} (else a prompt on a terminal)",
    )


def client_credentials(args: argparse.Namespace) -> dict[str, str | None]:
    """The RegistryClient arguments for the credential the command line names."""
    user = getattr(args, "user", None)
    password = None
    if user and os.environ.get(PASSWORD_ENV) is None:
        if not sys.stdin.isatty():
            raise ValueError(f"--user {user} needs a password: set ${PASSWORD_ENV}")
        import getpass

        password = getpass.getpass(f"password for {user}: ")
    return {"token": getattr(args, "token", None), "user": user, "password": password}


def parse_meta(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["k=v", "a=b=c"]`` → ``{"k": "v", "a": "b=c"}``; ValueError on a pair without ``=``."""
    meta: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta {pair!r} is not KEY=VALUE")
        meta[key] = value
    return meta


def build_parser() -> argparse.ArgumentParser:
    # --addr/--json are accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--addr",
        default=argparse.SUPPRESS,
        help=f"registry address (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    add_tls_arguments(common)
    add_credential_options(common)
    meta = argparse.ArgumentParser(add_help=False)
    meta.add_argument("--meta", action="append", metavar="KEY=VALUE", help="user data (repeatable)")

    parser = argparse.ArgumentParser(
        prog="model-registry",
        parents=[common],
        description="Manage models and versions in a model registry (cogmentAPI.ModelRegistrySP).",
        epilog="Bearer token: --token or $MODEL_REGISTRY_TOKEN; HTTP Basic: --user with $MODEL_REGISTRY_PASSWORD. "
        "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 invalid argument, 5 data integrity, "
        "6 credential missing, refused or not allowed.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list, create and delete models")
    models_commands = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    models_commands.add_parser("ls", parents=[common], help="list models")
    create = models_commands.add_parser("create", parents=[common, meta], help="create a model (or set its user data)")
    create.add_argument("model_id", metavar="ID")
    remove = models_commands.add_parser("rm", parents=[common], help="delete a model and all its versions")
    remove.add_argument("model_id", metavar="ID")

    push = commands.add_parser("push", parents=[common, meta], help="push a file as a new version")
    push.add_argument("model_id", metavar="ID")
    push.add_argument("file", metavar="FILE", help="the data ('-' for standard input)")
    push.add_argument("--archive", action="store_true", help="store durably (default: transient, in memory)")

    pull = commands.add_parser("pull", parents=[common], help="download a version's data")
    pull.add_argument("model_id", metavar="ID")
    pull.add_argument("version", metavar="VERSION", type=int, nargs="?", default=-1, help="number, or -1 latest (default), -2…")
    pull.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write ('-' for standard output)")

    versions = commands.add_parser("versions", help="list and show versions")
    versions_commands = versions.add_subparsers(dest="action", required=True, metavar="ACTION")
    versions_ls = versions_commands.add_parser("ls", parents=[common], help="list a model's versions")
    versions_ls.add_argument("model_id", metavar="ID")
    show = versions_commands.add_parser("show", parents=[common], help="show one version (-1: latest)")
    show.add_argument("model_id", metavar="ID")
    show.add_argument("version", metavar="VERSION", type=int)

    watch = commands.add_parser("watch", parents=[common], help="print the latest version, then each new one")
    watch.add_argument("model_id", metavar="ID")

    archive = commands.add_parser(
        "import-cogment-archive",
        parents=[common],
        help="import the original Cogment Model Registry's archive directory (admin)",
        description="Imports every model and archived version of an original Cogment Model Registry's archive "
        "directory (COGMENT_MODEL_REGISTRY_ARCHIVE_DIR of the Go registry) with their numbers, timestamps, "
        "user_data and bytes, each verified against its data_hash and data_size. Running it again imports "
        "nothing new. Exit code 1 when anything was skipped.",
    )
    archive.add_argument("directory", metavar="DIR")
    add_auth_parser(commands)
    return parser


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """--ca-cert, --cert, --key (accepted before or after the subcommand)."""
    parser.add_argument(
        "--ca-cert",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"TLS: the CA (PEM) the registry's certificate chains to (default: ${CA_CERT_ENV})",
    )
    parser.add_argument(
        "--cert",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"mTLS: this client's certificate chain (PEM; default: ${CERT_ENV})",
    )
    parser.add_argument(
        "--key", default=argparse.SUPPRESS, metavar="FILE", help=f"mTLS: its private key (PEM; default: ${KEY_ENV})"
    )


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `RegistryClient` keyword arguments of the TLS flags given."""
    return {name: getattr(args, name) for name in ("ca_cert", "cert", "key") if hasattr(args, name)}


# -- output ------------------------------------------------------------------


def _user_data(user_data: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(user_data.items())) or "-"


def _version_row(info: VersionInfo) -> list[str]:
    return [
        str(info.version_number),
        info.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "archived" if info.archived else "transient",
        format_bytes(info.data_size),
        info.data_hash,
        _user_data(info.user_data),
    ]


def _table(rows: Iterable[list[str]], out: TextIO) -> None:
    rows = list(rows)
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


class Output:
    """Human-readable or JSON output on stdout."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json, self.out = as_json, out

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, sort_keys=True) + "\n")
        self.out.flush()

    def models(self, models: Iterable[ModelInfo]) -> None:
        if self.as_json:
            self.json([m.to_dict() for m in models])
        else:
            _table(([m.model_id, _user_data(m.user_data)] for m in models), self.out)

    def versions(self, versions: Iterable[VersionInfo]) -> None:
        if self.as_json:
            self.json([v.to_dict() for v in versions])
        else:
            _table((_version_row(v) for v in versions), self.out)

    def version(self, info: VersionInfo, **extra: str) -> None:
        if self.as_json:
            self.json({**info.to_dict(), **extra})
            return
        fields = {
            "model": info.model_id,
            "version": str(info.version_number),
            "created": info.created.isoformat(),
            "storage": "archived" if info.archived else "transient",
            "size": f"{info.data_size} ({format_bytes(info.data_size)})",
            "sha256": info.data_hash,
            "user data": _user_data(info.user_data),
            **extra,
        }
        for key, value in fields.items():
            self.out.write(f"{key + ':':<11}{value}\n")
        self.out.flush()

    def update(self, info: VersionInfo) -> None:
        """One line per version (`watch`)."""
        if self.as_json:
            self.json(info.to_dict())
        else:
            self.out.write("  ".join([info.model_id, *_version_row(info)]) + "\n")
            self.out.flush()


# -- commands ----------------------------------------------------------------


def _progress(label: str) -> ProgressBar | None:
    return ProgressBar(label) if sys.stderr.isatty() else None


def run(args: argparse.Namespace, client: RegistryClient, output: Output) -> None:
    """Carries out one parsed command."""
    if args.command == "import-cogment-archive":
        import_archive(args, client, output)
        return
    command = args.command if args.command in ("push", "pull", "watch") else f"{args.command} {args.action}"
    if command == "models ls":
        output.models(client.list_models())
    elif command == "models create":
        model = client.create_model(args.model_id, parse_meta(args.meta))
        if output.as_json:
            output.json(model.to_dict())
    elif command == "models rm":
        client.delete_model(args.model_id)
    elif command == "versions ls":
        output.versions(client.list_versions(args.model_id))
    elif command == "versions show":
        output.version(client.get_version(args.model_id, args.version))
    elif command == "push":
        source = sys.stdin.buffer if args.file == "-" else args.file
        bar = _progress(f"push {args.model_id}")
        try:
            pushed = client.push(args.model_id, source, archived=args.archive, user_data=parse_meta(args.meta), progress=bar)
        finally:
            if bar:
                bar.close()
        output.version(pushed)
    elif command == "pull":
        bar = _progress(f"pull {args.model_id}")
        try:
            if args.output == "-":
                data = client.pull(args.model_id, args.version, progress=bar)
            else:
                pulled = client.pull(args.model_id, args.version, dest=args.output, progress=bar)
        finally:
            if bar:
                bar.close()
        if args.output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            output.version(pulled, path=args.output)
    elif command == "watch":
        for update in client.follow(args.model_id):
            output.update(update)
    else:  # pragma: no cover - argparse only lets known commands through
        raise AssertionError(command)


class ImportIncomplete(Exception):
    """`import-cogment-archive` skipped something (the summary says what)."""


def import_archive(args: argparse.Namespace, client: RegistryClient, output: Output) -> None:
    """`import-cogment-archive DIR`: imports, then prints the summary;
    raises ImportIncomplete when anything was skipped."""
    importer = ArchiveImporter(
        client, progress=_progress if sys.stderr.isatty() else None, log=lambda line: print(line, file=sys.stderr)
    )
    summary = importer.run(Path(args.directory))
    if output.as_json:
        output.json(summary_dict(summary))
    else:
        for line in summary_lines(summary):
            output.out.write(line + "\n")
        output.out.flush()
    if summary.skipped:
        raise ImportIncomplete(f"{len(summary.skipped)} skipped")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `model-registry`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_meta(getattr(args, "meta", None))
    except ValueError as exc:
        parser.error(str(exc))
    output = Output(getattr(args, "json", False), sys.stdout)
    if args.command == "auth":
        return main_auth(args)
    try:
        with RegistryClient(getattr(args, "addr", None), **client_credentials(args), **tls_options(args)) as client:
            run(args, client, output)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ImportIncomplete:
        return EXIT_ERROR
    except ArchiveError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_INVALID
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except (errors.RegistryError, OSError, ValueError) as exc:
        print(error_line(exc), file=sys.stderr)
        return exit_code(exc)
    return EXIT_OK


def main_auth(args: argparse.Namespace) -> int:
    """`model-registry auth …` (no registry is called)."""
    try:
        run_auth(args, sys.stdout)
    except model_registry_credentials.CredentialsFileError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
