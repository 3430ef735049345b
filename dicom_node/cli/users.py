"""`dicom-node user add NAME --role ROLE` and `dicom-node user token NAME`: the console's and
the REST API's accounts (docs/console.md). No model is loaded here."""

from __future__ import annotations

import argparse
import getpass
import sys

from dicom_node.errors import NodeError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """`user add` and `user token`."""
    from dicom_node.cli import add_config
    from dicom_node.http.auth import ROLES

    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a console user (the password is asked for)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=sorted(ROLES))
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add_config(add)
    add.set_defaults(func=cmd_add)
    token = actions.add_parser("token", help="make a REST API token for a user (shown once)")
    token.add_argument("name", metavar="NAME")
    token.add_argument("--label", default="api", help="what the token is for")
    add_config(token)
    token.set_defaults(func=cmd_token)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise NodeError("the passwords differ")
    return first


def cmd_add(args: argparse.Namespace) -> int:
    """Make the user; exit status 1 with the reason when it cannot be made."""
    from dicom_node.cli.service import settings_of
    from dicom_node.http.auth import AccountError, add_user
    from dicom_node.startup import connect_database

    sessions = connect_database(settings_of(args).database_url)
    try:
        add_user(sessions, args.name, args.role, _password(args))
    except AccountError as exc:
        raise NodeError(str(exc)) from exc
    print(f"user {args.name} ({args.role}) added")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a new token of the user (only its SHA-256 is kept)."""
    from dicom_node.cli.service import settings_of
    from dicom_node.http.auth import AccountError, make_token
    from dicom_node.startup import connect_database

    sessions = connect_database(settings_of(args).database_url)
    try:
        print(make_token(sessions, args.name, args.label))
    except AccountError as exc:
        raise NodeError(str(exc)) from exc
    return 0
