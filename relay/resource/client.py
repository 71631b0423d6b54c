"""The Kubernetes API client of the relays and the operator, configured as kubectl would be.

:func:`api_client` is the one place a client is made. :class:`RelayEndpointsApi`
is what a relay's reporter needs of the API server: its RelayEndpoints (a list,
then a watch of their changes from the list's resourceVersion), their
status to patch, and the ones it makes for its tailnet's peers to create and
delete; and what the operator's loops need: an annotation to set. The
kubernetes client is synchronous, so its calls run in a thread, each within a
timeout; a watch reads its stream in a daemon thread of its own, which closing
the watch unblocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from relay.resource.definition import GROUP, PLURAL, RELAY_LABEL, VERSION

ANNOTATE_TIMEOUT = 10.0
"""Seconds an annotation may take; the operator's loops that set one try again next pass."""


@dataclass(frozen=True)
class Listing:
    """RelayEndpoints as listed, and the resourceVersion to watch their changes from."""

    items: list[dict[str, Any]]
    resource_version: str


class WatchExpired(Exception):
    """The API server no longer has the changes since the watch's resourceVersion (410 Gone):
    list again, and watch from the new listing."""


class WatchForbidden(Exception):
    """The credentials may list RelayEndpoints but not watch them (403): an older role."""


def api_client(kubeconfig: str | None = None, retries: int | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig`` if given, else in a pod its
    service account, else the default kubeconfig (``KUBECONFIG`` or ``~/.kube/config``).

    ``retries`` replaces urllib3's default (3 retries of a failed connection or read), for
    callers that retry by themselves and need a call to end within its timeout."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)


class RelayEndpointsApi:
    """RelayEndpoints on the API server, through the kubernetes client."""

    def __init__(self, kubeconfig: str | None) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client(kubeconfig, retries=0))

    async def on_relay(self, relay: str, timeout: float) -> list[dict[str, Any]]:
        """The RelayEndpoints labelled as placed on ``relay``."""
        return (await self.listing(relay, timeout)).items

    async def listing(self, relay: str, timeout: float) -> Listing:
        """The RelayEndpoints labelled as placed on ``relay``, with the list's resourceVersion."""
        listing = await asyncio.to_thread(
            self._api.list_custom_object_for_all_namespaces,
            GROUP,
            VERSION,
            PLURAL,
            label_selector=f"{RELAY_LABEL}={relay}",
            _request_timeout=timeout,
        )
        return Listing(listing["items"], listing["metadata"]["resourceVersion"])

    async def watch(
        self, relay: str, resource_version: str, *, timeout_seconds: int, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The changes to the RelayEndpoints labelled for ``relay`` after ``resource_version``:
        watch events (``type`` ADDED, MODIFIED, DELETED or BOOKMARK, and ``object``), until
        the API server ends the watch after ``timeout_seconds``.

        A resource relabelled away comes as DELETED. Bookmarks (requested) carry only a newer
        resourceVersion. No read waits longer than ``read_timeout``: a stream silent that
        long ends as if the server had ended it, and a server that does not answer the
        request raises. Raises :class:`WatchExpired` on 410 Gone, :class:`WatchForbidden` on
        403. Closing the generator (or cancelling its reader) shuts the stream's socket, so
        that the reading thread, a daemon, never holds up the process's exit."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        stream = _WatchStream(
            lambda: self._api.list_custom_object_for_all_namespaces(
                GROUP,
                VERSION,
                PLURAL,
                label_selector=f"{RELAY_LABEL}={relay}",
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(read_timeout, read_timeout),
            ),
            lambda item: loop.call_soon_threadsafe(events.put_nowait, item),
        )
        threading.Thread(target=stream.run, name="relayendpoints-watch", daemon=True).start()
        try:
            while True:
                item = await events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.stop()

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], timeout: float
    ) -> None:
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _request_timeout=timeout,
        )

    async def create(
        self, namespace: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """Create a RelayEndpoint (its status is ignored: patch it next); the resource as
        created, or None if one of that name exists already."""
        made = await self._unless(
            409, self._api.create_namespaced_custom_object, namespace, body, timeout=timeout
        )
        return None if made is _ABSENT else made

    async def get(self, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
        """One RelayEndpoint, or None if there is none of that name."""
        found = await self._unless(
            404, self._api.get_namespaced_custom_object, namespace, name, timeout=timeout
        )
        return None if found is _ABSENT else found

    async def delete(self, namespace: str, name: str, timeout: float) -> bool:
        """Delete one RelayEndpoint (its finalizer then frees its allocation); False if it
        was gone already."""
        deleted = await self._unless(
            404, self._api.delete_namespaced_custom_object, namespace, name, timeout=timeout
        )
        return deleted is not _ABSENT

    async def annotate(
        self,
        namespace: str,
        name: str,
        annotations: dict[str, str | None],
        timeout: float = ANNOTATE_TIMEOUT,
    ) -> bool:
        """Sets the ``annotations`` of one RelayEndpoint (None removes one); False if the
        resource is gone."""
        patched = await self._unless(
            404,
            self._api.patch_namespaced_custom_object,
            namespace,
            name,
            {"metadata": {"annotations": annotations}},
            timeout=timeout,
            _content_type="application/merge-patch+json",
        )
        return patched is not _ABSENT

    async def _unless(
        self, status: int, method: Any, namespace: str, *args: Any, timeout: float, **options: Any
    ) -> Any:
        """``method`` of the CustomObjectsApi on RelayEndpoints in ``namespace``, in a thread,
        within ``timeout``; :data:`_ABSENT` when the API server answers ``status`` (404: no
        such resource, 409: one exists already)."""
        from kubernetes.client.exceptions import ApiException

        try:
            call = functools.partial(method, _request_timeout=timeout, **options)
            return await asyncio.to_thread(call, GROUP, VERSION, namespace, PLURAL, *args)
        except ApiException as exc:
            if exc.status == status:
                return _ABSENT
            raise


_ABSENT = object()
_END = object()


class _WatchStream:
    """One watch request, read in a thread: each event, then the end or an exception, given
    to ``emit`` (which must be safe to call from that thread)."""

    def __init__(self, request: Any, emit: Any) -> None:
        self._request = request
        self._emit = emit
        self._lock = threading.Lock()
        self._response: Any = None
        self._stopped = False

    def run(self) -> None:
        try:
            outcome: object = self._read()
        except BaseException as exc:  # the reader learns why the watch ended
            outcome = _translated(exc)
        with self._lock:
            stopped = self._stopped
        if not stopped:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody reads
                self._emit(outcome)

    def _read(self) -> object:
        from urllib3.exceptions import ProtocolError, ReadTimeoutError

        response = self._request()
        with self._lock:
            self._response = response
            stopped = self._stopped
        complete = False
        try:
            if stopped:
                return _END
            for line in _lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    return _error_event(event.get("object") or {})
                with self._lock:
                    if self._stopped:
                        return _END
                self._emit(event)
            with self._lock:
                complete = not self._stopped  # else the socket was shut: not to be reused
        except ReadTimeoutError:  # silent past the server's own timeout: watch again
            return _END
        except ProtocolError:
            with self._lock:
                if self._stopped:  # shut by stop()
                    return _END
            raise
        finally:
            if not complete:  # a connection with unread data cannot serve another request
                response.close()
            response.release_conn()
        return _END

    def stop(self) -> None:
        """End the watch: a read in progress returns at once."""
        with self._lock:
            self._stopped = True
            response = self._response
        if response is not None:
            _shut(response)


def _shut(response: Any) -> None:
    """Shut the response's socket for reading, which wakes a thread blocked reading it."""
    with contextlib.suppress(Exception):
        response.shutdown()  # urllib3 >= 2.3
        return
    with contextlib.suppress(Exception):
        response.connection.sock.shutdown(socket.SHUT_RDWR)


def _lines(response: Any) -> Iterator[bytes]:
    """The stream's lines as they come (each watch event is one line of JSON)."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _error_event(status: dict[str, Any]) -> BaseException:
    message = status.get("message") or status.get("reason") or "watch error"
    if status.get("code") == 410:
        return WatchExpired(message)
    from kubernetes.client.exceptions import ApiException

    return ApiException(status=status.get("code"), reason=message)


def _translated(exc: BaseException) -> BaseException:
    """410 and 403 answers as this module's exceptions; any other as it is."""
    status = getattr(exc, "status", None)
    if status == 410:
        return WatchExpired(str(exc))
    if status == 403:
        return WatchForbidden(str(exc))
    return exc
