package main

// The bind mode: `refclient bind` drives one endpoint that was allocated
// elsewhere (for example by the relay-fleet operator, whose RelayEndpoint
// status carries serverDisco, addrPorts and vni) with the two clients'
// existing disco private keys. See bindUsage.

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
	"unsafe"

	"tailscale.com/net/udprelay/endpoint"
	"tailscale.com/types/key"
	"tailscale.com/types/structs"
)

const bindUsage = `usage: refclient bind --server-disco discokey:HEX --relay-addr HOST:PORT --vni N
                     --key privkey:HEX --key privkey:HEX [--packets N] [--reply-timeout D]

Runs both clients' 3-way bind handshakes (BindUDPRelayEndpoint, Challenge,
Answer) against an endpoint allocated elsewhere, each client from its own UDP
socket, then relays --packets data packets from client A to client B and as
many from B to A, requiring each to arrive byte-identical (Geneve header
included) from the relay's address. Client A holds the first --key, B the
second. Prints one JSON line per check (bind_handshake_a, bind_handshake_b,
relay_a_to_b, relay_b_to_a) and exits 1 if any failed, 2 on bad usage.

flags:
`

// bindOptions are the flags of the bind mode.
type bindOptions struct {
	serverDisco  key.DiscoPublic
	relayAddr    netip.AddrPort
	vni          uint32
	keys         []key.DiscoPrivate
	packets      int
	replyTimeout time.Duration
}

// keyFlags collects repeated --key values.
type keyFlags []string

func (k *keyFlags) String() string     { return strings.Join(*k, ",") }
func (k *keyFlags) Set(v string) error { *k = append(*k, v); return nil }

// bindFlagValues are the raw flag values before validation.
type bindFlagValues struct {
	serverDisco, relayAddr string
	vni                    uint64
	keys                   keyFlags
	packets                int
	replyTimeout           time.Duration
}

// newBindFlagSet defines the bind mode's flags on a new FlagSet.
func newBindFlagSet(v *bindFlagValues, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("refclient bind", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), bindUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&v.serverDisco, "server-disco", "", "the endpoint's ServerDisco, discokey:<64 hex> (required)")
	fs.StringVar(&v.relayAddr, "relay-addr", "", "HOST:PORT of the relay's UDP socket, e.g. an AddrPorts entry (required)")
	fs.Uint64Var(&v.vni, "vni", 0, "the endpoint's VNI, 1..2^24-1 (required)")
	fs.Var(&v.keys, "key", "a client's disco private key, privkey:<64 hex> (the raw 32-byte Curve25519 key); give exactly two, A's then B's (required)")
	fs.IntVar(&v.packets, "packets", 10, "data packets to relay in each direction")
	fs.DurationVar(&v.replyTimeout, "reply-timeout", 2*time.Second, "how long to wait for a challenge or a relayed packet")
	return fs
}

// bindFlagDefaults prints the bind mode's flags, for the top-level --help.
func bindFlagDefaults(w io.Writer) {
	fs := newBindFlagSet(&bindFlagValues{}, w)
	fs.PrintDefaults()
}

func parseBindFlags(args []string, stderr io.Writer) (bindOptions, error) {
	var o bindOptions
	var v bindFlagValues
	fs := newBindFlagSet(&v, stderr)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() != 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	serverDisco, relayAddr, vni, keys := v.serverDisco, v.relayAddr, v.vni, v.keys
	o.packets, o.replyTimeout = v.packets, v.replyTimeout
	if serverDisco == "" || relayAddr == "" || vni == 0 {
		return o, fmt.Errorf("--server-disco, --relay-addr and --vni are required")
	}
	if err := o.serverDisco.UnmarshalText([]byte(serverDisco)); err != nil {
		return o, fmt.Errorf("--server-disco: %v", err)
	}
	if vni >= 1<<24 {
		return o, fmt.Errorf("--vni %d out of 1..2^24-1", vni)
	}
	o.vni = uint32(vni)
	ua, err := net.ResolveUDPAddr("udp", relayAddr)
	if err != nil {
		return o, fmt.Errorf("--relay-addr: %v", err)
	}
	ap := ua.AddrPort()
	o.relayAddr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if len(keys) != 2 {
		return o, fmt.Errorf("--key must be given exactly twice, got %d", len(keys))
	}
	for i, text := range keys {
		k, err := parseDiscoPrivate(text)
		if err != nil {
			return o, fmt.Errorf("--key #%d: %v", i+1, err)
		}
		o.keys = append(o.keys, k)
	}
	if o.keys[0].Public().Compare(o.keys[1].Public()) == 0 {
		return o, fmt.Errorf("the two --key values are the same key")
	}
	if o.packets < 1 {
		return o, fmt.Errorf("--packets must be at least 1")
	}
	if o.replyTimeout <= 0 {
		return o, fmt.Errorf("--reply-timeout must be positive")
	}
	return o, nil
}

const privateHexPrefix = "privkey:"

// parseDiscoPrivate parses privkey:<64 hex> into a key.DiscoPrivate.
func parseDiscoPrivate(text string) (key.DiscoPrivate, error) {
	h, ok := strings.CutPrefix(text, privateHexPrefix)
	if !ok {
		return key.DiscoPrivate{}, fmt.Errorf("want %s<64 hex>, got %q", privateHexPrefix, text)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != 32 {
		return key.DiscoPrivate{}, fmt.Errorf("want %s<64 hex>: not 32 bytes of hex", privateHexPrefix)
	}
	return discoPrivateFromRaw32([32]byte(raw))
}

// discoPrivateLayout mirrors key.DiscoPrivate in tailscale.com v1.84.0,
// which has no constructor from raw bytes (only NewDisco): an
// Incomparable marker, then the 32-byte Curve25519 private key.
type discoPrivateLayout struct {
	_ structs.Incomparable
	k [32]byte
}

// discoPrivateFromRaw32 makes a key.DiscoPrivate holding raw, so that the
// reference's own Shared/Seal/Open are used with a key generated elsewhere.
// It writes the unexported field through the mirrored layout, then proves
// the result: its Public() must equal X25519(raw, basepoint) as computed
// independently by crypto/ecdh. A future layout change fails here, loudly.
func discoPrivateFromRaw32(raw [32]byte) (key.DiscoPrivate, error) {
	var k key.DiscoPrivate
	if unsafe.Sizeof(k) != unsafe.Sizeof(discoPrivateLayout{}) {
		return k, errors.New("key.DiscoPrivate's layout changed; update discoPrivateLayout")
	}
	(*discoPrivateLayout)(unsafe.Pointer(&k)).k = raw
	priv, err := ecdh.X25519().NewPrivateKey(raw[:])
	if err != nil {
		return key.DiscoPrivate{}, err
	}
	if k.IsZero() {
		return key.DiscoPrivate{}, errors.New("the private key is zero")
	}
	if got, want := k.Public().Raw32(), priv.PublicKey().Bytes(); [32]byte(want) != got {
		return key.DiscoPrivate{}, errors.New("key.DiscoPrivate's layout changed; update discoPrivateLayout")
	}
	return k, nil
}

// runBind is the bind mode's main; it returns the exit status.
func runBind(args []string, stdout, stderr io.Writer) int {
	o, err := parseBindFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "refclient bind: %v\n", err)
		return 2
	}
	h := newHarness(options{replyTimeout: o.replyTimeout})
	defer h.close()
	s := &session{h: h, relay: o.relayAddr, ep: endpoint.ServerEndpoint{
		ServerDisco: o.serverDisco,
		VNI:         o.vni,
		AddrPorts:   []netip.AddrPort{o.relayAddr},
	}}
	if s.a, err = h.newClient("A", o.keys[0], o.relayAddr); err != nil {
		fmt.Fprintf(stderr, "refclient bind: %v\n", err)
		return 1
	}
	if s.b, err = h.newClient("B", o.keys[1], o.relayAddr); err != nil {
		fmt.Fprintf(stderr, "refclient bind: %v\n", err)
		return 1
	}

	out := json.NewEncoder(stdout)
	out.SetEscapeHTML(false)
	failed := 0
	var firstFailure string
	for _, c := range s.bindChecks(o.packets) {
		var r result
		if firstFailure != "" {
			// Every check needs the ones before it: report, do not wait out
			// timeouts that cannot pass.
			r = result{Check: c.name, OK: false, Detail: "not run: " + firstFailure + " failed"}
		} else {
			r = runCheck(c)
		}
		if !r.OK {
			failed++
			if firstFailure == "" {
				firstFailure = c.name
			}
		}
		out.Encode(r)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "refclient bind: %d check(s) failed\n", failed)
		return 1
	}
	return 0
}

// bindChecks are the bind mode's checks, in order.
func (s *session) bindChecks(packets int) []check {
	handshake := func(c *client) func() (string, error) {
		return func() (string, error) {
			if err := s.handshake(c); err != nil {
				return "", err
			}
			return fmt.Sprintf("client %s (%v) from %v got a sealed challenge on VNI %d via %v and answered it",
				c.name, c.key.Public().ShortString(), c.conn.LocalAddr(), s.ep.VNI, s.relay), nil
		}
	}
	relay := func(from, to *client) func() (string, error) {
		return func() (string, error) {
			n, err := s.relayNumbered(from, to, packets)
			if err != nil {
				return "", fmt.Errorf("after %d of %d packets: %v", n, packets, err)
			}
			return fmt.Sprintf("%d packets %s->%s relayed unchanged, header included", n, from.name, to.name), nil
		}
	}
	return []check{
		{"bind_handshake_a", handshake(s.a)},
		{"bind_handshake_b", handshake(s.b)},
		{"relay_a_to_b", relay(s.a, s.b)},
		{"relay_b_to_a", relay(s.b, s.a)},
	}
}

// relayNumbered sends count data packets from one client, each carrying
// its sequence number and random bytes, and requires the other client to
// receive each byte for byte, in order, before the next is sent. It returns
// how many arrived intact.
func (s *session) relayNumbered(from, to *client, count int) (int, error) {
	for i := range count {
		payload := make([]byte, 8+32+i%64)
		binary.BigEndian.PutUint64(payload, uint64(i))
		rand.Read(payload[8:])
		pkt := dataPacket(s.ep.VNI, payload)
		if err := s.send(from.conn, pkt); err != nil {
			return i, err
		}
		got, err := s.h.receive(to.conn, s.relay)
		if err != nil {
			return i, fmt.Errorf("packet %d %s->%s not relayed: %v", i, from.name, to.name, err)
		}
		if err := sameBytes(got, pkt); err != nil {
			return i, fmt.Errorf("packet %d %s->%s altered: %v", i, from.name, to.name, err)
		}
	}
	return count, nil
}

func bindMain() {
	os.Exit(runBind(os.Args[2:], os.Stdout, os.Stderr))
}
