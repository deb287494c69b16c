"""Administering people and roles: users (created by invite, reset, unlocked,
removed) and custom roles."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from teleconch.auth import protocol as api
from teleconch.auth.audit import AuditLog
from teleconch.auth.protocol import Invite
from teleconch.auth.rbac import role_from_spec
from teleconch.auth.store import AlreadyExists, Store
from teleconch.auth.tokens import Tokens
from teleconch.auth.types import Role, RoleSpec, User, UserEntry
from teleconch.auth.validation import LOGIN, USER_NAME_RULE, is_user_name
from teleconch.auth.websessions import WebSessions
from teleconch.text import printable


class Accounts:
    """Users and roles, as an administrator changes them."""

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        log: AuditLog,
        tokens: Tokens,
        web_sessions: WebSessions,
    ) -> None:
        self.store = store
        self._clock = clock
        self.audit = log.audit
        self._tokens = tokens
        self._web_sessions = web_sessions

    def _now(self) -> float:
        return self._clock.seconds()

    # --- users ---------------------------------------------------------------

    async def _check_roles_exist(self, roles: Sequence[str]) -> None:
        known = {r.name for r in await self.store.list_roles()}
        missing = [r for r in roles if r not in known]
        if missing:
            raise api.NotFoundError(
                f"no such role: {', '.join(missing)} (see `teleconch-ctl roles ls`)"
            )

    async def create_user(
        self, name: str, logins: Sequence[str], roles: Sequence[str]
    ) -> Invite:
        if not is_user_name(name):
            raise api.BadParameter(
                f"{printable(name, 80)!r} is not a valid user name: use {USER_NAME_RULE}"
            )
        for login in logins:
            if not LOGIN.fullmatch(login):
                raise api.BadParameter(
                    f"{login!r} is not a valid login: lower-case letters, digits, _ . -"
                )
        roles = list(dict.fromkeys(roles or ["access"]))
        await self._check_roles_exist(roles)
        user = User(
            name=name,
            logins=tuple(logins),
            roles=tuple(roles),
            status="invited",
            created=self._now(),
        )
        try:
            await self.store.create_user(user)
        except AlreadyExists:
            raise api.AlreadyExistsError(
                f"user {name!r} already exists; `teleconch-ctl users reset {name}` "
                "makes a new invite"
            ) from None
        invite = await self._tokens.new_invite(name, "invite")
        await self.audit("user.create", user=name, logins=list(logins), roles=roles)
        return invite

    async def reset_user(self, name: str) -> Invite:
        user = await self.store.get_user(name)
        if user is None:
            raise api.NotFoundError(f"no user {name!r}")
        await self.store.delete_user_tokens(name)
        await self._web_sessions.end_user_sessions(name, reason="user reset")
        await self.store.clear_login_failures(name)
        await self.store.set_lock(name, 0)
        invite = await self._tokens.new_invite(name, "reset")
        await self.audit("user.reset", user=name)
        return invite

    async def unlock_user(self, name: str) -> bool:
        """Lift a lock-out on a user (known, or a name someone kept trying)."""
        user = await self.store.get_user(name)
        lock = await self.store.get_lock(name)
        now = self._now()
        locked = lock is not None and lock > now
        if user is None and not locked:
            raise api.NotFoundError(
                f"no user {printable(name, 80)!r}; see `teleconch-ctl users ls`"
            )
        await self.store.clear_login_failures(name)
        await self.store.set_lock(name, 0)
        await self.audit("user.unlock", user=name, was_locked=locked)
        return locked

    async def list_users(self) -> list[UserEntry]:
        now = self._now()
        out = []
        locks = await self.store.user_locks(now)
        for u in await self.store.list_users():
            lock = locks.get(u.name)
            out.append(
                UserEntry(
                    name=u.name,
                    logins=u.logins,
                    roles=u.roles,
                    status="locked" if lock and lock > now else u.status,
                    locked_until=lock if lock and lock > now else None,
                    created=u.created,
                )
            )
        return out

    async def delete_user(self, name: str) -> None:
        # The store deletes the user's web sessions with them.
        if not await self.store.delete_user(name):
            raise api.NotFoundError(f"no user {name!r}")
        await self.audit("user.delete", user=name)

    # --- roles ---------------------------------------------------------------

    async def upsert_role(self, spec: RoleSpec) -> None:
        role = role_from_spec(spec)
        existing = await self.store.get_role(role.name)
        if existing is not None and existing.builtin:
            raise api.BadParameter(
                f"{role.name!r} is a built-in role; choose another name"
            )
        await self.store.upsert_role(role)
        await self.audit("role.upsert", role=role.name, spec=role.to_json())

    async def list_roles(self) -> list[Role]:
        return await self.store.list_roles()

    async def delete_role(self, name: str) -> None:
        role = await self.store.get_role(name)
        if role is None:
            raise api.NotFoundError(f"no role {name!r}")
        if role.builtin:
            raise api.BadParameter(f"{name!r} is a built-in role and cannot be removed")
        users = await self.store.users_with_role(name)
        if users:
            raise api.BadParameter(
                f"role {name!r} is held by {', '.join(users)}; take it from them first"
            )
        await self.store.delete_role(name)
        await self.audit("role.delete", role=name)

    async def get_roles(self, names: Sequence[str]) -> list[Role]:
        return await self.store.get_roles(names)
