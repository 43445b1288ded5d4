"""Model management commands: keys, signing, verification, the device's model store, and pushes.

Run as ``emotion-edge COMMAND`` (:mod:`edge.cli`) and, on devices by name, as ``python -m edge.modelctl COMMAND``::

    keygen KEY                     new Ed25519 keypair (KEY and KEY.pub)
    sign BUNDLE --key KEY          write BUNDLE/manifest.sig
    verify-bundle BUNDLE           manifest, sha256, tensors vs manifest, smoke inference (+ signature with --trusted-key)
    install-bundle BUNDLE          copy into the device's model store (--activate: make it current)
    rollback                       make the previous model current again
    models                         list the model store
    push-mqtt BUNDLE --device-id D sign (with --key) and publish to a device or --group, print the results
    push-ssh BUNDLE --inventory F  copy, verify, swap and reload on every host of an inventory

Expected failures print one line on stderr and exit with status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """An expected failure: print the message, exit 1."""


def _state_dir(args: argparse.Namespace) -> Path:
    from edge.config import load_config

    if args.state_dir:
        return Path(args.state_dir)
    return load_config(args.config).state_dir()


def _add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="Device state folder (default: from --config, else "
                   "$STATE_DIRECTORY, else /var/lib/emotion-edge as root, else ~/.local/state/emotion-edge).")
    p.add_argument("--config", type=Path, metavar="FILE", help="Device config file (TOML), for its state folder.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all model commands."""
    from edge.cli_common import top_parser

    parser, common = top_parser("python -m edge.modelctl", __doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub, [common])
    return parser


def add_subcommands(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add the model commands to an existing subparsers object (used by :mod:`edge.cli`); each sub-command takes
    the flags of ``parents`` and runs through :func:`run_command`."""
    from edge.protocol.broker import add_broker_flags

    def add(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, parents=parents)
        parser.set_defaults(func=run_command)
        return parser

    p = add("keygen", help="Generate an Ed25519 signing keypair.")
    p.add_argument("key", help="Private key file to write (keep it on the workstation); the public key goes to KEY.pub.")
    p.add_argument("--public", help="Public key file (default KEY.pub).")
    p.add_argument("--force", action="store_true", help="Overwrite existing key files.")

    p = add("sign", help="Sign a model bundle (writes manifest.sig).")
    p.add_argument("bundle", help="Bundle folder (model.tflite + manifest.json).")
    p.add_argument("--key", required=True, help="Ed25519 private key (from keygen).")

    p = add("verify-bundle", help="Check a bundle: manifest, sha256, tensors, smoke inference.")
    p.add_argument("bundle", help="Bundle folder.")
    p.add_argument("--trusted-key", action="append", default=[], help="Also require a valid signature by this public key.")
    p.add_argument("--threads", type=int, default=1, help="Interpreter threads.")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")

    p = add("install-bundle", help="Copy a bundle into the device's model store.")
    p.add_argument("bundle", help="Bundle folder (verify it first).")
    p.add_argument("--activate", action="store_true", help="Make it the current model (old one becomes previous).")
    p.add_argument("--verify", action="store_true", help="Run verify-bundle's checks first (errors start with 'verify:').")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    _add_state_args(p)

    p = add("rollback", help="Make the previous model current again.")
    _add_state_args(p)

    p = add("models", help="List the device's model store.")
    _add_state_args(p)

    p = add("push-mqtt", help="Publish a signed bundle to a device or group over MQTT.")
    p.add_argument("bundle", help="Bundle folder.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device-id", metavar="ID", help="Target device id.")
    target.add_argument("--device", dest="device_id", help=argparse.SUPPRESS)
    target.add_argument("--group", help="Target group (devices list it in model_push.groups).")
    p.add_argument("--key", help="Sign with this private key first (else the bundle must hold manifest.sig).")
    add_broker_flags(p)
    p.add_argument("--wait", type=float, default=60.0, help="Seconds to wait for device results (0: do not wait).")
    p.add_argument("--expect", type=int, help="Results to wait for (default 1 for a device; a group waits --wait).")
    p.add_argument("--retain", action="store_true",
                   help="Retain the push for devices that are offline now (without it, an older retained push is cleared).")
    p.add_argument("--settle", type=float, default=3.0,
                   help="Seconds to keep listening after the expected results, for a rollback on the first frames (default 3).")

    p = add("push-ssh", help="Push a bundle over SSH to hosts of an inventory.")
    p.add_argument("bundle", help="Bundle folder.")
    p.add_argument("--inventory", required=True, help="Inventory TOML (see deploy/inventory.example.toml).")
    p.add_argument("--host", action="append", dest="hosts", help="Only this host (repeatable).")
    p.add_argument("--group", help="Only hosts in this group.")
    p.add_argument("--parallel", type=int, default=4, help="Hosts handled at once.")


def _cmd_keygen(args: argparse.Namespace) -> int:
    from edge.protocol.signing import generate_keypair

    try:
        kid = generate_keypair(args.key, args.public, overwrite=args.force)
    except FileExistsError as exc:
        raise CommandFailed(str(exc)) from None
    pub = args.public or args.key + ".pub"
    print(f"key {kid}: private {args.key} (keep secret), public {pub} (list it in model_push.trusted_keys)")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from edge.protocol.signing import sign_bundle

    sig = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} with key {sig.key_id}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from edge.protocol.signing import verify_bundle
    from edge.runtime.models.check import check_bundle

    key = verify_bundle(args.bundle, args.trusted_key) if args.trusted_key else None
    manifest, runtime = check_bundle(args.bundle, num_threads=args.threads)
    result = {"ok": True, "model_id": manifest.model_id, "sha256": manifest.sha256, "labels": manifest.labels,
              "runtime": runtime, "signed_by": key}
    if args.json:
        print(json.dumps(result))
    else:
        signed = f", signed by {key}" if key else ""
        print(f"bundle OK: {manifest.model_id} ({len(manifest.labels)} labels, runtime {runtime}{signed})")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from edge.bundle import BundleError, read_manifest
    from edge.runtime.models.store import ModelStore

    if args.verify:
        from edge.runtime.classify.interpreter import RuntimeMissing
        from edge.runtime.models.check import check_bundle

        try:
            check_bundle(args.bundle)
        except (BundleError, RuntimeMissing) as exc:
            raise CommandFailed(f"verify: {exc}") from None
    store = ModelStore.for_state_dir(_state_dir(args))
    before = store.current()
    folder = store.install(args.bundle)
    changed = False
    if args.activate:
        changed = before != folder.resolve()  # current() is resolved; the state folder may be a link
        store.activate(folder)
        # Raise the replay mark as an MQTT push would, so a retained older push cannot undo this one.
        store.record_push(read_manifest(folder))
    result = {
        "folder": str(folder),
        "model_id": read_manifest(folder).model_id,
        "activated": bool(args.activate),
        "changed": changed,
        "previous_model_id": read_manifest(before).model_id if before else None,
    }
    print(json.dumps(result) if args.json else f"installed {result['model_id']} in {folder}" + (" (current)" if args.activate else ""))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from edge.bundle import read_manifest
    from edge.runtime.models.store import ModelStore, StoreError

    try:
        folder = ModelStore.for_state_dir(_state_dir(args)).rollback()
    except StoreError as exc:
        raise CommandFailed(str(exc)) from None
    print(f"current model is now {read_manifest(folder).model_id} ({folder}); restart or reload the daemon")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from edge.runtime.models.store import ModelStore

    models = ModelStore.for_state_dir(_state_dir(args)).installed()
    if not models:
        print("no pushed models; the daemon runs its configured or shipped default model")
    for m in models:
        mark = "current" if m.current else ("previous" if m.previous else "")
        print(f"{mark:<9} {m.model_id:<32} {m.sha256[:12]}  {m.name}")
    return 0


def _cmd_push_mqtt(args: argparse.Namespace) -> int:
    from edge.protocol.broker import settings_from_args
    from edge.tools.push_mqtt import PushTarget, format_results, publish_push

    broker = settings_from_args(args)
    outcome = publish_push(args.bundle, PushTarget(broker.topic_prefix, args.device_id, args.group), broker,
                           sign_key=args.key, wait_s=args.wait, expect=args.expect, retain=args.retain,
                           settle_s=args.settle)
    need = args.expect if args.expect is not None else 1
    print(format_results(outcome, need if args.wait > 0 else None))
    if args.wait <= 0:
        return 0
    failed = sorted(d for d, r in outcome.results.items() if not r.get("ok"))
    if len(outcome.results) < need:
        print(f"only {len(outcome.results)} of {need} expected device(s) answered within {args.wait:g} s", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(outcome.results)} device(s) did not take the model: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or len(outcome.results) < need else 0


def _cmd_push_ssh(args: argparse.Namespace) -> int:
    from edge.tools.push_ssh import format_table, load_inventory, push_hosts, select_hosts

    hosts = select_hosts(load_inventory(args.inventory), args.hosts, args.group)
    results = push_hosts(hosts, args.bundle, parallel=args.parallel)
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1


HANDLERS = {
    "keygen": _cmd_keygen,
    "sign": _cmd_sign,
    "verify-bundle": _cmd_verify,
    "install-bundle": _cmd_install,
    "rollback": _cmd_rollback,
    "models": _cmd_models,
    "push-mqtt": _cmd_push_mqtt,
    "push-ssh": _cmd_push_ssh,
}


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed model command; expected failures become one line on stderr and exit status 1."""
    from edge.bundle import BundleError
    from edge.config import ConfigError
    from edge.runtime.classify.interpreter import RuntimeMissing
    from edge.runtime.models.store import StoreError
    from edge.tools.push_mqtt import PushError
    from edge.tools.push_ssh import InventoryError

    try:
        return HANDLERS[args.command](args)
    except (CommandFailed, BundleError, ConfigError, StoreError, PushError, InventoryError, RuntimeMissing,
            OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edge.modelctl``."""
    from edge.cli_common import log_level

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=log_level(args, logging.WARNING, verbose=logging.INFO),
                        format="%(levelname)s %(name)s: %(message)s")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
