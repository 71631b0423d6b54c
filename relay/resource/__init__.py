"""The RelayEndpoint resource, as both the relays' reporter and the operator use it.

:mod:`~relay.resource.definition` names it (group, version, plural, labels,
annotations, phases), :mod:`~relay.resource.status` builds its status, and
:mod:`~relay.resource.client` makes the one Kubernetes API client. It sits
below both writers of the status, so the two halves agree.
"""
