"""A caller's SDP offer, screened before aiortc sees it, and the answer's refused media. Sans-I/O: text in, text out.

An offer is refused (``SdpRefused``, the client's ``bad_sdp``) when it is over ``max_sdp_bytes`` or lists more
than ``max_candidates`` ICE candidates. Candidates at addresses the policy does not allow are dropped from the
offer, so aioice never sends a connectivity check there: a client must not use the server to probe its
loopback, link-local or any network the config leaves out. ``reject_media`` sets the port of the answer's
media sections of a refused kind (video) to 0 and takes them out of the BUNDLE group (RFC 8843).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SdpRefused(ValueError):
    """The offer breaks a limit; the message says which (it goes to the client)."""


@dataclass(frozen=True, slots=True)
class CandidatePolicy:
    """Which ICE candidate addresses of a caller the server may send connectivity checks to."""

    networks: tuple[IpNetwork, ...] | None = None  # None: any address but the never-ones below
    hostnames: bool = False  # mDNS ``*.local`` names: aioice would resolve them to any address

    @classmethod
    def build(cls, networks: Iterable[str] | None, *, hostnames: bool) -> CandidatePolicy:
        """From config strings (``10.0.0.0/8``, ``2001:db8::/32``); raises ``ValueError`` for a bad one."""
        parsed = None if networks is None else tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        return cls(parsed, hostnames)

    def allows(self, address: str) -> bool:
        try:
            ip: IpAddress = ipaddress.ip_address(address)
        except ValueError:
            return self.hostnames and bool(address)
        if self.networks is not None:
            return any(ip.version == net.version and ip in net for net in self.networks)
        return not _never_by_default(ip)


def _never_by_default(ip: IpAddress) -> bool:
    """Loopback, link-local, unspecified, multicast and broadcast: never a caller's address on the way in."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip == ipaddress.IPv4Address("255.255.255.255")
    )


@dataclass(frozen=True, slots=True)
class Screened:
    sdp: str
    kept: int  # candidates left for aioice
    dropped: int  # candidates the policy does not allow, or that aioice cannot use (not UDP)


def screen_offer(sdp: str, *, max_sdp_bytes: int, max_candidates: int, policy: CandidatePolicy) -> Screened:
    """The offer with the candidates the policy does not allow removed; ``SdpRefused`` over a limit."""
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > max_sdp_bytes:
        raise SdpRefused(f"the offer is {size} bytes, over the {max_sdp_bytes}-byte limit")
    lines = sdp.splitlines()
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    if len(candidates) > max_candidates:
        raise SdpRefused(f"the offer lists {len(candidates)} ICE candidates, over the limit of {max_candidates}")
    kept: list[str] = []
    dropped = 0
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            usable = len(fields) >= 8 and fields[2].lower() == "udp" and policy.allows(fields[4])
            if not usable:
                dropped += 1
                continue
        kept.append(line)
    if candidates and dropped == len(candidates):
        raise SdpRefused("none of the offer's ICE candidates is an address this server may reach")
    return Screened("\r\n".join(kept) + "\r\n", len(candidates) - dropped, dropped)


def reject_media(sdp: str, kinds: frozenset[str]) -> str:
    """The answer with its media sections of ``kinds`` refused: port 0, out of the BUNDLE group."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    refused_mids: set[str] = set()
    for section in sections[1:]:
        fields = section[0][2:].split(" ")
        if fields[0] in kinds:
            section[0] = " ".join(["m=" + fields[0], "0", *fields[2:]])
            refused_mids |= {line[6:] for line in section if line.startswith("a=mid:")}
    head: list[str] = []
    for line in sections[0]:
        if line.startswith("a=group:BUNDLE"):
            kept = [mid for mid in line.split()[1:] if mid not in refused_mids]
            if not kept:
                continue  # nothing left to bundle
            line = " ".join(["a=group:BUNDLE", *kept])
        head.append(line)
    sections[0] = head
    return "\r\n".join(line for section in sections for line in section) + "\r\n"
