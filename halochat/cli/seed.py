"""Seed halochat: the default Control Center configuration, demo users, and test tiers.

Idempotent: running it again changes nothing that is already there (users are keyed by
their auth_uid, the configuration by its key). Prints a bearer token per demo user.

    halochat seed                      # default config (if none) + the test tier + demo users
    halochat seed --remove-test-tiers  # remove the test tier instead
    halochat seed --no-users           # leave users alone
Uses MONGODB_URI when set, else the embedded database under HALOCHAT_DATA_DIR (var/).
"""

import argparse
import asyncio
import sys

from halochat.auth import issue_token
from halochat.config import Settings
from halochat.constants import AuthMode, Role
from halochat.db.connect import init_db, make_client
from halochat.documents import User
from halochat.domain.app_config import ensure_config, set_test_tiers
from halochat.server import database_uri
from halochat.settings_check import UnsafeSettings, check_settings

DEMO_USERS: tuple[tuple[str, Role, str], ...] = (
    ("seed-customer-1", Role.CUSTOMER, "Rina"),
    ("seed-customer-2", Role.CUSTOMER, "Budi"),
    ("seed-mitra-1", Role.MITRA, "Bestie Sari"),
    ("seed-mitra-2", Role.MITRA, "Bestie Dewi"),
    ("seed-mitra-3", Role.MITRA, "Bestie Andi"),
    ("seed-admin", Role.ADMIN, "Admin"),
)


async def upsert_user(auth_uid: str, role: Role, name: str) -> tuple[User, bool]:
    existing = await User.find_one(User.auth_uid == auth_uid)
    if existing is not None:
        return existing, False
    user = User(role=role, display_name=name, auth_uid=auth_uid, available=role == Role.MITRA)
    await user.insert()
    return user, True


async def seed(settings: Settings, *, users: bool, test_tiers: bool | None) -> None:
    client = make_client(settings.mongodb_uri or "")
    try:
        await init_db(client, settings.db_name)
        config, created = await ensure_config(settings)
        print(
            f"app_config: {'created' if created else 'already present'} "
            f"(tiers: {', '.join(t.id for t in config.tiers)})"
        )
        if test_tiers is not None:
            config = await set_test_tiers(settings, enabled=test_tiers)
            print(
                f"test tiers {'added/reset' if test_tiers else 'removed'} "
                f"(tiers: {', '.join(t.id for t in config.tiers)})"
            )
        if users:
            for auth_uid, role, name in DEMO_USERS:
                user, new = await upsert_user(auth_uid, role, name)
                line = f"{role.value:8} {name:12} id={user.id} {'created' if new else 'exists'}"
                if settings.auth_mode == AuthMode.LOCAL:
                    line += f"\n         token: {issue_token(settings, user.id)}"
                print(line)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="halochat seed", description=__doc__.split("\n\n")[0])
    # The developer test tier is what seeding is for: added unless removed (docs/support.md).
    parser.set_defaults(test_tiers=True)
    tiers = parser.add_mutually_exclusive_group()
    tiers.add_argument(
        "--test-tiers",
        dest="test_tiers",
        action="store_const",
        const=True,
        help="add or reset the developer test tiers (the default; other data untouched)",
    )
    tiers.add_argument(
        "--remove-test-tiers",
        dest="test_tiers",
        action="store_const",
        const=False,
        help="remove the developer test tiers",
    )
    parser.add_argument("--no-users", action="store_true", help="do not create demo users")
    args = parser.parse_args(argv)
    configured = Settings()
    if not args.no_users and configured.auth_mode == AuthMode.LOCAL:
        try:  # the tokens it prints must be ones the server accepts (and nobody can forge)
            if warning := check_settings(configured):
                print(f"seed: warning: {warning}", file=sys.stderr)
        except UnsafeSettings as exc:
            sys.exit(f"seed: {exc}")
    with database_uri(configured) as settings:
        asyncio.run(seed(settings, users=not args.no_users, test_tiers=args.test_tiers))


if __name__ == "__main__":
    main()
