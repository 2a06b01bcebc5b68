"""fwmark -> published port(s) and VIP(s), read from a network namespace's iptables mangle rules.

Docker Swarm marks ingress traffic per published port (PREROUTING --dport) and traffic to a
service's virtual IP (INPUT -d VIP/32) in the mangle table, and IPVS holds one fwmark
service per mark; this module recovers which ports and VIPs feed which mark. The rules may
live in either iptables backend (nf_tables or legacy x_tables), so both are read.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from ..logonce import LogOnce
from .refresh import Refreshing, Spawn

log = logging.getLogger(__name__)

_FULL_MASK = 0xFFFFFFFF
_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "6": "tcp", "17": "udp", "132": "sctp"}
_DPORT = ("--dport", "--destination-port")
_DPORTS = ("--dports", "--destination-ports")
_SET_MARK = ("--set-xmark", "--set-mark")
_DEST = ("-d", "--destination", "--dst")


@dataclass(frozen=True, order=True)
class PublishedPort:
    """One published port: protocol ("tcp", "udp" or "sctp") and port number."""

    protocol: str
    port: int


class MarkRule(NamedTuple):
    """What one MARK rule matches: destination ports (with their protocol) and addresses."""

    mark: int
    ports: list[PublishedPort]
    vips: list[str]


class MarkMap(NamedTuple):
    """fwmark -> sorted unique published ports, and fwmark -> sorted unique VIPs."""

    ports: dict[int, list[PublishedPort]]
    vips: dict[int, list[str]]


class MarksError(OSError):
    """No iptables reader worked in the namespace; the message says which and what to do."""


def _parse_ports(arg: str, multi: bool) -> list[int]:
    """Ports of a --dport/--dports argument; ranges (a:b) and junk are skipped."""
    ports = []
    for item in arg.split(",") if multi else [arg]:
        if item.isascii() and item.isdigit() and int(item) <= 65535:
            ports.append(int(item))
    return ports


def _parse_mark(arg: str) -> int | None:
    """The fwmark a --set-xmark/--set-mark V[/M] argument sets: V, masked by M when M is partial."""
    value, _, mask = arg.partition("/")
    try:
        mark = int(value, 0)
        mask_value = int(mask, 0) if mask else _FULL_MASK
    except ValueError:
        return None
    if mask_value != _FULL_MASK:
        mark &= mask_value
    return mark or None


def _parse_address(arg: str) -> str | None:
    """The host address of a -d argument ("10.0.1.2/32", "fd00::2/128", "10.0.1.2"); None for
    a network (a prefix shorter than the address) or anything that is not an address."""
    address, _, length = arg.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if length and length != str(ip.max_prefixlen):
        return None
    return str(ip)


def _parse_rule(line: str) -> MarkRule | None:
    """What one `-A CHAIN ...` line that sets a MARK matches: a destination port (ingress's
    PREROUTING rules) and/or a destination address (a VIP's INPUT rule)."""
    if '"' in line or "'" in line or "\\" in line:
        try:
            tokens = shlex.split(line)
        except ValueError:  # unbalanced quotes: not something iptables-save writes
            return None
    else:  # what Docker writes: no quoting; str.split is ~30x faster than shlex
        tokens = line.split()
    protocol = target = None
    ports: list[int] = []
    vips: list[str] = []
    mark = None
    negated = False
    i = 0
    while i < len(tokens):
        opt = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        step = 2
        if opt == "!":
            negated, i = True, i + 1
            continue
        if opt in ("-p", "--protocol"):
            protocol = None if negated else _PROTOCOLS.get(arg.lower())
        elif opt in _DPORT or opt in _DPORTS:
            if not negated:
                ports += _parse_ports(arg, opt in _DPORTS)
        elif opt in _DEST:
            address = None if negated else _parse_address(arg)
            vips += [address] if address else []
        elif opt in ("-j", "--jump"):
            target = arg
        elif opt in _SET_MARK and target == "MARK":
            mark = _parse_mark(arg)
        elif opt != "--comment":
            step = 1
        negated = False
        i += step
    if protocol is None:
        ports = []
    if target != "MARK" or mark is None or not (ports or vips):
        return None
    return MarkRule(mark, [PublishedPort(protocol, port) for port in ports if protocol], vips)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def parse_marks(text: str) -> MarkMap:
    """iptables-save text (any tables; only *mangle's rules count) -> the ports and VIPs of each fwmark."""
    ports: dict[int, set[PublishedPort]] = {}
    vips: dict[int, set[str]] = {}
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:].strip()
        elif line == "COMMIT":
            table = None
        elif table == "mangle" and line.startswith(("-A ", "-I ")):
            rule = _parse_rule(line)
            if rule and rule.ports:
                ports.setdefault(rule.mark, set()).update(rule.ports)
            if rule and rule.vips:
                vips.setdefault(rule.mark, set()).update(rule.vips)
    return MarkMap(
        {mark: sorted(ports[mark]) for mark in sorted(ports)},
        {mark: sorted(vips[mark], key=_address_order) for mark in sorted(vips)},
    )


# Where the kernel lists the legacy (x_tables) tables that exist in the reader's namespace.
_LEGACY_TABLE_LISTS = {"iptables": "/proc/net/ip_tables_names", "ip6tables": "/proc/net/ip6_tables_names"}


# nsenter and iptables-*-save run with the exporter's capabilities (ambient CAP_SYS_ADMIN...):
# they are looked up in the system's own directories only, never on the inherited $PATH, where
# a directory someone else can write to would run their program with those capabilities. The
# helpers get this PATH too.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_found: dict[str, str] = {}  # helper name -> absolute path, resolved at first use


def _system_command(name: str) -> str | None:
    """Absolute path of a helper in SYSTEM_PATH, resolved once; None (asked again) while missing."""
    path = _found.get(name)
    if path is None:
        path = shutil.which(name, path=SYSTEM_PATH)
        if path:
            _found[name] = path
    return path


def _save_commands() -> list[tuple[str, str, str]]:
    """(family, backend, path) of the iptables-save variants installed; plain *-save only if neither is."""
    commands = []
    for family in ("iptables", "ip6tables"):
        found = [
            (family, backend, _system_command(f"{family}-{backend}-save")) for backend in ("nft", "legacy")
        ]
        if not any(path for _, _, path in found):
            found = [(family, "plain", _system_command(f"{family}-save"))]
        commands += [(fam, backend, path) for fam, backend, path in found if path]
    return commands


def _run(argv: list[str], timeout: float) -> tuple[str | None, str]:
    """(stdout, "") of a command that succeeded, else (None, why it failed in one line)."""
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env={**os.environ, "PATH": SYSTEM_PATH},
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g}s"
    except OSError as exc:
        return None, str(exc.strerror or exc)
    if res.returncode == 0:
        return res.stdout, ""
    lines = [line.strip() for line in res.stderr.splitlines() if line.strip()]
    return None, f"exit {res.returncode}: {lines[-1] if lines else 'no message'}"


class LegacyTables:
    """What /proc/net says about the legacy (x_tables) tables in a namespace."""

    def __init__(self, mangle: set[str], unreadable: set[str]) -> None:
        self.mangle = mangle  # families whose legacy mangle table exists
        self.unreadable = unreadable  # families whose table list exists but could not be read


def _legacy_mangle_families(prefix: list[str], timeout: float) -> LegacyTables | None:
    """Which legacy mangle tables exist in the namespace, or None if the check itself failed.

    Merely reading a legacy table creates it (loading iptable_mangle), after which every
    iptables-nft call in the namespace warns; /proc/net tells without side effects. The lists
    are root's, mode 0440: without CAP_DAC_READ_SEARCH a family's list reads as "!".
    """
    script = "".join(
        f'if [ -e {shlex.quote(path)} ]; then while read -r t; do echo "{family} $t"; '
        f'done 2>/dev/null < {shlex.quote(path)} || echo "{family} !"; fi; '
        for family, path in _LEGACY_TABLE_LISTS.items()
    )
    out, _ = _run(prefix + ["/bin/sh", "-c", script + "exit 0"], timeout)
    if out is None:
        return None
    pairs = [line.partition(" ") for line in out.splitlines()]
    return LegacyTables(
        {family for family, _, table in pairs if table == "mangle"},
        {family for family, _, table in pairs if table == "!"},
    )


def _table_missing(reason: str) -> bool:
    """True when a backend says the mangle table does not exist (an empty result, not an error)."""
    text = reason.lower()
    return "table" in text and "does not exist" in text


def _denied(reason: str) -> bool:
    text = reason.lower()
    return "not permitted" in text or "permission denied" in text


def _capabilities_for(failures: dict[str, list[str]]) -> list[str]:
    """The capabilities whose absence explains these permission failures (reason -> commands)."""
    caps: list[str] = []
    for reason, names in failures.items():
        if not _denied(reason):
            continue
        if "nsenter" in reason or "reassociate" in reason:
            want = ["CAP_SYS_ADMIN"]  # nsenter could not enter the namespace (setns)
        else:
            want = []
            for name in names:
                # iptables-legacy-save: a raw socket, then getsockopt; nf_tables: netlink
                want += ["CAP_NET_RAW", "CAP_NET_ADMIN"] if "legacy" in name else ["CAP_NET_ADMIN"]
        caps += [cap for cap in want if cap not in caps]
    return caps


def _listed(failures: dict[str, list[str]]) -> str:
    """'cmd, cmd: reason; cmd: reason' - each cause said once."""
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in failures.items())


def _hint(failures: dict[str, list[str]]) -> str:
    """What a user should do about the failures, in a few words."""
    caps = _capabilities_for(failures)
    if caps:
        return (
            f"give the exporter {' and '.join(caps)} (ambient, so iptables inherits them) or run it as root"
        )
    if any("timed out" in reason for reason in failures):
        return "check whether iptables is hanging on this host"
    return "check that iptables works in this namespace"


# Partial failures (the port label of some rules is lost) are logged once per process, not
# on every refresh of the port map.
_warned = LogOnce(log)


def _warn_once(message: str) -> None:
    _warned.log(message, logging.WARNING, "%s", message)


def read_mangle_rules(namespace_path: str, timeout: float = 5.0) -> str:
    """Every iptables backend's mangle table inside the namespace ("" = current), concatenated.

    Raises MarksError only when no backend could be read at all.
    """
    where = f"network namespace {namespace_path}" if namespace_path else "the current network namespace"
    cannot = f"cannot read iptables rules in {where}"
    prefix: list[str] = []
    if namespace_path:
        try:
            st = os.stat(namespace_path)
        except FileNotFoundError:
            raise MarksError(
                f"{where} does not exist: check the namespace path "
                "(Docker creates ingress_sbox when the node joins a swarm)"
            ) from None
        except PermissionError:
            raise MarksError(
                f"{where} is not accessible: give the exporter CAP_DAC_READ_SEARCH or run it as root"
            ) from None
        if not stat.S_ISREG(st.st_mode):  # nsfs files are; nsenter would block on a FIFO
            raise MarksError(
                f"{namespace_path} is not a network namespace: point --namespace-path at one, "
                "e.g. /var/run/docker/netns/ingress_sbox"
            )
        nsenter = _system_command("nsenter")
        if not nsenter:
            raise MarksError(f"{cannot}: nsenter not found, install util-linux")
        prefix = [nsenter, f"--net={namespace_path}", "--"]
    commands = _save_commands()
    if not commands:
        raise MarksError(f"{cannot}: no iptables-save in {SYSTEM_PATH}, install iptables")
    legacy = None
    if any(backend == "legacy" for _, backend, _ in commands):
        legacy = _legacy_mangle_families(prefix, timeout)
    if legacy is not None and legacy.unreadable:
        lists = " and ".join(_LEGACY_TABLE_LISTS[f] for f in sorted(legacy.unreadable))
        _warn_once(
            f"cannot read {lists} in {where} (permission denied), so rules in legacy iptables "
            "are not read and ports published there get an empty port label: give the exporter "
            "CAP_DAC_READ_SEARCH or run it as root (hosts whose rules are all in nf_tables can "
            "ignore this)"
        )
    texts: list[str] = []
    failures: dict[str, list[str]] = {}  # reason -> commands, so a shared cause is said once
    for family, backend, command in commands:
        if backend == "legacy" and legacy is not None and family not in legacy.mangle:
            # no legacy table, so no rules: don't create one by reading it (an unreadable
            # list is warned about above; reading the table could create it)
            texts.append("")
            continue
        # argv[0] keeps its name (no realpath): xtables-*-multi picks the backend from it.
        out, reason = _run(prefix + [command, "-t", "mangle"], timeout)
        if out is not None or _table_missing(reason):
            texts.append(out or "")
        else:
            failures.setdefault(reason, []).append(os.path.basename(command))
    said = _listed(failures)
    if not texts:
        raise MarksError(f"{cannot}: {said}; {_hint(failures)}")
    denied = {reason: names for reason, names in failures.items() if _denied(reason)}
    if denied:
        # another backend answered, so this is easy to miss: ports published through the
        # failed one get an empty port label
        _warn_once(
            f"some iptables rules in {where} cannot be read, so ports published there get an "
            f"empty port label: {_listed(denied)}; {_hint(denied)}"
        )
    elif failures:
        log.debug("some iptables backends failed in %s: %s", where, said)
    return "".join(texts)


class SwarmMarks:
    """Cache of fwmark -> ports and VIPs for one namespace: reading iptables costs processes,
    scrapes are frequent.

    When the set of fwmarks asked for changes (a service came or went), the rules are re-read
    before answering. Every max_age seconds they are re-read in the background: that scrape
    and the ones during the read answer from the cache, the next ones see the new rules (at
    10,000 rules under emulation a read takes seconds; no scrape waits for it). A failed
    refresh keeps the last good map and records the error (the cache's `error`); each message is
    logged once until a read succeeds again. The policy is refresh.Refreshing's.
    """

    def __init__(
        self,
        namespace_path: str,
        max_age: float = 60.0,
        reader: Callable[[str], str] = read_mangle_rules,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn | None = None,
    ) -> None:
        self.namespace_path = namespace_path
        self._reader = reader
        self._said = LogOnce(log)
        self._cache: Refreshing[int, MarkMap] = Refreshing(
            self._read,
            MarkMap({}, {}),
            max_age=max_age,
            wait_for_new_keys=True,
            clock=clock,
            spawn=spawn,
            name="marks-refresh",
        )

    def lookup(self, fwmarks: Iterable[int]) -> dict[int, list[PublishedPort]]:
        """Ports of each asked fwmark that has any; never raises (an empty set reads nothing)."""
        wanted = frozenset(fwmarks)
        found = self._cache.get(wanted).ports
        return {mark: list(found[mark]) for mark in sorted(wanted) if mark in found}

    def vips(self, fwmarks: Iterable[int]) -> dict[int, list[str]]:
        """VIPs of each asked fwmark that has any (INPUT -d VIP/32 rules); never raises."""
        wanted = frozenset(fwmarks)
        found = self._cache.get(wanted).vips
        return {mark: list(found[mark]) for mark in sorted(wanted) if mark in found}

    def close(self) -> None:
        """Start no more reads (the namespace is no longer scraped)."""
        self._cache.close()

    def _read(self) -> MarkMap:
        """One read of the rules; a failure is logged (once per message until a read works) and raised."""
        try:
            marks = parse_marks(self._reader(self.namespace_path))
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            self._said.log(message, logging.WARNING, "published ports unavailable: %s", message)
            raise
        self._said.reset()
        return marks
