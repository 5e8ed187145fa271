"""Safe cross-connect changes: guards first, then lock, candidate, validate, confirmed commit.

    control = SwitchControl("sw-quevedo", options, link_loss_db={"3": 4.3, "4": 10.0},
                            others={"sw-quijote": quijote_options})
    outcome = control.change("connect", 5, 15)          # or disconnect / move; dry_run=True

Why it is built like this:
- The guards (`guards.py`) run on the switch's current map before anything is sent; for a
  new quantum cross-connect, the maps of the `others` switches are read (`get` only) so the
  loss budget covers the whole path across them, not just this switch's hop.
- The change goes through the candidate datastore under its lock (and running's, where running
  is writable directly), so no other manager can interleave; it is validated by the switch
  and committed *confirmed*: the
  switch applies it but rolls it back by itself unless a confirming commit follows within
  `confirm_timeout`. The confirming commit is sent only after the running map read back is the
  one planned. A session lost after the confirmed commit therefore leaves the switch rolled back
  (RFC 6241 section 8.4: at once when the session ends, at the latest at the timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ncclient.manager import Manager

from qkdtel.drivers.netconf import NetconfSession, RpcError
from qkdtel.drivers.netconf_switch.guards import (
    ChangeRefused,
    OtherSwitch,
    check_budget,
    check_classical,
)
from qkdtel.drivers.netconf_switch.model import (
    SwitchState,
    pairs_edit,
    parse_switch,
    subtree_filter,
)
from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.sdk import ConnectionLost, DeviceTimeout, PollError

log = logging.getLogger(__name__)

Operation = Literal["connect", "disconnect", "move"]


class ChangeFailed(Exception):
    """The switch did not take the change; the message says what state it is left in."""


@dataclass(frozen=True)
class Outcome:
    """What a change did (or, with dry_run, would do)."""

    before: dict[int, int]
    after: dict[int, int]
    diff: list[str]
    applied: bool


def diff_lines(before: Mapping[int, int], after: Mapping[int, int]) -> list[str]:
    """`- 1 -> 11` for a pair that goes, `+ 1 -> 13` for one that comes."""
    lines = []
    for ingress in sorted(set(before) | set(after)):
        old, new = before.get(ingress), after.get(ingress)
        if old == new:
            continue
        if old is not None:
            lines.append(f"- {ingress} -> {old}")
        if new is not None:
            lines.append(f"+ {ingress} -> {new}")
    return lines


def read_state(session: NetconfSession) -> SwitchState:
    """A switch as it is now (get: configuration and state)."""
    reply = session.call("get", lambda m: m.get(filter=subtree_filter()))
    return parse_switch(reply.data_ele, session.where)


def read_others(others: Mapping[str, SwitchOptions], rpc_timeout: float) -> dict[str, OtherSwitch]:
    """The other switches' current maps, for following a quantum path across them.

    Read-only by design: nothing but a `get` is sent to them (each over its own session,
    closed after). One that cannot be read is kept with its error; the budget guard refuses
    only if the path actually reaches it."""
    read: dict[str, OtherSwitch] = {}
    for name, options in others.items():
        session = NetconfSession(name, options, rpc_timeout)
        try:
            read[name] = OtherSwitch(name, options, read_state(session).pairs)
        except PollError as exc:
            read[name] = OtherSwitch(name, options, None, str(exc))
        finally:
            session.close()
    return read


def planned(
    current: Mapping[int, int], operation: Operation, ingress: int, egress: int | None
) -> dict[int, int]:
    """The map after `operation`; refuses what the map makes meaningless."""
    after = dict(current)
    fed = {e: i for i, e in current.items()}
    if operation == "disconnect":
        if ingress not in current:
            raise ChangeRefused(f"ingress {ingress} is not connected")
        if egress is not None and current[ingress] != egress:
            raise ChangeRefused(f"ingress {ingress} feeds {current[ingress]}, not {egress}")
        del after[ingress]
        return after
    assert egress is not None
    if egress in fed and fed[egress] != ingress:
        raise ChangeRefused(f"egress {egress} is already fed by ingress {fed[egress]}")
    if operation == "connect" and ingress in current:
        raise ChangeRefused(
            f"ingress {ingress} already feeds {current[ingress]}: use move to change it"
        )
    if operation == "move" and ingress not in current:
        raise ChangeRefused(f"ingress {ingress} is not connected: use connect")
    if current.get(ingress) == egress:
        raise ChangeRefused(f"ingress {ingress} already feeds {egress}")
    after[ingress] = egress
    return after


class SwitchControl:
    """Changes to one switch's cross-connects over its own NETCONF session."""

    def __init__(
        self,
        name: str,
        options: SwitchOptions,
        link_loss_db: Mapping[str, float],
        rpc_timeout: float = 30.0,
        others: Mapping[str, SwitchOptions] | None = None,
    ):
        """`others`: the other switches of the configuration (name -> options), read with
        `get` only, to follow a new quantum path across their cross-connects."""
        self.name = name
        self.others = dict(others or {})
        self.rpc_timeout = rpc_timeout
        self.options = options
        self.link_loss_db = link_loss_db
        self.session = NetconfSession(name, options, rpc_timeout)

    def state(self) -> SwitchState:
        """The switch as it is now (get: configuration and state)."""
        return read_state(self.session)

    def change(
        self,
        operation: Operation,
        ingress: int,
        egress: int | None = None,
        *,
        dry_run: bool = False,
        override_classical: bool = False,
        local_budget_only: bool = False,
    ) -> Outcome:
        """Plan, guard, and (unless `dry_run`) apply one change; raise `ChangeRefused` from a
        guard (nothing sent) or `ChangeFailed` (the message says what the switch is left in).
        `local_budget_only`: do not read the other switches; the budget covers this hop."""
        before = self.state().pairs
        after = planned(before, operation, ingress, egress)
        check_classical(before, after, self.options, override_classical)
        others = {} if local_budget_only else self._others_if_quantum(before, after)
        check_budget(self.name, before, after, self.options, self.link_loss_db, others)
        diff = diff_lines(before, after)
        if not dry_run:
            self._apply(before, after)
        return Outcome(before, after, diff, applied=not dry_run)

    def close(self) -> None:
        self.session.close()

    def _others_if_quantum(
        self, before: Mapping[int, int], after: Mapping[int, int]
    ) -> dict[str, OtherSwitch]:
        """The other switches' maps, read only when the change makes a quantum cross-connect
        (a disconnect or a classical change has no path to follow)."""
        new = [(i, e) for i, e in after.items() if before.get(i) != e]
        roles = self.options.ports
        quantum = any(
            all(roles.get(p) is not None and roles[p].carries == "quantum" for p in pair)
            for pair in new
        )
        return read_others(self.others, self.rpc_timeout) if quantum else {}

    # -- the NETCONF sequence -------------------------------------------------------------

    def _call(self, what: str, request: Callable[[Manager], object]) -> object:
        """One step of a change, on the session the change began on (never a new one)."""
        return self.session.call(what, request, reconnect=False)

    def _apply(self, before: dict[int, int], after: dict[int, int]) -> None:
        locked: list[str] = []
        committed = False
        timeout = int(self.options.confirm_timeout)
        try:
            manager = self.session.manager()  # the session the whole change runs on
            for target in self._lock_targets(manager):
                self._call(f"lock {target}", lambda m, t=target: m.lock(target=t))
                locked.append(target)
            self._call("discard-changes", lambda m: m.discard_changes())
            edit = pairs_edit(before, after)
            self._call("edit-config", lambda m: m.edit_config(target="candidate", config=edit))
            if self.options.validate_candidate:
                self._call("validate", lambda m: m.validate(source="candidate"))
            self._call(
                "commit confirmed",
                lambda m: m.commit(confirmed=True, timeout=str(timeout)),
            )
            committed = True
            self._verify(after)
            self._call("commit (confirm)", lambda m: m.commit())
        except (ConnectionLost, DeviceTimeout) as exc:
            raise ChangeFailed(self._lost_message(exc, committed, timeout)) from exc
        except ChangeFailed:
            self._back_out(committed)
            raise
        except PollError as exc:
            self._back_out(committed)
            raise ChangeFailed(self._refused_message(exc, committed)) from exc
        finally:
            self._unlock(locked)

    @staticmethod
    def _lock_targets(manager: Manager) -> tuple[str, ...]:
        """The datastores to lock: the candidate, and running only where it can be written
        directly (:writable-running); otherwise running changes only by commits of the
        locked candidate. Why not always both: netconfd 2.13 tries to roll back a lost
        session's confirmed commit before it drops that session's lock on running, fails
        ("restore running config failed (config locked)") and leaves the change in place."""
        writable = any(":writable-running" in c for c in manager.server_capabilities)
        return ("running", "candidate") if writable else ("candidate",)

    def _verify(self, after: dict[int, int]) -> None:
        """Read running back; a map other than planned is not confirmed."""
        reply = self._call("get-config", lambda m: m.get_config("running", filter=subtree_filter()))
        running = parse_switch(reply.data_ele, self.session.where).pairs  # type: ignore[attr-defined]
        if running != after:
            raise ChangeFailed(
                f"{self.session.where}: running cross-connects after the confirmed commit are "
                f"{running}, not the planned {after}"
            )

    def _back_out(self, committed: bool) -> None:
        """After an rpc-error: undo what this session did (cancel or discard), quietly."""
        what = "cancel-commit" if committed else "discard-changes"
        try:
            if committed:
                self._call(what, lambda m: m.cancel_commit())
            else:
                self._call(what, lambda m: m.discard_changes())
        except PollError as exc:
            log.warning("%s: %s after a failed change: %s", self.name, what, exc)

    def _unlock(self, locked: list[str]) -> None:
        if not self.session.connected:
            return  # the server released this session's locks when it ended
        for target in reversed(locked):
            try:
                self._call(f"unlock {target}", lambda m, t=target: m.unlock(target=t))
            except PollError as exc:
                log.warning("%s: unlock %s: %s", self.name, target, exc)

    def _lost_message(self, exc: PollError, committed: bool, timeout: int) -> str:
        if committed:
            return (
                f"{exc}: the session was lost after the confirmed commit and before it was "
                f"confirmed; the switch rolls the change back by itself (at once as the "
                f"session ends, at the latest after the {timeout} s confirm timeout)"
            )
        return (
            f"{exc}: the session was lost before the change was committed; the switch's "
            f"running cross-connects are unchanged (the candidate is discarded by the next "
            f"change)"
        )

    @staticmethod
    def _refused_message(exc: PollError, committed: bool) -> str:
        if isinstance(exc, RpcError) and exc.tag in ("lock-denied", "in-use"):
            return (
                f"{exc} -- another session (operator or controller) holds the lock; "
                f"nothing was changed"
            )
        state = "the confirmed commit was cancelled" if committed else "nothing was changed"
        return f"{exc}; {state}"
