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

// socket opens a UDP socket of the relay address's family on an ephemeral
// port: every socket is a distinct source ip:port as seen by the relay.
func (h *harness) socket(family netip.Addr) (*net.UDPConn, error) {
	network, laddr := "udp4", &net.UDPAddr{IP: net.IPv4zero}
	if family.Is6() && !family.Is4In6() {
		network, laddr = "udp6", &net.UDPAddr{IP: net.IPv6unspecified}
	}
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return c, nil
}

// client is one relay client: a fresh disco key and its own socket.
type client struct {
	name string
	key  key.DiscoPrivate
	conn *net.UDPConn
}

// session is one allocation shared by two clients.
type session struct {
	h     *harness
	relay netip.AddrPort
	ep    endpoint.ServerEndpoint
	a, b  *client
}

// newSession makes two clients, allocates an endpoint for them and picks
// the relay address of the wanted family (v6 true: IPv6) to talk to.
func (h *harness) newSession(v6 bool) (*session, error) {
	a, b := key.NewDisco(), key.NewDisco()
	al, err := h.api.allocate(a.Public(), b.Public())
	if err != nil {
		return nil, err
	}
	relay, err := h.relayAddr(al.ep, v6)
	if err != nil {
		return nil, err
	}
	s := &session{h: h, relay: relay, ep: al.ep}
	if s.a, err = h.newClient("A", a, relay); err != nil {
		return nil, err
	}
	if s.b, err = h.newClient("B", b, relay); err != nil {
		return nil, err
	}
	return s, nil
}

func (h *harness) newClient(name string, k key.DiscoPrivate, relay netip.AddrPort) (*client, error) {
	conn, err := h.socket(relay.Addr())
	if err != nil {
		return nil, err
	}
	return &client{name: name, key: k, conn: conn}, nil
}

// errNoV6 means the relay advertises no IPv6 address.
var errNoV6 = errors.New("relay advertises no IPv6 address")

// relayAddr is --relay-addr if given, else the first advertised address of
// the wanted family.
func (h *harness) relayAddr(ep endpoint.ServerEndpoint, v6 bool) (netip.AddrPort, error) {
	if h.opts.relayAddr.IsValid() && !v6 {
		return h.opts.relayAddr, nil
	}
	for _, ap := range ep.AddrPorts {
		if ap.Addr().Unmap().Is4() != v6 {
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
	}
	if v6 {
		return netip.AddrPort{}, errNoV6
	}
	return netip.AddrPort{}, fmt.Errorf("no IPv4 address in AddrPorts %v", ep.AddrPorts)
}

// send writes one datagram from conn to the relay.
func (s *session) send(conn *net.UDPConn, b []byte) error {
	_, err := conn.WriteToUDPAddrPort(b, s.relay)
	return err
}

// sendControl seals msg from c to the server and sends it from conn on vni.
func (s *session) sendControl(c *client, conn *net.UDPConn, vni uint32, msg disco.Message) error {
	return s.send(conn, controlPacket(vni, c.key, s.ep.ServerDisco, msg))
}

// bind sends BindUDPRelayEndpoint for c from conn and returns the challenge.
func (s *session) bind(c *client, conn *net.UDPConn) ([32]byte, error) {
	if err := s.sendControl(c, conn, s.ep.VNI, &disco.BindUDPRelayEndpoint{}); err != nil {
		return [32]byte{}, err
	}
	b, err := s.h.receive(conn, s.relay)
	if err != nil {
		return [32]byte{}, fmt.Errorf("client %s: no challenge for its bind: %v", c.name, err)
	}
	ch, err := openChallenge(b, s.ep.VNI, c.key, s.ep.ServerDisco)
	if err != nil {
		return ch, fmt.Errorf("client %s: %v", c.name, err)
	}
	return ch, nil
}

// answer sends BindUDPRelayEndpointAnswer carrying answer for c from conn.
func (s *session) answer(c *client, conn *net.UDPConn, answer [32]byte) error {
	return s.sendControl(c, conn, s.ep.VNI, &disco.BindUDPRelayEndpointAnswer{Answer: answer})
}

// handshake runs c's 3-way bind handshake from its own socket.
func (s *session) handshake(c *client) error {
	ch, err := s.bind(c, c.conn)
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

// relays sends a data packet from one client and requires the other to
// receive it byte for byte, header included, from the relay address.
func (s *session) relays(from, to *client) error {
	payload := make([]byte, 48)
	rand.Read(payload)
	pkt := dataPacket(s.ep.VNI, payload)
	if err := s.send(from.conn, pkt); err != nil {
		return err
	}
	got, err := s.h.receive(to.conn, s.relay)
	if err != nil {
		return fmt.Errorf("data %s->%s not relayed: %v", from.name, to.name, err)
	}
	if err := sameBytes(got, pkt); err != nil {
		return fmt.Errorf("data %s->%s altered: %v", from.name, to.name, err)
	}
	return nil
}

func (s *session) relaysBothWays() error {
	if err := s.relays(s.a, s.b); err != nil {
		return err
	}
	return s.relays(s.b, s.a)
}

// receive waits up to --reply-timeout for one datagram on conn and requires
// it to come from the relay's address.
func (h *harness) receive(conn *net.UDPConn, relay netip.AddrPort) ([]byte, error) {
	buf := make([]byte, 1<<16)
	conn.SetReadDeadline(time.Now().Add(h.opts.replyTimeout))
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("nothing within %v", h.opts.replyTimeout)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = expectNothing(conn, deadline)
		}()
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
