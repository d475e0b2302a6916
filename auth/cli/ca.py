"""`kubejoin ca init`: creates the CA files before deployment (to store them in a Secret)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..service.ca import CertificateAuthority
from ..service.files import ConfigError
from .common import EXIT_OK, EXIT_USAGE, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("ca", help="manage kubejoin's certificate authority")
    actions = parser.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a new CA certificate and key (key file mode 0600)")
    init.add_argument("--cluster-name", required=True, help="the config's cluster_name")
    init.add_argument("--cert-file", default="ca.pem")
    init.add_argument("--key-file", default="ca-key.pem")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    for path in (args.cert_file, args.key_file):
        if os.path.exists(path):
            say(f"kubejoin ca init: {path} exists; refusing to overwrite a CA")
            return EXIT_USAGE
    try:
        CertificateAuthority.generate(args.cluster_name).save(args.cert_file, args.key_file)
    except (OSError, ConfigError) as exc:
        say(f"kubejoin ca init: {exc}")
        return EXIT_USAGE
    say(f"wrote {args.cert_file} and {args.key_file} (mode 0600)")
    return EXIT_OK
