"""A small authoritative DNS server for tests (dnspython over UDP on a loopback port).

It answers from a zone the test edits while it runs: ``zone[(name, rdtype)] = [rdata, ...]``.
A query for a name that has a CNAME gets the CNAME (and, as an authoritative
server would, whatever the zone holds for its target); a name the zone does not
know is NXDOMAIN.
"""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stopping = False

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self.sock.close()

    def set(self, name: str, rdtype: str, *values: str) -> None:
        key = (name.rstrip(".").lower(), rdtype)
        if values:
            self.zone[key] = list(values)
        else:
            self.zone.pop(key, None)

    def _names(self) -> set[str]:
        return {name for name, _ in self.zone}

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        for _ in range(8):  # follow CNAMEs inside the zone
            if name not in self._names():
                if not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            values = self.zone.get((name, rdtype))
            if values:
                response.answer.append(dns.rrset.from_text_list(f"{name}.", 60, "IN", rdtype, values))
                break
            cname = self.zone.get((name, "CNAME"))
            if not cname:
                break
            response.answer.append(dns.rrset.from_text_list(f"{name}.", 60, "IN", "CNAME", cname))
            name = cname[0].rstrip(".").lower()
        return response

    def _serve(self) -> None:
        while not self._stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self._answer(dns.message.from_wire(data))
            except dns.exception.DNSException:  # a malformed query: no answer, as a real server may do
                continue
            self.sock.sendto(reply.to_wire(), peer)
