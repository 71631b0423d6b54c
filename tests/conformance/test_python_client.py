"""Our Python client (the one the rest of the suite uses) against both servers.

Passing against the reference proves the client itself, so the tests built on
it cannot share a misreading of docs/protocol.md with our server.
"""

from relay.protocol import disco
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.protocol.server_endpoint import ServerEndpoint
from tests.conformance.wire_script import Socket, post_allocation


def test_python_client_allocates_binds_and_relays(server):
    keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
    status, body = post_allocation(server.url, [str(k.public) for k in keys])
    assert status == 200, body
    endpoint = ServerEndpoint.from_json(body)
    assert endpoint.server_disco == DiscoPublicKey.parse(server.server_disco)
    clients = [RelayClient(k, endpoint.server_disco, endpoint.vni, protocol=0) for k in keys]
    sockets = [Socket("a"), Socket("b")]
    try:
        for client, sock in zip(clients, sockets, strict=True):
            sock.send(client.bind(), server.udp)
            challenge = sock.receive()
            assert isinstance(client.read_control(challenge), disco.BindUDPRelayEndpointChallenge)
            sock.send(client.answer(challenge), server.udp)
        # the answers and this packet reach the server's one socket in the order sent
        sockets[0].send(clients[0].data(b"from the python client"), server.udp)
        assert clients[1].read_data(sockets[1].receive()) == b"from the python client"
        sockets[1].send(clients[1].data(b"and back"), server.udp)
        assert clients[0].read_data(sockets[0].receive()) == b"and back"
    finally:
        for sock in sockets:
            sock.close()
