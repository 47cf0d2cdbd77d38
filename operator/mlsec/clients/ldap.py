"""Who is in which LDAP group: a read-only ldap3 client behind a small interface.

Security properties the sync relies on:

- TLS always (LDAPS, or StartTLS before the bind); the certificate is verified against the given CA
  (system CAs if none) and the host name or IP is checked by OpenSSL itself (``check_hostname``),
  not by ldap3's optional matcher. Plain binds over an unencrypted connection are refused.
- The bind password is passed in and kept only on the connection; it never appears in a message:
  every failure becomes one :class:`DirectoryError` whose text is scrubbed of it.
- Every value put into a search filter goes through ``escape_filter_chars``; results are matched
  back by parsed DN, so even a filter that matched too much could not widen a membership.

Membership is read from the group side (``member``/``uniqueMember`` DNs, ``memberUid`` names), so
directories without the memberOf overlay work; a member that is itself a group is followed (nested
groups, cycle-safe) as long as it lies under the group search base. All searches are paged.
"""

from __future__ import annotations

import contextlib
import functools
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
# Object classes whose entries are groups (groupOfNames, groupOfUniqueNames, posixGroup, AD group).
GROUP_CLASSES = ("groupOfNames", "groupOfUniqueNames", "posixGroup", "group")
MEMBER_DN_ATTRS = ("member", "uniqueMember")
MEMBER_UID_ATTR = "memberUid"
_ATTR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_OPTIONAL_UID = re.compile(r"#'[01]*'B$")  # uniqueMember's nameAndOptionalUID suffix


class DirectoryError(Exception):
    """Reading the directory failed; ``reason`` is a CamelCase word for status conditions.

    The message never contains the bind password (see :func:`_scrub`).
    """

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class DirectorySettings:
    """Where and how to read; built by the handler from ``MLSecurityPolicy.spec.ldap``."""

    url: str
    bind_dn: str
    user_search_base: str
    group_search_base: str
    start_tls: bool = False
    user_id_attribute: str = "uid"
    group_object_class: str | None = None
    ca_pem: str | None = field(default=None, repr=False)
    connect_timeout: int = 5
    """Seconds to open the TCP connection (ldap3 wants whole seconds for socket options)."""
    receive_timeout: int = 15
    """Seconds to wait for any answer, and the server-side time limit of each search."""
    page_size: int = 500
    filter_batch: int = 100
    """Values OR-ed into one search filter when looking entries up by name."""
    scan_above: int = 500
    """Look up more entries than this by one paged scan of the base instead of by name."""
    attempts: int = 3
    backoff: float = 0.5
    """Seconds before the second attempt; doubled for each further one."""


@dataclass(frozen=True)
class Membership:
    """Users (by ``userIdAttribute``) of each requested group, nested groups included."""

    groups: Mapping[str, frozenset[str]]
    """Requested group DN (exactly as passed in) → user ids; only groups that were found."""
    missing: tuple[str, ...] = ()
    """Requested groups not found under the group search base."""
    skipped: int = 0
    """Member values ignored: unparseable DNs, or members outside the user search base."""

    @property
    def users(self) -> frozenset[str]:
        return frozenset().union(*self.groups.values())


class DirectoryClient(Protocol):
    def group_members(self, group_dns: Sequence[str]) -> Membership:
        """Members of each group; raises DirectoryError if anything could not be read."""
        ...


# --- distinguished names ----------------------------------------------------------------------


@dataclass(frozen=True)
class DN:
    """A parsed DN; equal when the normalized RDNs are (types and values case-insensitive)."""

    key: tuple[tuple[str, ...], ...]
    first: tuple[str, str] = field(compare=False)
    """(type, unescaped value) of the first AVA, original case: used to look the entry up."""

    def within(self, base: DN) -> bool:
        return len(self.key) >= len(base.key) and self.key[len(self.key) - len(base.key):] == base.key


def _unescape(value: str) -> str:
    """An RFC 4514 attribute value without its escapes (``\\,`` and ``\\3D``, UTF-8 aware)."""
    if "\\" not in value:
        return value
    out, i = bytearray(), 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and re.fullmatch(r"[0-9A-Fa-f]{2}", value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        elif ch == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            out += ch.encode()
            i += 1
    return out.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1 << 16)
def parse(dn: str) -> DN:
    """Parse with ldap3.utils.dn; ValueError if ``dn`` is not a valid DN.

    Cached: every member DN comes back once more as a search result, and parsing is most of the
    client's CPU time on large groups.
    """
    try:
        avas = parse_dn(dn, escape=False, strip=True)
    except (lx.LDAPInvalidDnError, IndexError) as exc:
        raise ValueError(f"invalid DN {dn!r}: {exc}") from None
    if not avas:
        raise ValueError("empty DN")
    rdns: list[list[str]] = [[]]
    for attr, value, sep in avas:
        rdns[-1].append(f"{attr.strip().lower()}={_unescape(value).strip().lower()}")
        if sep == ",":
            rdns.append([])
    key = tuple(tuple(sorted(r)) for r in rdns if r)
    return DN(key=key, first=(avas[0][0].strip(), _unescape(avas[0][1]).strip()))


def _parse_member(value: str) -> DN | None:
    try:
        return parse(_OPTIONAL_UID.sub("", value))
    except ValueError:
        return None


# --- TLS --------------------------------------------------------------------------------------


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """Certificate required, host name/IP checked, TLS 1.2+; ``ca_pem`` or the system CAs."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem or None)
    except (ssl.SSLError, ValueError) as exc:
        raise DirectoryError("InvalidCA", f"CA certificate is not valid PEM: {exc}") from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class VerifyingTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 ships no type hints
    """ldap3's Tls turns OpenSSL's host name check off; this one wraps with our context instead."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host,
        )


# --- the client -------------------------------------------------------------------------------

ConnectionFactory = Callable[[], ldap3.Connection]


@dataclass
class _GroupEntry:
    member_dns: list[DN]
    member_uids: list[str]


class LdapDirectory:
    """:class:`DirectoryClient` over ldap3. One connection per :meth:`group_members` call.

    ``connection_factory`` (tests) returns an open, not yet bound connection; the default one
    connects with TLS as described in the module docstring.
    """

    def __init__(self, settings: DirectorySettings, password: str, *,
                 connection_factory: ConnectionFactory | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not _ATTR_NAME.match(settings.user_id_attribute):
            raise DirectoryError("InvalidConfig", "userIdAttribute is not an attribute name")
        self.settings = settings
        self._password = password
        self._sleep = sleep
        self._factory = connection_factory or self._connect
        self._tls = None if connection_factory else tls_context(settings.ca_pem)
        try:
            self._user_base = parse(settings.user_search_base)
            self._group_base = parse(settings.group_search_base)
        except ValueError as exc:
            raise DirectoryError("InvalidConfig", str(exc)) from None

    # --- public ---------------------------------------------------------------------------
    def group_members(self, group_dns: Sequence[str]) -> Membership:
        """Read the members of ``group_dns``, retrying transient failures with backoff."""
        delay = self.settings.backoff
        for attempt in range(1, self.settings.attempts + 1):
            try:
                return self._read(group_dns)
            except DirectoryError as exc:
                if not exc.retryable or attempt == self.settings.attempts:
                    raise
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # --- connection -----------------------------------------------------------------------
    def _connect(self) -> ldap3.Connection:
        s = self.settings
        parts = urlsplit(s.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise DirectoryError("InvalidConfig", f"unsupported LDAP URL {s.url!r}")
        ldaps = parts.scheme == "ldaps"
        if not ldaps and not s.start_tls:
            # Never send the bind password in clear text, whatever the spec says.
            raise DirectoryError("InvalidConfig", "ldap:// URLs require startTLS")
        server = ldap3.Server(parts.hostname, port=parts.port or (636 if ldaps else 389), use_ssl=ldaps,
                              tls=VerifyingTls(self._tls or tls_context(s.ca_pem)),
                              connect_timeout=s.connect_timeout, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, user=s.bind_dn, password=self._password,
                                authentication=ldap3.SIMPLE, read_only=True, raise_exceptions=True,
                                receive_timeout=s.receive_timeout, auto_referrals=False)
        conn.open()
        if not ldaps:
            conn.start_tls()
        return conn

    def _read(self, group_dns: Sequence[str]) -> Membership:
        conn: ldap3.Connection | None = None
        try:
            conn = self._factory()
            conn.bind()
            for base in (self.settings.user_search_base, self.settings.group_search_base):
                self._check_base(conn, base)
            return self._resolve(conn, group_dns)
        except DirectoryError:
            raise
        except Exception as exc:  # ldap3 raises many types; classify them in one place
            raise self._classify(exc) from None
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):  # closing a broken connection may fail too
                    conn.unbind()

    def _check_base(self, conn: ldap3.Connection, base: str) -> None:
        """A missing search base must fail the sync, not read as "nobody is a member"."""
        try:
            conn.search(base, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["1.1"],
                        time_limit=self.settings.receive_timeout)
        except lx.LDAPNoSuchObjectResult:
            raise DirectoryError("SearchBaseNotFound", f"search base {base} does not exist") from None

    def _classify(self, exc: BaseException) -> DirectoryError:
        detail = _scrub(_detail(exc), self._password)
        bind_dn = self.settings.bind_dn
        if isinstance(exc, lx.LDAPInvalidCredentialsResult):
            # Not retried: repeated bad binds can lock the service account out.
            return DirectoryError("InvalidCredentials", f"invalid credentials for bind DN {bind_dn}")
        if isinstance(exc, ssl.SSLError | lx.LDAPStartTLSError | lx.LDAPCertificateError):
            return DirectoryError("TLSError", f"TLS with {self.settings.url} failed: {detail}")
        if isinstance(exc, lx.LDAPCommunicationError | OSError):
            return DirectoryError("Unreachable", f"cannot reach {self.settings.url}: {detail}",
                                  retryable=True)
        if isinstance(exc, lx.LDAPNoSuchObjectResult):
            return DirectoryError("SearchBaseNotFound", f"search base not found: {detail}")
        if isinstance(exc, lx.LDAPInsufficientAccessRightsResult):
            return DirectoryError("InsufficientAccess", f"bind DN {bind_dn} may not search: {detail}")
        if isinstance(exc, lx.LDAPOperationResult):
            return DirectoryError("SearchFailed", f"LDAP search failed: {detail}", retryable=True)
        return DirectoryError("LDAPError", f"LDAP error: {type(exc).__name__}: {detail}",
                              retryable=True)

    # --- searches -------------------------------------------------------------------------
    def _search(self, conn: ldap3.Connection, base: str, flt: str,
                attributes: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Paged subtree search yielding (dn, attributes) of entries (referrals skipped)."""
        cookie: bytes | None = None
        while True:
            conn.search(base, flt, search_scope=ldap3.SUBTREE, attributes=list(attributes),
                        paged_size=self.settings.page_size, paged_cookie=cookie,
                        time_limit=self.settings.receive_timeout)
            for entry in conn.response or []:
                if entry.get("type") == "searchResEntry":
                    yield entry["dn"], dict(entry.get("attributes") or {})
            control = (conn.result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
            cookie = (control.get("value") or {}).get("cookie")
            if not cookie:
                return

    def _filters(self, attr: str, values: Iterable[str], extra: str = "") -> Iterator[str]:
        """``(&extra(|(attr=v1)(attr=v2)…))`` per batch of values, every value escaped."""
        terms = [f"({attr}={escape_filter_chars(v)})" for v in sorted(set(values))]
        for batch in _batches(terms, self.settings.filter_batch):
            yield f"(&{extra}(|{''.join(batch)}))"

    def _lookup(self, conn: ldap3.Connection, base: DN, base_text: str, wanted: Iterable[DN],
                extra: str, attributes: Sequence[str]) -> dict[DN, dict[str, Any]]:
        """Entries by DN under ``base``, each kept only if its whole DN is one of ``wanted``.

        LDAP has no portable "DN is one of" filter, so entries are searched by their first RDN in
        batched filters; above ``scan_above`` wanted entries one paged scan of ``base`` with just
        ``extra`` is cheaper (measured: 10,000 users by 100-term filters 1.9 s, scanned 0.5 s).
        """
        targets = {dn for dn in wanted if dn.within(base)}
        if not targets:
            return {}
        if len(targets) > self.settings.scan_above:
            filters: Iterable[str] = [extra]
        else:
            by_type: dict[str, set[str]] = {}
            for dn in targets:
                by_type.setdefault(dn.first[0], set()).add(dn.first[1])
            filters = (f for attr, values in sorted(by_type.items())
                       for f in self._filters(attr, values, extra))
        found: dict[DN, dict[str, Any]] = {}
        for flt in filters:
            for dn_text, attrs in self._search(conn, base_text, flt, attributes):
                entry = _parse_member(dn_text)
                if entry is not None and entry in targets:
                    found[entry] = attrs
        return found

    def _group_filter(self) -> str:
        goc = self.settings.group_object_class
        if goc:
            return f"(objectClass={escape_filter_chars(goc)})"
        return "(|" + "".join(f"(objectClass={c})" for c in GROUP_CLASSES) + ")"

    # --- resolution -----------------------------------------------------------------------
    def _resolve(self, conn: ldap3.Connection, group_dns: Sequence[str]) -> Membership:
        s = self.settings
        try:
            requested = {g: parse(g) for g in group_dns}
        except ValueError as exc:
            raise DirectoryError("InvalidConfig", f"ldapGroup: {exc}") from None

        # Groups, level by level: the requested ones, then members that turn out to be groups.
        groups: dict[DN, _GroupEntry] = {}
        looked: set[DN] = set()
        frontier = {dn for dn in requested.values() if dn.within(self._group_base)}
        skipped = 0
        while frontier:
            looked |= frontier
            found = self._lookup(conn, self._group_base, s.group_search_base, frontier,
                                 self._group_filter(), (*MEMBER_DN_ATTRS, MEMBER_UID_ATTR))
            frontier = set()
            for dn, attrs in found.items():
                entry = _GroupEntry([], [str(u) for u in _values(attrs, MEMBER_UID_ATTR) if str(u)])
                for value in (v for a in MEMBER_DN_ATTRS for v in _values(attrs, a)):
                    member = _parse_member(str(value))
                    if member is None:
                        skipped += 1
                        continue
                    entry.member_dns.append(member)
                    if member not in looked and member.within(self._group_base):
                        frontier.add(member)  # maybe a nested group: look it up next round
                groups[dn] = entry

        # Users: member DNs that are not groups, and memberUid names, mapped to userIdAttribute.
        uid_attr = s.user_id_attribute
        user_dns = {m for g in groups.values() for m in g.member_dns if m not in groups}
        skipped += sum(1 for m in user_dns if not m.within(self._user_base))
        id_of_dn = {dn: ident for dn, attrs in self._lookup(
            conn, self._user_base, s.user_search_base, user_dns, f"({uid_attr}=*)", (uid_attr,)).items()
            if (ident := _first(attrs, uid_attr))}
        id_of_uid = self._ids_by_value({u for g in groups.values() for u in g.member_uids}, conn)

        out: dict[str, frozenset[str]] = {}
        for text, dn in requested.items():
            if dn in groups:
                out[text] = _closure(dn, groups, id_of_dn, id_of_uid)
        missing = tuple(t for t, dn in requested.items() if dn not in groups)
        return Membership(groups=out, missing=missing, skipped=skipped)

    def _ids_by_value(self, names: set[str], conn: ldap3.Connection) -> dict[str, str]:
        """memberUid value (lower-cased) → the user id of the entry carrying it."""
        if not names:
            return {}
        uid_attr = self.settings.user_id_attribute
        wanted = {n.lower() for n in names}
        filters: Iterable[str] = (
            [f"({uid_attr}=*)"] if len(names) > self.settings.scan_above
            else self._filters(uid_attr, names))
        out: dict[str, str] = {}
        for flt in filters:
            for dn_text, attrs in self._search(conn, self.settings.user_search_base, flt, (uid_attr,)):
                entry = _parse_member(dn_text)
                ident = _first(attrs, uid_attr)
                if entry is None or ident is None or not entry.within(self._user_base):
                    continue
                for value in _values(attrs, uid_attr):
                    if str(value).lower() in wanted:
                        out[str(value).lower()] = ident
        return out


def _closure(root: DN, groups: Mapping[DN, _GroupEntry], id_of_dn: Mapping[DN, str],
             id_of_uid: Mapping[str, str]) -> frozenset[str]:
    """User ids of ``root`` and of every group nested in it (each group visited once)."""
    users: set[str] = set()
    seen: set[DN] = set()
    stack = [root]
    while stack:
        dn = stack.pop()
        if dn in seen or dn not in groups:
            continue
        seen.add(dn)
        entry = groups[dn]
        for member in entry.member_dns:
            if member in groups:
                stack.append(member)
            elif member in id_of_dn:
                users.add(id_of_dn[member])
        users.update(id_of_uid[u.lower()] for u in entry.member_uids if u.lower() in id_of_uid)
    return frozenset(users)


def _values(attrs: Mapping[str, Any], name: str) -> list[Any]:
    for key, value in attrs.items():  # attribute names are case-insensitive
        if key.lower() == name.lower():
            return list(value) if isinstance(value, list | tuple) else [value]
    return []


def _first(attrs: Mapping[str, Any], name: str) -> str | None:
    values = [str(v) for v in _values(attrs, name) if str(v)]
    return values[0] if values else None


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _detail(exc: BaseException) -> str:
    """The useful part of an ldap3 message (which nests tuples of messages for socket errors)."""
    text = str(exc)
    tls = re.search(r"\[SSL[^\]]*\].*?(?=\s\(_ssl|\"|$)", text)
    if tls:
        return tls.group(0).replace("\\", "").strip()
    return re.sub(r"^[\s(\"',]+|[\s)\"',]+$", "", text)


def _scrub(text: str, password: str) -> str:
    """``text`` without the password (should ldap3 ever echo it) and cut to a status-sized length."""
    if password:
        text = text.replace(password, "[REDACTED]")
    return text[:300]
