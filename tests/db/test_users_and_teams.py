"""UserRepository and TeamRepository."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from danube_shared.db.engine import Database
from danube_shared.db.ids import new_id
from danube_shared.db.paging import MAX_PAGE_SIZE
from danube_shared.db.repositories import TeamRepository, UserRepository
from danube_shared.db.schema import Team, TeamRole, User
from danube_shared.errors import Conflict, InvalidInput, NotFound


async def test_a_created_user_can_be_read_back(database: Database):
    created = await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada L.")
    )
    user = await database.read(lambda session: UserRepository(session).get(created.id))
    assert (user.username, user.display_name) == ("ada", "Ada L.")
    assert user.created_at.tzinfo is not None


async def test_a_taken_username_is_a_conflict(database: Database):
    await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada")
    )
    with pytest.raises(Conflict, match="'ada' is already taken"):
        await database.write(
            lambda session: UserRepository(session).create(username="ada", display_name="Another")
        )


async def test_an_unknown_user_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"user {missing} not found"):
        await database.read(lambda session: UserRepository(session).get(missing))


async def test_a_created_team_can_be_read_back(database: Database):
    created = await database.write(lambda session: TeamRepository(session).create(name="platform"))
    team = await database.read(lambda session: TeamRepository(session).get(created.id))
    assert team.name == "platform"


async def test_a_taken_team_name_is_a_conflict_and_nothing_is_written(database: Database):
    await database.write(lambda session: TeamRepository(session).create(name="platform"))

    async def create_two() -> None:
        def writes(session: Session) -> Any:
            TeamRepository(session).create(name="new one")
            TeamRepository(session).create(name="platform")

        await database.write(writes)

    with pytest.raises(Conflict, match="a team named 'platform' already exists"):
        await create_two()
    names = await database.read(
        lambda session: [team.name for team in TeamRepository(session).list_teams()]
    )
    assert names == ["platform"]


async def test_an_unknown_team_is_not_found(database: Database):
    missing = new_id()
    with pytest.raises(NotFound, match=f"team {missing} not found"):
        await database.read(lambda session: TeamRepository(session).get(missing))


async def test_teams_are_listed_by_name_a_page_at_a_time(database: Database):
    def writes(session: Session) -> Any:
        for name in ("delta", "alpha", "echo", "charlie", "bravo"):
            TeamRepository(session).create(name=name)

    await database.write(writes)

    def reads(session: Session) -> Any:
        teams = TeamRepository(session)
        pages = [
            [team.name for team in teams.list_teams(limit=2, offset=offset)]
            for offset in (0, 2, 4, 6)
        ]
        return (pages,)

    (pages,) = await database.read(reads)
    assert pages == [["alpha", "bravo"], ["charlie", "delta"], ["echo"], []]


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (MAX_PAGE_SIZE + 1, 0), (10, -1)])
async def test_a_page_out_of_bounds_is_invalid_input(database: Database, limit: int, offset: int):
    with pytest.raises(InvalidInput):
        await database.read(
            lambda session: TeamRepository(session).list_teams(limit=limit, offset=offset)
        )


async def test_putting_a_member_adds_then_changes_the_role(database: Database, team: Team):
    def writes(session: Session) -> Any:
        user = UserRepository(session).create(username="ada", display_name="Ada")
        member, created = TeamRepository(session).put_member(team.id, user.id, TeamRole.MEMBER)
        return user, member, created

    user, member, created = await database.write(writes)
    assert (member.role, created) == (TeamRole.MEMBER, True)

    def writes_again(session: Session) -> Any:
        member, created = TeamRepository(session).put_member(team.id, user.id, TeamRole.MAINTAINER)
        return member, created

    member, created = await database.write(writes_again)
    assert (member.role, created) == (TeamRole.MAINTAINER, False)
    members = await database.read(lambda session: TeamRepository(session).list_members(team.id))
    assert [(m.user_id, m.role) for m in members] == [(user.id, TeamRole.MAINTAINER)]


async def test_membership_of_an_unknown_team_or_user_is_not_found(database: Database, team: Team):
    user = await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada")
    )
    with pytest.raises(NotFound, match="team"):
        await database.write(
            lambda session: TeamRepository(session).put_member(new_id(), user.id, TeamRole.OWNER)
        )
    with pytest.raises(NotFound, match="user"):
        await database.write(
            lambda session: TeamRepository(session).put_member(team.id, new_id(), TeamRole.OWNER)
        )


async def test_a_teams_members_are_listed_in_pages(database: Database, team: Team):
    def writes(session: Session) -> Any:
        users = [
            UserRepository(session).create(username=name, display_name=name)
            for name in ("ada", "bob", "cy")
        ]
        for user in users:
            TeamRepository(session).put_member(team.id, user.id, TeamRole.MEMBER)
        return (users,)

    (users,) = await database.write(writes)

    def reads(session: Session) -> Any:
        teams = TeamRepository(session)
        pages = [
            [m.user_id for m in teams.list_members(team.id, limit=2, offset=offset)]
            for offset in (0, 2)
        ]
        return (pages,)

    (pages,) = await database.read(reads)
    assert pages == [[users[0].id, users[1].id], [users[2].id]]


async def test_a_user_is_not_an_admin_unless_made_one(database: Database):
    def writes(session: Session) -> tuple[User, User]:
        users = UserRepository(session)
        ada = users.create(username="ada", display_name="Ada")
        root = users.create(username="root", display_name="Root", is_admin=True)
        return ada, root

    ada, root = await database.write(writes)
    stored = await database.read(
        lambda session: [UserRepository(session).get(user.id) for user in (ada, root)]
    )
    assert [user.is_admin for user in stored] == [False, True]


async def test_an_admin_can_be_made_and_unmade(database: Database):
    ada = await database.write(
        lambda session: UserRepository(session).create(username="ada", display_name="Ada")
    )
    flags: list[bool] = []
    for is_admin in (True, False):
        await database.write(
            lambda session, is_admin=is_admin: UserRepository(session).set_admin(
                ada.id, is_admin=is_admin
            )
        )
        flags.append(
            await database.read(lambda session: UserRepository(session).get(ada.id).is_admin)
        )
    assert flags == [True, False]


async def test_a_user_is_found_by_exact_username(database: Database):
    def writes(session: Session) -> User:
        ada = UserRepository(session).create(username="ada", display_name="Ada")
        UserRepository(session).create(username="adam", display_name="Adam")
        return ada

    ada = await database.write(writes)
    found = await database.read(lambda session: UserRepository(session).get_by_username("ada"))
    with pytest.raises(NotFound, match="no user is named 'ad'"):
        await database.read(lambda session: UserRepository(session).get_by_username("ad"))
    assert found.id == ada.id
