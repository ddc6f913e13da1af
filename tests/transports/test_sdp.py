"""transports/sdp.py without sockets: the offer's size and candidate caps, the address policy, refused media."""

from __future__ import annotations

import pytest

from transports.sdp import CandidatePolicy, SdpRefused, reject_media, screen_offer

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 50000 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 192.0.2.2",
        "a=mid:0",
        "a=candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host",
        "a=candidate:2 1 udp 2130706431 127.0.0.1 50001 typ host",
        "a=candidate:3 1 udp 2130706431 169.254.1.1 50002 typ host",
        "a=candidate:4 1 udp 2130706431 ::1 50003 typ host",
        "a=candidate:5 1 udp 2130706431 fe80::1 50004 typ host",
        "a=candidate:6 1 udp 2130706431 0.0.0.0 50005 typ host",
        "a=candidate:7 1 udp 2130706431 239.1.1.1 50006 typ host",
        "a=candidate:8 1 udp 2130706431 ::ffff:127.0.0.1 50007 typ host",
        "a=candidate:9 1 udp 2130706431 4f2a6c2e-1b52-4a47-9c8e-8b4cb2c3b8d1.local 50008 typ host",
        "a=candidate:10 1 tcp 1518280447 192.0.2.2 9 typ host tcptype active",
        "a=candidate:11 1 udp 1686052607 203.0.113.7 61000 typ srflx raddr 192.0.2.2 rport 50000",
        "a=candidate:12 1 udp 2130706431 10.1.2.3 50009 typ host",
        "m=video 50000 UDP/TLS/RTP/SAVPF 96",
        "a=mid:1",
        "",
    ]
)
LIMITS = {"max_sdp_bytes": 65536, "max_candidates": 40}


def addresses(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.split("\r\n") if line.startswith("a=candidate:")]


def test_the_default_policy_drops_loopback_link_local_and_the_like() -> None:
    screened = screen_offer(OFFER, policy=CandidatePolicy(), **LIMITS)
    assert addresses(screened.sdp) == ["192.0.2.2", "203.0.113.7", "10.1.2.3"]
    assert (screened.kept, screened.dropped) == (3, 9)
    assert screened.sdp.startswith("v=0\r\n")
    assert screened.sdp.endswith("a=mid:1\r\n")


def test_configured_networks_are_the_only_ones_allowed() -> None:
    policy = CandidatePolicy.build(["192.0.2.0/24", "2001:db8::/32"], hostnames=False)
    assert addresses(screen_offer(OFFER, policy=policy, **LIMITS).sdp) == ["192.0.2.2"]
    loopback_allowed = CandidatePolicy.build(["127.0.0.0/8"], hostnames=False)  # an operator may, explicitly
    assert addresses(screen_offer(OFFER, policy=loopback_allowed, **LIMITS).sdp) == ["127.0.0.1"]
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        CandidatePolicy.build(["10.0.0.0/33"], hostnames=False)


def test_hostname_candidates_only_when_allowed() -> None:
    policy = CandidatePolicy(hostnames=True)
    assert "4f2a6c2e-1b52-4a47-9c8e-8b4cb2c3b8d1.local" in addresses(screen_offer(OFFER, policy=policy, **LIMITS).sdp)


def test_limits_refuse_the_offer() -> None:
    with pytest.raises(SdpRefused, match="over the 100-byte limit"):
        screen_offer(OFFER, policy=CandidatePolicy(), max_sdp_bytes=100, max_candidates=40)
    with pytest.raises(SdpRefused, match="12 ICE candidates, over the limit of 11"):
        screen_offer(OFFER, policy=CandidatePolicy(), max_sdp_bytes=65536, max_candidates=11)
    only_loopback = "\r\n".join(line for line in OFFER.split("\r\n") if "127.0.0.1" in line or "candidate" not in line)
    with pytest.raises(SdpRefused, match="none of the offer's ICE candidates"):
        screen_offer(only_loopback, policy=CandidatePolicy(), **LIMITS)
    no_candidates = "\r\n".join(line for line in OFFER.split("\r\n") if "candidate" not in line)
    assert screen_offer(no_candidates, policy=CandidatePolicy(), **LIMITS).kept == 0  # trickle: nothing to judge


def test_reject_media_sets_port_0_and_unbundles() -> None:
    answer = reject_media(OFFER, frozenset({"video"}))
    lines = answer.split("\r\n")
    assert "m=video 0 UDP/TLS/RTP/SAVPF 96" in lines
    assert "m=audio 50000 UDP/TLS/RTP/SAVPF 111" in lines
    assert "a=group:BUNDLE 0" in lines
    assert "a=group:BUNDLE" not in reject_media(OFFER, frozenset({"video", "audio"}))
    assert reject_media(OFFER, frozenset()) == OFFER
