package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"tailscale.com/disco"
	"tailscale.com/net/udprelay/endpoint"
	"tailscale.com/types/key"
)

// harness owns the API client and every socket the checks open.
type harness struct {
	opts  options
	api   *apiClient
	mu    sync.Mutex
	conns []*net.UDPConn
}

func newHarness(opts options) *harness {
	return &harness{opts: opts, api: newAPIClient(opts.api)}
}

func (h *harness) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
}

// socket opens a UDP socket on an ephemeral port: every socket is a
// distinct source ip:port as seen by the relay.
func (h *harness) socket() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return c, nil
}

// client is one relay client: a disco key, its current socket and the last
// handshake generation it used.
type client struct {
	name       string
	key        key.DiscoPrivate
	conn       *net.UDPConn
	generation uint32
}

// nextGeneration is a new, nonzero generation for c's next handshake.
func (c *client) nextGeneration() uint32 {
	c.generation++
	return c.generation
}

// session is one allocation shared by two clients.
type session struct {
	h     *harness
	relay netip.AddrPort
	ep    endpoint.ServerEndpoint
	a, b  *client
}

// newSession makes two clients with fresh keys and sockets and allocates an
// endpoint for them.
func (h *harness) newSession() (*session, error) {
	a, b := key.NewDisco(), key.NewDisco()
	ep, err := h.api.allocate(a.Public(), b.Public())
	if err != nil {
		return nil, err
	}
	s := &session{h: h, ep: ep}
	for _, ap := range ep.AddrPorts {
		if ap.Addr().Unmap().Is4() {
			s.relay = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			break
		}
	}
	if !s.relay.IsValid() {
		return nil, fmt.Errorf("no IPv4 address in AddrPorts %v", ep.AddrPorts)
	}
	s.a = &client{name: "A", key: a}
	s.b = &client{name: "B", key: b}
	for _, c := range []*client{s.a, s.b} {
		if c.conn, err = h.socket(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// peer is the other client of c's endpoint.
func (s *session) peer(c *client) *client {
	if c == s.a {
		return s.b
	}
	return s.a
}

// common is the valid body of c's bind messages for generation.
func (s *session) common(c *client, generation uint32) disco.BindUDPRelayEndpointCommon {
	return disco.BindUDPRelayEndpointCommon{VNI: s.ep.VNI, Generation: generation, RemoteKey: s.peer(c).key.Public()}
}

// send writes one datagram from conn to the relay.
func (s *session) send(conn *net.UDPConn, b []byte) error {
	_, err := conn.WriteToUDPAddrPort(b, s.relay)
	return err
}

// sendControl seals msg from c to the server and sends it from conn with
// the endpoint's VNI in the Geneve header.
func (s *session) sendControl(c *client, conn *net.UDPConn, msg disco.Message) error {
	return s.send(conn, controlPacket(s.ep.VNI, c.key, s.ep.ServerDisco, msg))
}

// sendBind sends a BindUDPRelayEndpoint with body m for c from conn.
func (s *session) sendBind(c *client, conn *net.UDPConn, m disco.BindUDPRelayEndpointCommon) error {
	return s.sendControl(c, conn, &disco.BindUDPRelayEndpoint{BindUDPRelayEndpointCommon: m})
}

// bind sends a valid Bind of generation for c from conn and returns the
// Challenge, which must echo the Bind's VNI, Generation and RemoteKey.
func (s *session) bind(c *client, conn *net.UDPConn, generation uint32) (disco.BindUDPRelayEndpointCommon, error) {
	sent := s.common(c, generation)
	if err := s.sendBind(c, conn, sent); err != nil {
		return sent, err
	}
	b, err := s.h.receive(conn, s.relay)
	if err != nil {
		return sent, fmt.Errorf("client %s: no challenge for its bind of generation %d: %v", c.name, generation, err)
	}
	ch, err := openChallenge(b, s.ep.VNI, c.key, s.ep.ServerDisco)
	if err != nil {
		return ch, fmt.Errorf("client %s: %v", c.name, err)
	}
	if ch.VNI != sent.VNI || ch.Generation != sent.Generation || ch.RemoteKey.Compare(sent.RemoteKey) != 0 {
		return ch, fmt.Errorf("client %s: challenge echoes VNI %d generation %d RemoteKey %v, want %d %d %v",
			c.name, ch.VNI, ch.Generation, ch.RemoteKey.ShortString(), sent.VNI, sent.Generation, sent.RemoteKey.ShortString())
	}
	return ch, nil
}

// answer sends c's Answer echoing challenge from conn.
func (s *session) answer(c *client, conn *net.UDPConn, challenge disco.BindUDPRelayEndpointCommon) error {
	return s.sendControl(c, conn, &disco.BindUDPRelayEndpointAnswer{BindUDPRelayEndpointCommon: challenge})
}

// handshake runs c's 3-way handshake with a new generation from its socket.
func (s *session) handshake(c *client) error {
	ch, err := s.bind(c, c.conn, c.nextGeneration())
	if err != nil {
		return err
	}
	return s.answer(c, c.conn, ch)
}

func (s *session) handshakeBoth() error {
	if err := s.handshake(s.a); err != nil {
		return err
	}
	return s.handshake(s.b)
}

// randomData is a data packet on the endpoint's VNI with a random payload.
func (s *session) randomData() []byte {
	payload := make([]byte, 48)
	rand.Read(payload)
	return dataPacket(s.ep.VNI, payload)
}

// relays sends a data packet from one client and requires the other to
// receive it byte for byte, header included, from the relay address.
// relays requires a data packet from one client to reach the other unchanged.
// Nothing acknowledges an Answer, so a packet sent right after one may reach
// a server that has not yet acted on it (the reference reads its sockets from
// several goroutines): like a real client, this one sends again, a new packet
// each time, up to three times within --reply-timeout.
func (s *session) relays(from, to *client) error {
	const attempts = 3
	var sent [][]byte
	var err error
	for range attempts {
		pkt := s.randomData()
		sent = append(sent, pkt)
		if err := s.send(from.conn, pkt); err != nil {
			return err
		}
		var got []byte
		got, err = s.h.receiveWithin(to.conn, s.relay, s.h.opts.replyTimeout/attempts)
		if err != nil {
			continue
		}
		for _, pkt := range sent {
			if sameBytes(got, pkt) == nil {
				return nil
			}
		}
		return fmt.Errorf("data %s->%s altered: got % x", from.name, to.name, got)
	}
	return fmt.Errorf("data %s->%s not relayed: %v", from.name, to.name, err)
}

func (s *session) relaysBothWays() error {
	if err := s.relays(s.a, s.b); err != nil {
		return err
	}
	return s.relays(s.b, s.a)
}

// notBound requires that c, whose peer is bound, is not: data sent from any
// of conns reaches the peer nowhere, and data the peer sends reaches none of
// conns.
func (s *session) notBound(c *client, conns ...*net.UDPConn) error {
	peer := s.peer(c)
	for _, conn := range append(conns, peer.conn) {
		if err := s.send(conn, s.randomData()); err != nil {
			return err
		}
	}
	if err := s.h.silent(append(conns, peer.conn)...); err != nil {
		return fmt.Errorf("client %s was bound: %v", c.name, err)
	}
	return nil
}

// receive waits up to --reply-timeout for one datagram on conn and requires
// it to come from the relay's address.
func (h *harness) receive(conn *net.UDPConn, relay netip.AddrPort) ([]byte, error) {
	return h.receiveWithin(conn, relay, h.opts.replyTimeout)
}

// receiveWithin is receive with its own timeout.
func (h *harness) receiveWithin(conn *net.UDPConn, relay netip.AddrPort, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, 1<<16)
	conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("nothing within %v", timeout)
		}
		return nil, err
	}
	if from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()); from != relay {
		return nil, fmt.Errorf("datagram from %v, want the relay %v", from, relay)
	}
	return buf[:n], nil
}

// silent waits --timeout on all conns at once and fails if any receives
// anything.
func (h *harness) silent(conns ...*net.UDPConn) error {
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	deadline := time.Now().Add(h.opts.silence)
	for i, conn := range conns {
		wg.Go(func() { errs[i] = expectNothing(conn, deadline) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func expectNothing(conn *net.UDPConn, deadline time.Time) error {
	buf := make([]byte, 1<<16)
	conn.SetReadDeadline(deadline)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("unexpected datagram on %v: %s", conn.LocalAddr(), describe(buf[:n], from))
}
