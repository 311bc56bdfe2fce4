"""Users."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from danube_shared.db.ids import new_id
from danube_shared.db.repositories.flushing import flush
from danube_shared.db.schema import User
from danube_shared.db.timestamps import utcnow
from danube_shared.errors import NotFound


class UserRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def create(self, *, username: str, display_name: str, is_admin: bool = False) -> User:
        """A new user; `Conflict` if the username is taken."""
        user = User(
            id=new_id(),
            username=username,
            display_name=display_name,
            created_at=utcnow(),
            is_admin=is_admin,
        )
        self._session.add(user)
        flush(self._session, conflict=f"the username {username!r} is already taken")
        return user

    def get(self, user_id: str) -> User:
        user = self._session.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    def get_by_username(self, username: str) -> User:
        user = self._session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user is named {username!r}")
        return user

    def set_admin(self, user_id: str, *, is_admin: bool) -> User:
        """Make the user a site admin, or no longer one."""
        user = self.get(user_id)
        user.is_admin = is_admin
        flush(self._session, conflict=f"user {user_id} changed concurrently; retry")
        return user
