"""`netconf_notifications` listener: RFC 5277 notifications of optical switches -> event points.

A poll sees a cross-connect change only at the next interval; the switch's
`cross-connect-change` notification says so within a second. This listener keeps one NETCONF
session per configured switch with a subscription on it (create-subscription, NETCONF stream),
and turns each notification into `optical_switch_event` points (source `notification`), the
same points the driver writes when a poll finds a changed map.

ncclient is blocking, so each switch has a daemon thread waiting on `take_notification`; what it
receives is handed to the collector's `emit` on the event loop. A dropped session is opened
again (with the shared layer's back-off) and subscribed again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import ClassVar, Literal, cast

from lxml import etree
from pydantic import Field

from qkdtel.drivers.netconf import NetconfConnection, NetconfSession
from qkdtel.drivers.netconf_switch.events import Change, change_events
from qkdtel.drivers.netconf_switch.model import Q
from qkdtel.sdk import Emit, Listener, ListenerContext, Model, PollError, Sample

log = logging.getLogger(__name__)

WAIT = 0.5
"""Seconds one wait for a notification lasts, so `stop` is noticed that quickly."""
FIRST_SUBSCRIPTION = 10.0
"""Longest `start` waits for the subscriptions (a switch down must not hold up the daemon)."""


class SwitchSubscription(NetconfConnection):
    """One switch to subscribe to, and the configured device its events belong to."""

    device: str = Field(min_length=1, description="device name the events are tagged with")


class NotificationOptions(Model):
    """The switches whose notifications are received."""

    switches: list[SwitchSubscription] = Field(min_length=1)


def parse_changes(notification: etree._Element) -> list[Change]:
    """The pairs of a `cross-connect-change` notification (other notifications: none)."""
    event = notification.find(f"{Q}cross-connect-change")
    if event is None:
        return []
    changes: list[Change] = []
    for pair in event.findall(f"{Q}pair"):
        ingress, egress = pair.findtext(f"{Q}ingress"), pair.findtext(f"{Q}egress")
        change = (pair.findtext(f"{Q}change") or "").strip()
        if ingress is None or egress is None or change not in ("added", "removed"):
            log.warning("cross-connect-change with an incomplete pair: %s", etree.tostring(pair))
            continue
        kind = cast(Literal["added", "removed"], change)
        changes.append((int(ingress), int(egress), kind))
    return changes


class _Subscriber:
    """The thread receiving one switch's notifications."""

    def __init__(self, options: SwitchSubscription, tags: dict[str, str]):
        self.options = options
        self.tags = tags
        self.session = NetconfSession(options.device, options, rpc_timeout=10.0)
        self.subscribed = threading.Event()
        self.received = 0

    def run(self, stop: threading.Event, deliver) -> None:
        subscribed_on = -1
        complained = False
        while not stop.is_set():
            try:
                manager = self.session.manager()
                if subscribed_on != self.session.connects:
                    self.session.call("create-subscription", lambda m: m.create_subscription())
                    subscribed_on = self.session.connects
                    self.subscribed.set()
                    complained = False
                note = manager.take_notification(block=True, timeout=WAIT)
            except PollError as exc:
                if not complained:
                    log.warning("%s: notifications: %s", self.options.device, exc)
                    complained = True
                self.subscribed.clear()
                stop.wait(WAIT)
                continue
            if note is None:
                if not manager.connected:
                    self.session.drop()
                continue
            samples = self._samples(note.notification_ele)
            if samples:
                self.received += 1
                deliver(samples)

    def _samples(self, notification: etree._Element) -> list[Sample]:
        samples = change_events(parse_changes(notification), "notification")
        return [s.with_default_tags(self.tags) for s in samples]


class NetconfNotificationListener(Listener[NotificationOptions]):
    """Cross-connect changes pushed by switches (RFC 5277), as `optical_switch_event` points."""

    description: ClassVar[str] = "NETCONF notifications of optical switches"

    def __init__(self, name: str, options: NotificationOptions):
        super().__init__(name, options)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.subscribers: list[_Subscriber] = []

    async def start(self, emit: Emit, context: ListenerContext) -> None:
        loop = asyncio.get_running_loop()
        configured = {d.name: dict(d.tags) for d in context.devices}

        def deliver(samples: list[Sample]) -> None:
            asyncio.run_coroutine_threadsafe(emit(samples), loop).result()

        for switch in self.options.switches:
            tags = {**configured.get(switch.device, {}), "device": switch.device}
            subscriber = _Subscriber(switch, tags)
            thread = threading.Thread(
                target=subscriber.run,
                args=(self._stop, deliver),
                name=f"netconf-notifications:{switch.device}",
                daemon=True,
            )
            self.subscribers.append(subscriber)
            self._threads.append(thread)
            thread.start()
        await asyncio.to_thread(self._await_subscriptions)

    def _await_subscriptions(self) -> None:
        for subscriber in self.subscribers:
            if not subscriber.subscribed.wait(FIRST_SUBSCRIPTION):
                log.warning(
                    "%s: not subscribed yet; notifications start when the switch answers",
                    subscriber.options.device,
                )

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=2 * WAIT + 1)
        for subscriber in self.subscribers:
            subscriber.session.close()
