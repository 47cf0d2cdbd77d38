"""The LDAP client against ldap3's in-memory mock server (real filter evaluation, real paging).

Only unit tests use a fake directory; tests/integration/test_ldap_rbac.py runs against slapd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ldap3
import pytest
from ldap3.core import exceptions as lx

from mlsec.clients.ldap import (
    DirectoryError,
    DirectorySettings,
    LdapDirectory,
    parse,
)

BASE = "dc=hospital,dc=com"
USERS = f"ou=users,{BASE}"
GROUPS = f"ou=groups,{BASE}"
ADMIN = f"cn=admin,{BASE}"
PASSWORD = "s3cret-Bind-Pa55"
INJECTION = "*)(uid=*"


def user_dn(uid: str) -> str:
    return f"uid={uid},{USERS}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


class Fake:
    """A mock directory plus a record of every search filter sent to it."""

    def __init__(self) -> None:
        self.server = ldap3.Server("fake", get_info=ldap3.NONE)  # no schema, like the real client
        self.filters: list[str] = []
        self.opened = 0
        self.failures: list[BaseException] = []  # raised by the next connections, in order
        seed = self.connection()
        seed.strategy.add_entry(ADMIN, {"objectClass": ["person"], "sn": "admin", "userPassword": PASSWORD})
        for dn in (BASE, USERS, GROUPS):
            seed.strategy.add_entry(dn, {"objectClass": ["organizationalUnit"]})
        self.seed = seed

    def connection(self) -> ldap3.Connection:
        return ldap3.Connection(self.server, user=ADMIN, password=PASSWORD,
                                client_strategy=ldap3.MOCK_SYNC, raise_exceptions=True)

    def factory(self, password: str = PASSWORD) -> Callable[[], ldap3.Connection]:
        def make() -> ldap3.Connection:
            self.opened += 1
            if self.failures:
                raise self.failures.pop(0)
            conn = ldap3.Connection(self.server, user=ADMIN, password=password,
                                    client_strategy=ldap3.MOCK_SYNC, raise_exceptions=True)
            search = conn.search

            def recording_search(base: str, flt: str, *args: Any, **kwargs: Any) -> Any:
                self.filters.append(flt)
                return search(base, flt, *args, **kwargs)

            conn.search = recording_search  # type: ignore[method-assign]
            return conn
        return make

    def user(self, uid: str, dn: str | None = None) -> str:
        dn = dn or user_dn(uid)
        self.seed.strategy.add_entry(dn, {"objectClass": ["inetOrgPerson"], "uid": uid, "sn": uid, "cn": uid})
        return dn

    def group(self, cn: str, *members: str, cls: str = "groupOfNames") -> str:
        attr = {"groupOfNames": "member", "groupOfUniqueNames": "uniqueMember",
                "posixGroup": "memberUid"}[cls]
        attrs: dict[str, Any] = {"objectClass": [cls], "cn": cn, attr: list(members)}
        if cls == "posixGroup":
            attrs["gidNumber"] = "1000"
        self.seed.strategy.add_entry(group_dn(cn), attrs)
        return group_dn(cn)


@pytest.fixture
def fake() -> Fake:
    f = Fake()
    for u in ("alice", "bob", "carol", "dave", "erin"):
        f.user(u)
    return f


def directory(fake: Fake, password: str = PASSWORD, sleeps: list[float] | None = None,
              **settings: Any) -> LdapDirectory:
    s = DirectorySettings(url="ldaps://ldap.hospital.com", bind_dn=ADMIN, user_search_base=USERS,
                          group_search_base=GROUPS, **settings)
    return LdapDirectory(s, password, connection_factory=fake.factory(password),
                         sleep=(sleeps if sleeps is not None else []).append)


# --- membership ---------------------------------------------------------------------------------


def test_groups_of_names_resolve_to_user_ids(fake: Fake) -> None:
    ds = fake.group("data_scientists", user_dn("alice"))
    eng = fake.group("ml_engineers", user_dn("bob"), user_dn("carol"))
    result = directory(fake).group_members([ds, eng])
    assert result.groups == {ds: {"alice"}, eng: {"bob", "carol"}}
    assert result.users == {"alice", "bob", "carol"}
    assert result.missing == () and result.skipped == 0


def test_requested_dns_are_matched_case_and_space_insensitively(fake: Fake) -> None:
    fake.group("ml_leads", user_dn("carol").upper())
    spelled = "CN=ML_Leads, OU=Groups, DC=Hospital, DC=Com"
    assert directory(fake).group_members([spelled]).groups == {spelled: {"carol"}}


def test_nested_groups_are_followed_and_cycles_terminate(fake: Fake) -> None:
    inner = fake.group("inner", user_dn("dave"), group_dn("outer"))  # cycle back to outer
    outer = fake.group("outer", user_dn("alice"), inner)
    deep = fake.group("deep", user_dn("erin"))
    fake.group("middle", deep)
    top = fake.group("top", group_dn("middle"), user_dn("bob"))
    result = directory(fake).group_members([outer, inner, top])
    assert result.groups == {outer: {"alice", "dave"}, inner: {"alice", "dave"}, top: {"bob", "erin"}}


def test_posix_groups_and_unique_members_without_memberof(fake: Fake) -> None:
    posix = fake.group("posix", "alice", "Bob", "nobody-here", cls="posixGroup")
    unique = fake.group("unique", user_dn("carol") + "#'0101'B", user_dn("dave"), cls="groupOfUniqueNames")
    result = directory(fake).group_members([posix, unique])
    # memberUid matches case-insensitively (uid is caseIgnoreMatch); unknown names grant nothing.
    assert result.groups == {posix: {"alice", "bob"}, unique: {"carol", "dave"}}


def test_user_id_attribute_is_what_gets_returned(fake: Fake) -> None:
    dn = "cn=Frank Other,ou=users,dc=hospital,dc=com"
    fake.seed.strategy.add_entry(dn, {"objectClass": ["inetOrgPerson"], "cn": "Frank Other", "sn": "O",
                                      "mail": "frank@hospital.com"})
    g = fake.group("mail_people", dn, user_dn("alice"))
    result = directory(fake, user_id_attribute="mail").group_members([g])
    assert result.groups == {g: {"frank@hospital.com"}}  # alice has no mail: not a user here


def test_missing_groups_and_members_outside_the_bases(fake: Fake) -> None:
    stranger = "uid=mallory,ou=contractors,dc=hospital,dc=com"
    fake.user("mallory", stranger)
    g = fake.group("mixed", user_dn("alice"), stranger, "not a dn")
    elsewhere = "cn=admins,ou=other,dc=hospital,dc=com"
    result = directory(fake).group_members([g, group_dn("absent"), elsewhere])
    assert result.groups == {g: {"alice"}}
    assert result.missing == (group_dn("absent"), elsewhere)
    assert result.skipped == 2  # the contractor (outside userSearchBase) and the non-DN


def test_group_object_class_restricts_what_counts_as_a_group(fake: Fake) -> None:
    g = fake.group("names", user_dn("alice"))
    p = fake.group("posix", "bob", cls="posixGroup")
    result = directory(fake, group_object_class="posixGroup").group_members([g, p])
    assert result.groups == {p: {"bob"}} and result.missing == (g,)


def test_paged_and_batched_lookups_return_everything(fake: Fake) -> None:
    names = [f"user{i:03d}" for i in range(57)]
    for n in names:
        fake.user(n)
    g = fake.group("big", *(user_dn(n) for n in names))
    result = directory(fake, page_size=5, filter_batch=7).group_members([g])
    assert result.groups[g] == set(names)
    user_lookups = [f for f in fake.filters if "(uid=*)" in f]
    assert len(user_lookups) >= 57 // 7  # one search per batch of 7 names (each paged by 5)


def test_large_lookups_scan_the_base_once_with_the_same_result(fake: Fake) -> None:
    names = [f"user{i:03d}" for i in range(40)]
    for n in names:
        fake.user(n)
    g = fake.group("big", *(user_dn(n) for n in names[:30]))
    p = fake.group("posix", *names[25:], INJECTION, cls="posixGroup")
    result = directory(fake, page_size=7, scan_above=10).group_members([g, p])
    assert result.groups == {g: set(names[:30]), p: set(names[25:])}
    assert "(uid=*)" in fake.filters and not any("(uid=user" in f for f in fake.filters)


# --- injection ----------------------------------------------------------------------------------


def test_filter_values_are_escaped_and_never_widen_membership(fake: Fake) -> None:
    odd = fake.user(INJECTION, f"uid={INJECTION.replace('=', chr(92) + '3D')},{USERS}")
    posix = fake.group("inj_posix", INJECTION, "*", cls="posixGroup")
    names = fake.group("inj_names", odd)
    result = directory(fake).group_members([posix, names])
    assert result.groups == {posix: {INJECTION}, names: {INJECTION}}
    sent = " ".join(fake.filters)
    assert "(uid=\\2a\\29\\28uid=\\2a)" in sent and "(uid=\\2a)" in sent
    assert "(uid=*)(uid=*)" not in sent


def test_the_unescaped_filter_would_have_matched_everyone(fake: Fake) -> None:
    # Sanity check of the test above: the same value, unescaped, widens the search.
    conn = fake.connection()
    conn.bind()
    conn.search(USERS, f"(|(uid={INJECTION}))", attributes=["uid"])
    assert {e["attributes"]["uid"][0] for e in conn.response} >= {"alice", "bob", "erin"}


# --- failures -----------------------------------------------------------------------------------


def test_wrong_password_is_one_clear_error_without_retry(fake: Fake) -> None:
    d = directory(fake, password="wrong-" + PASSWORD)
    with pytest.raises(DirectoryError) as err:
        d.group_members([group_dn("x")])
    assert err.value.reason == "InvalidCredentials"
    assert str(err.value) == f"invalid credentials for bind DN {ADMIN}"
    assert PASSWORD not in repr(err.value.args) and err.value.__cause__ is None
    assert fake.opened == 1  # repeated bad binds would lock the account


def test_transient_failures_are_retried_with_backoff(fake: Fake) -> None:
    g = fake.group("g", user_dn("alice"))
    fake.failures = [lx.LDAPSocketOpenError("socket connection error while opening: refused"),
                     lx.LDAPSocketReceiveError("timed out")]
    sleeps: list[float] = []
    assert directory(fake, sleeps=sleeps).group_members([g]).groups == {g: {"alice"}}
    assert sleeps == [0.5, 1.0] and fake.opened == 3


def test_retries_are_bounded(fake: Fake) -> None:
    fake.failures = [lx.LDAPSocketOpenError("refused")] * 5
    sleeps: list[float] = []
    with pytest.raises(DirectoryError) as err:
        directory(fake, sleeps=sleeps, attempts=3).group_members([group_dn("g")])
    assert err.value.reason == "Unreachable" and err.value.retryable
    assert fake.opened == 3 and sleeps == [0.5, 1.0]


def test_messages_never_carry_the_password(fake: Fake) -> None:
    fake.failures = [lx.LDAPOperationResult(f"server said: bad {PASSWORD}")] * 3
    with pytest.raises(DirectoryError) as err:
        directory(fake).group_members([group_dn("g")])
    assert PASSWORD not in str(err.value) and "[REDACTED]" in str(err.value)


def test_missing_search_base_fails_instead_of_emptying_groups(fake: Fake) -> None:
    g = fake.group("g", user_dn("alice"))
    d = LdapDirectory(DirectorySettings(url="ldaps://x", bind_dn=ADMIN, group_search_base=GROUPS,
                                        user_search_base="ou=gone,dc=hospital,dc=com"),
                      PASSWORD, connection_factory=fake.factory())
    with pytest.raises(DirectoryError) as err:
        d.group_members([g])
    assert err.value.reason == "SearchBaseNotFound" and "ou=gone" in err.value.message


def test_invalid_requested_dn_is_a_config_error(fake: Fake) -> None:
    with pytest.raises(DirectoryError) as err:
        directory(fake).group_members(["not-a-dn"])
    assert err.value.reason == "InvalidConfig"


# --- DN handling --------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [
    ("uid=alice,ou=users,dc=x", "UID=Alice, OU=Users,DC=X"),
    ("cn=Smith\\, John,dc=x", "cn=smith\\2C john,dc=x"),
    ("uid=*)(uid\\3D*,dc=x", "uid=*)(uid\\=*,dc=x"),
    ("cn=a+uid=b,dc=x", "uid=b+cn=a,dc=x"),
    ("cn=J\\C3\\BCrgen,dc=x", "cn=jürgen,dc=x"),
])
def test_equal_dns(a: str, b: str) -> None:
    assert parse(a) == parse(b)


def test_within_base_is_by_whole_rdns() -> None:
    assert parse("uid=a,ou=users,dc=x").within(parse("ou=users,dc=x"))
    assert parse("ou=users,dc=x").within(parse("ou=users,dc=x"))
    assert not parse("uid=a,ou=xusers,dc=x").within(parse("ou=users,dc=x"))
    assert not parse("dc=x").within(parse("ou=users,dc=x"))
    assert parse("uid=*)(uid\\3D*,dc=x").first == ("uid", "*)(uid=*")


def test_plain_ldap_without_starttls_is_refused() -> None:
    d = LdapDirectory(DirectorySettings(url="ldap://127.0.0.1:1", bind_dn=ADMIN, user_search_base=USERS,
                                        group_search_base=GROUPS), PASSWORD, sleep=lambda _: None)
    with pytest.raises(DirectoryError) as err:
        d.group_members([group_dn("g")])
    assert err.value.reason == "InvalidConfig" and "startTLS" in err.value.message


def test_invalid_ca_is_reported() -> None:
    with pytest.raises(DirectoryError) as err:
        LdapDirectory(DirectorySettings(url="ldaps://x", bind_dn=ADMIN, user_search_base=USERS,
                                        group_search_base=GROUPS, ca_pem="not a certificate"), PASSWORD)
    assert err.value.reason == "InvalidCA"
