"""Rules narrowed to one peer, port, method and protocol: what is left to check of a rule once
those are known, so that `RuleIndex` evaluates only that part per request.

A rule's sources depend only on the peer (its identity, or its address when it has none) unless
they ask for a JWT; its operations' ports, protocols and methods only on the port, the protocol
and the method. Those parts are decided once per (peer, port, method, protocol) and dropped from
the rule that is kept; a rule whose sources cannot match the peer is not kept at all, and one
with nothing left to check matches every request of that peer, port, method and protocol.
"""

from __future__ import annotations

from dataclasses import replace

from meshwarden.engine._request import Request
from meshwarden.engine._rules import CompiledOperation, CompiledRule, CompiledSource

Narrowed = tuple[CompiledRule, CompiledRule | None]
"""A rule and what is left of it to check (None: nothing, it matches)."""


def narrowed(rule: CompiledRule, req: Request) -> Narrowed | None:
    """`rule` for the peer, port, method and protocol of `req`; None when it cannot match
    them."""
    sources = rule.sources
    if sources and all(_peer_only(s, req) for s in sources):
        if not replace(rule, operations=None, conditions=()).matches(req):
            return None
        sources = None
    operations = rule.operations
    if operations:
        admitted = tuple(op for op in operations if _admits(op, req))
        if not admitted:
            return None
        if any(_port_and_method_only(op) for op in admitted):
            operations = None
        else:  # the port, the method and the protocol fit: only the rest is checked
            operations = tuple(_without_port_and_method(op) for op in admitted)
    if not sources and not operations and not rule.conditions:
        return rule, None
    return rule, replace(rule, sources=sources, operations=operations)


def _peer_only(source: CompiledSource, req: Request) -> bool:
    """Whether the source's verdict follows from the peer alone: no JWT, and no address
    field for a peer known by its identity (a request's address may differ per request)."""
    if source.jwt is not None:
        return False
    return req.identity is None or (source.ip_blocks is None and source.not_ip_blocks is None)


def _admits(op: CompiledOperation, req: Request) -> bool:
    method = req.method
    return (
        op.admits_port(req.port, req.protocol)
        and (op.methods is None or op.methods.matches(method))
        and (op.not_methods is None or not op.not_methods.matches(method))
    )


def _port_and_method_only(op: CompiledOperation) -> bool:
    return all(what == "method" for what, _, _ in op.http_checks)


def _without_port_and_method(op: CompiledOperation) -> CompiledOperation:
    return replace(op, ports=None, not_ports=None, methods=None, not_methods=None, protocols=None)
