"""Administration on the database directly: users, tokens, backups."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.cli import common


def cmd_admin(args: argparse.Namespace) -> int:
    from controller.auth import Role
    from controller.services import backups
    from controller.store import Store

    # backups (issue 26): before anything opens the database (a restore makes it)
    if args.admin_cmd == "backup":
        pages = backups.backup(str(common.settings(args).database), Path(args.path))
        print(f"backed up to {args.path} ({pages} pages)")
        return 0
    if args.admin_cmd == "restore":
        ids = backups.restore(str(common.settings(args).database),
                              Path(args.path) if args.path else None,
                              after_pg_restore=args.after_pg_restore)
        print(f"restored; {len(ids)} jobs held at the backup's time rescheduled as interrupted")
        return 0
    store = Store(common.settings(args).database)
    try:
        if args.admin_cmd == "create-user":
            store.tokens.create_user(args.name, args.group, args.share)
            print(f"user {args.name} (group {args.group}, share {args.share}) created")
        elif args.admin_cmd == "create-token":
            if args.user:
                tok = store.tokens.issue(Role.USER, owner=args.user, lifetime=args.lifetime,
                                         note=args.note)
            elif args.pilot:
                tok = store.tokens.issue(Role.PILOT, endpoint=args.pilot,
                                         lifetime=args.lifetime, note=args.note)
            else:
                role = Role.METRICS if args.metrics else Role.ADMIN
                tok = store.tokens.issue(role, lifetime=args.lifetime, note=args.note)
            print(tok)
        elif args.admin_cmd == "users":
            print(common.table([[u["name"], u["group"], u["share"]] for u in store.tokens.users()],
                         ["NAME", "GROUP", "SHARE"]))
        elif args.admin_cmd == "tokens":
            rows = [[t["id"], t["role"], t["owner"] or t["endpoint"] or "",
                     common.when(t["created_at"]), common.when(t["expires_at"]), t["note"]]  # type: ignore[arg-type]
                    for t in store.tokens.find()]
            print(common.table(rows, ["ID", "ROLE", "FOR", "CREATED", "EXPIRES", "NOTE"]))
        elif args.admin_cmd == "revoke":
            store.tokens.revoke(args.id)
            print(f"token {args.id} revoked")
    finally:
        store.close()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("admin", help="users, tokens, backups (works on the database directly)")
    asub = p.add_subparsers(dest="admin_cmd", required=True, metavar="ADMIN_COMMAND")
    q = asub.add_parser("create-user", help="create a user (an owner of jobs)")
    common.config_opt(q)
    q.add_argument("name", help="user name")
    q.add_argument("--group", required=True, help="the user's group")
    q.add_argument("--share", type=float, default=1.0, help="fair-share weight (1.0)")
    q = asub.add_parser("create-token", help="create a token and print it (shown once)")
    common.config_opt(q)
    who = q.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user token acting for this owner")
    who.add_argument("--pilot", metavar="ENDPOINT",
                     help="a one-time bootstrap token: it registers one pilot of this endpoint")
    who.add_argument("--admin", action="store_true", help="an admin token")
    who.add_argument("--metrics", action="store_true",
                     help="a token that may only scrape GET /metrics (for Prometheus)")
    q.add_argument("--lifetime", type=float, help="seconds until it expires (never)")
    q.add_argument("--note", default="", help="what the token is for")
    q = asub.add_parser("users", help="list users")
    common.config_opt(q)
    q = asub.add_parser("tokens", help="list tokens (not job tokens; never the secrets)")
    common.config_opt(q)
    q = asub.add_parser("backup", help="back the SQLite database up to a new file while the "
                        "controller runs (PostgreSQL: pg_dump)")
    common.config_opt(q)
    q.add_argument("path", help="the backup file to make")
    q = asub.add_parser("restore", help="restore a backup as the configured (new) database; "
                        "jobs running at the backup's time are rescheduled as interrupted")
    q.add_argument("path", nargs="?", help="the backup file (SQLite)")
    q.add_argument("--after-pg-restore", action="store_true",
                   help="PostgreSQL: finish a pg_restore into the configured database")
    common.config_opt(q)
    q = asub.add_parser("revoke", help="revoke a token by id")
    common.config_opt(q)
    q.add_argument("id", type=int, help="token id")
    p.set_defaults(fn=cmd_admin)
